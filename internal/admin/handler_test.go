package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/cluster"
	"github.com/hopwatch/hopwatch/internal/auth"
)

// syncBuffer is a log destination the handler's goroutines share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestTenantCRUD(t *testing.T) {
	var logs syncBuffer
	a := startAPI(t, slog.New(slog.NewTextHandler(&logs, nil)))
	const acme = Prefix + "/acme"

	var list []Tenant
	a.do("GET", Prefix, "").ok(t, 200, &list)
	require.Empty(t, list)
	require.Equal(t, "[]", string(a.do("GET", Prefix, "").data), "an empty list is [], not null")
	a.do("GET", acme, "").fails(t, 404, "not_found", `tenant "acme" does not exist`)

	// Create.
	var created Tenant
	r := a.do("PUT", acme, `{"limits":{"max_series_per_tenant":500,"ingestion_rate_spans":1000},"settings":{"ruler.evaluation-interval":"15s"}}`)
	r.ok(t, 201, &created)
	require.Equal(t, "acme", created.ID)
	require.Equal(t, Limits{MaxSeriesPerTenant: 500, IngestionRateSpans: 1000}, created.Limits)
	require.Equal(t, map[string]string{"ruler.evaluation-interval": "15s"}, created.Settings)
	require.Empty(t, created.TokenHashes)
	require.NotZero(t, created.Version)
	require.False(t, created.Created.IsZero())
	require.Equal(t, fmt.Sprintf(`"%d"`, created.Version), r.header.Get("ETag"))

	// Read, locally and linearizably.
	for _, q := range []string{"", "?consistent=true", "?consistent=false"} {
		var got Tenant
		r := a.do("GET", acme+q, "")
		r.ok(t, 200, &got)
		require.Equal(t, created, got)
		require.Equal(t, fmt.Sprintf(`"%d"`, created.Version), r.header.Get("ETag"))
	}
	st, ok := a.node.State().Tenant("acme")
	require.True(t, ok)
	require.Equal(t, cluster.Limits{MaxSeriesPerTenant: 500, IngestionRateSpans: 1000}, st.Limits)

	// A token survives a PUT: tokens are not part of the body.
	var tok NewToken
	a.do("POST", acme+"/tokens", "").ok(t, 201, &tok)

	// Replace: what the body leaves out goes back to the default.
	var replaced Tenant
	a.do("PUT", acme, `{"limits":{"ingestion_burst_spans":20}}`).ok(t, 200, &replaced)
	require.Equal(t, Limits{IngestionBurstSpans: 20}, replaced.Limits)
	require.Empty(t, replaced.Settings)
	require.Equal(t, []string{tok.Hash}, replaced.TokenHashes)
	require.Greater(t, replaced.Version, created.Version)
	require.Equal(t, created.Created, replaced.Created)

	// Patch: only what the body names changes; null removes a setting.
	var patched Tenant
	a.do("PATCH", acme, `{"limits":{"max_series_per_tenant":7},"settings":{"a":"1","b":"2"}}`).ok(t, 200, &patched)
	require.Equal(t, Limits{IngestionBurstSpans: 20, MaxSeriesPerTenant: 7}, patched.Limits)
	require.Equal(t, map[string]string{"a": "1", "b": "2"}, patched.Settings)
	patched = Tenant{} // Unmarshal merges into a map it finds
	a.do("PATCH", acme, `{"settings":{"a":null}}`).ok(t, 200, &patched)
	require.Equal(t, map[string]string{"b": "2"}, patched.Settings)
	require.Equal(t, Limits{IngestionBurstSpans: 20, MaxSeriesPerTenant: 7}, patched.Limits)
	a.do("PATCH", Prefix+"/nobody", `{"settings":{"a":"1"}}`).fails(t, 404, "not_found", `tenant "nobody" does not exist`)

	// List, ordered by ID.
	a.do("PUT", Prefix+"/beta", `{}`).ok(t, 201, nil)
	a.do("GET", Prefix+"?consistent=true", "").ok(t, 200, &list)
	require.Len(t, list, 2)
	require.Equal(t, "acme", list[0].ID)
	require.Equal(t, "beta", list[1].ID)
	require.Equal(t, patched, list[0])

	// Delete.
	a.do("DELETE", acme, "").ok(t, 200, nil)
	a.do("GET", acme, "").fails(t, 404, "not_found")
	a.do("DELETE", acme, "").fails(t, 404, "not_found", `tenant "acme" does not exist`)
	_, ok = a.node.State().TenantByToken(tok.Token)
	require.False(t, ok, "a deleted tenant's token still maps")

	// One audit line per change, with who and what.
	audit := logs.String()
	require.Equal(t, 7, strings.Count(audit, `msg="tenant changed"`), audit)
	for _, want := range []string{
		`op=tenant.put tenant=acme version=` + fmt.Sprint(created.Version),
		`limits.max_series_per_tenant: 0 -> 500`,
		`settings.ruler.evaluation-interval: set \"15s\"`,
		`op=token.create tenant=acme`,
		`token_hashes: added ` + tok.Hash,
		`settings.a: removed (was \"1\")`,
		`op=tenant.delete tenant=acme`,
		`remote_addr=127.0.0.1:`,
	} {
		require.Contains(t, audit, want)
	}
	require.NotContains(t, audit, tok.Token, "a token reached the log")

	require.Equal(t, 2.0, a.requests("PUT", "201"))
	require.Equal(t, 1.0, a.requests("PUT", "200"))
	require.Equal(t, 1.0, a.requests("DELETE", "404"))
	require.Equal(t, 2.0, a.requests("GET", "404"))
}

func TestValidation(t *testing.T) {
	a := startAPI(t, nil)
	const acme = Prefix + "/acme"

	// f sends a body and requires a 400 naming the fields (in the message
	// and, for validation, in data.fields).
	f := func(method, path, body string, fields ...string) {
		t.Helper()
		r := a.do(method, path, body)
		r.fails(t, 400, "bad_data", fields...)
	}
	// The cluster's validation, every problem at once, named as in the body.
	r := a.do("PUT", acme, `{"limits":{"ingestion_burst_spans":-1,"max_series_per_tenant":-5,"ingestion_rate_bytes":-0.5}}`)
	r.fails(t, 400, "bad_data", "invalid limits.ingestion_burst_spans: is -1", "invalid limits.max_series_per_tenant: is -5", "invalid limits.ingestion_rate_bytes")
	var data struct{ Fields []FieldError }
	require.NoError(t, json.Unmarshal(r.data, &data))
	require.ElementsMatch(t, []string{"limits.ingestion_burst_spans", "limits.max_series_per_tenant", "limits.ingestion_rate_bytes"},
		[]string{data.Fields[0].Field, data.Fields[1].Field, data.Fields[2].Field})
	f("PUT", acme, `{"settings":{"Not A Flag":"x"}}`, "invalid settings:", `key "Not A Flag"`)
	f("PUT", acme, `{"settings":{"x":"`+strings.Repeat("v", 5000)+`"}}`, "invalid settings.x: is 5000 bytes")
	// Decoding.
	f("PUT", acme, `{"limits":{"max_series_per_tenant":"many"}}`, "invalid limits.max_series_per_tenant: is a JSON string; want an integer")
	f("PUT", acme, `{"limits":{"max_series_per_tenant":1.5}}`, "limits.max_series_per_tenant")
	f("PUT", acme, `{"limits":{"max_series_per_tenant":1e30}}`, "limits.max_series_per_tenant")
	f("PUT", acme, `{"settings":{"a":1}}`, "invalid settings: is a JSON number; want a string")
	f("PUT", acme, `{"limit":{}}`, `unknown field "limit"`, `"limits" ("ingestion_rate_spans"`)
	f("PUT", acme, `{"limits":{"max_series":1}}`, `unknown field "max_series"`)
	f("PUT", acme, `{"version":3,"limits":{}}`, `unknown field "version"`)
	f("PUT", acme, ``, "the body is empty")
	f("PUT", acme, `{"limits":`, "ends inside")
	f("PUT", acme, `{} {}`, "data after its JSON object")
	f("PUT", acme, `[1]`, "send a JSON object")
	f("PUT", acme, `{"limits":{]`, "not JSON")
	f("PATCH", acme, `{"limits":{"max_series_per_tenant":null, "x":1}}`, `unknown field "x"`)
	// The path.
	f("PUT", Prefix+"/bad$id", `{}`, "invalid id:", "'$'")
	f("GET", Prefix+"/"+strings.Repeat("a", 151), "", "invalid id:", "longer than the limit of 150")
	f("GET", acme+"?consistent=maybe", "", "invalid consistent")
	f("POST", acme+"/tokens", `{"name":"ci"}`, `unknown field "name"`, "empty body or {}")
	f("DELETE", acme+"/tokens/sha256:abc", "", "invalid hash", "64 hex digits")
	f("DELETE", acme+"/tokens/xyz", "", "invalid hash")
	require.Empty(t, a.node.State().Tenants(), "an invalid change reached the state")

	// Too large.
	big := `{"settings":{"x":"` + strings.Repeat("v", maxBodyBytes) + `"}}`
	a.do("PUT", acme, big).fails(t, 413, "bad_data", "larger than the limit of 524288 bytes")

	// Routes and methods.
	r = a.do("POST", Prefix, `{}`)
	r.fails(t, 405, "bad_data", "POST is not allowed")
	require.Equal(t, "GET", r.header.Get("Allow"))
	r = a.do("POST", acme, `{}`)
	r.fails(t, 405, "bad_data")
	require.Equal(t, "GET, PUT, PATCH, DELETE", r.header.Get("Allow"))
	a.do("PUT", acme+"/tokens", `{}`).fails(t, 405, "bad_data")
	a.do("GET", acme+"/tokens/"+auth.FormatHash(auth.HashToken("x")), "").fails(t, 405, "bad_data")
	a.do("GET", acme+"/other", "").fails(t, 404, "not_found", "no admin endpoint")
	a.do("GET", acme+"/tokens/a/b", "").fails(t, 404, "not_found")
	// A path outside Prefix, should the server route one here.
	rec := httptest.NewRecorder()
	NewHandler(a.node, nil, nil).ServeHTTP(rec, httptest.NewRequest("GET", Prefix+"x", nil))
	require.Equal(t, 404, rec.Code)
	require.Contains(t, rec.Body.String(), `"errorType":"not_found"`)
	// An empty ID (ServeMux cleans such paths before they get here).
	rec = httptest.NewRecorder()
	NewHandler(a.node, nil, nil).ServeHTTP(rec, httptest.NewRequest("GET", Prefix+"//tokens", nil))
	require.Equal(t, 400, rec.Code)
	require.Contains(t, rec.Body.String(), "invalid id: is empty")
	require.Equal(t, 1.0, a.requests("PUT", "413"))
	require.Equal(t, 2.0, a.requests("POST", "405"))
}

func TestVersionConflict(t *testing.T) {
	a := startAPI(t, nil)
	const acme = Prefix + "/acme"
	ifMatch := func(v uint64) []string { return []string{"If-Match", fmt.Sprintf(`"%d"`, v)} }

	a.do("PUT", acme, `{}`, "If-Match", `"1"`).fails(t, 412, "conflict", `tenant "acme" does not exist, If-Match expected it to`)
	a.do("PUT", acme, `{}`, "If-Match", `*`).fails(t, 412, "conflict")
	var v1 Tenant
	a.do("PUT", acme, `{"limits":{"max_series_per_tenant":1}}`).ok(t, 201, &v1)

	var v2 Tenant
	a.do("PUT", acme, `{"limits":{"max_series_per_tenant":2}}`, ifMatch(v1.Version)...).ok(t, 200, &v2)
	require.EqualValues(t, 2, v2.Limits.MaxSeriesPerTenant)

	// A writer that read v1 is refused, and the tenant is unchanged.
	r := a.do("PUT", acme, `{"limits":{"max_series_per_tenant":3}}`, ifMatch(v1.Version)...)
	r.fails(t, 412, "conflict", fmt.Sprintf("is at version %d, If-Match expected version %d", v2.Version, v1.Version))
	a.do("PATCH", acme, `{"settings":{"a":"1"}}`, ifMatch(v1.Version)...).fails(t, 412, "conflict")
	a.do("POST", acme+"/tokens", ``, ifMatch(v1.Version)...).fails(t, 412, "conflict")
	var got Tenant
	a.do("GET", acme, "").ok(t, 200, &got)
	require.Equal(t, v2, got)

	// The ETag works unquoted too, and * matches any version.
	var v3 Tenant
	a.do("PATCH", acme, `{"settings":{"a":"1"}}`, "If-Match", fmt.Sprint(v2.Version)).ok(t, 200, &v3)
	a.do("PATCH", acme, `{"settings":{"b":"1"}}`, "If-Match", "*").ok(t, 200, nil)

	for _, bad := range []string{`W/"1"`, `abc`, `"0"`, `-1`} {
		a.do("PUT", acme, `{}`, "If-Match", bad).fails(t, 400, "bad_data", "invalid If-Match")
	}
	a.do("DELETE", acme, "", ifMatch(v3.Version)...).fails(t, 400, "bad_data", "takes no If-Match")

	// Without If-Match, concurrent changes of one tenant all land: each
	// reads again and retries when another got in between. With at most
	// maxAttempts writers none can be overtaken maxAttempts times.
	var wg sync.WaitGroup
	codes := make([]int, maxAttempts)
	for i := range maxAttempts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("PATCH", a.srv.URL+acme, strings.NewReader(fmt.Sprintf(`{"settings":{"k%d":"v"}}`, i)))
			resp, err := a.srv.Client().Do(req)
			if err == nil {
				codes[i] = resp.StatusCode
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	for _, c := range codes {
		require.Equal(t, 200, c)
	}
	a.do("GET", acme, "").ok(t, 200, &got)
	for i := range maxAttempts {
		require.Contains(t, got.Settings, fmt.Sprintf("k%d", i))
	}
}

func TestTokens(t *testing.T) {
	a := startAPI(t, nil)
	const acme = Prefix + "/acme"
	a.do("POST", acme+"/tokens", "").fails(t, 404, "not_found", `tenant "acme" does not exist`)
	a.do("GET", acme+"/tokens", "").fails(t, 404, "not_found")
	a.do("PUT", acme, `{}`).ok(t, 201, nil)
	var hashes []string
	a.do("GET", acme+"/tokens", "").ok(t, 200, &hashes)
	require.Equal(t, []string{}, hashes)

	// Created: the token is answered once; only its hash is stored.
	var tok NewToken
	r := a.do("POST", acme+"/tokens", "")
	r.ok(t, 201, &tok)
	require.Equal(t, "no-store", r.header.Get("Cache-Control"))
	require.True(t, strings.HasPrefix(tok.Token, auth.TokenPrefix), tok.Token)
	require.Len(t, tok.Token, auth.TokenLength)
	require.Equal(t, auth.FormatHash(auth.HashToken(tok.Token)), tok.Hash)
	require.Equal(t, "acme", tok.Tenant)
	owner, ok := a.node.State().TenantByToken(tok.Token)
	require.True(t, ok)
	require.Equal(t, "acme", owner.ID)
	require.Equal(t, tok.Version, owner.Version)

	var tok2 NewToken
	a.do("POST", acme+"/tokens", "{}").ok(t, 201, &tok2)
	require.NotEqual(t, tok.Token, tok2.Token)

	// Listed as hashes only, in the tenant too.
	for _, path := range []string{acme + "/tokens", acme + "/tokens?consistent=true"} {
		r := a.do("GET", path, "")
		r.ok(t, 200, &hashes)
		require.Equal(t, []string{tok.Hash, tok2.Hash}, hashes)
		require.NotContains(t, string(r.data), tok.Token)
	}
	var ten Tenant
	a.do("GET", acme, "").ok(t, 200, &ten)
	require.Equal(t, []string{tok.Hash, tok2.Hash}, ten.TokenHashes)

	// The token is nowhere in the state, nor in anything the node wrote:
	// its raft log and snapshots hold the hash.
	b, err := json.Marshal(a.node.State().Tenants())
	require.NoError(t, err)
	require.NotContains(t, string(b), tok.Token)
	require.NoError(t, a.node.Linearizable(t.Context()))
	files := 0
	require.NoError(t, filepath.WalkDir(a.node.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		require.False(t, bytes.Contains(b, []byte(tok.Token)), "%s holds a token", path)
		require.False(t, bytes.Contains(b, []byte(tok.Token[len(auth.TokenPrefix):])), "%s holds a token's random part", path)
		return nil
	}))
	require.NotZero(t, files)

	// Revoked, by the listed form or by bare hex.
	var revoked struct {
		Hash    string
		Revoked bool
	}
	a.do("DELETE", acme+"/tokens/"+tok.Hash, "").ok(t, 200, &revoked)
	require.Equal(t, tok.Hash, revoked.Hash)
	require.True(t, revoked.Revoked)
	_, ok = a.node.State().TenantByToken(tok.Token)
	require.False(t, ok, "a revoked token still maps")
	a.do("DELETE", acme+"/tokens/"+tok.Hash, "").fails(t, 404, "not_found", "has no token with hash "+tok.Hash)
	a.do("GET", acme+"/tokens", "").ok(t, 200, &hashes)
	require.Equal(t, []string{tok2.Hash}, hashes)
	a.do("DELETE", acme+"/tokens/"+strings.TrimPrefix(tok2.Hash, "sha256:"), "").ok(t, 200, nil)
	a.do("GET", acme+"/tokens", "").ok(t, 200, &hashes)
	require.Empty(t, hashes)
	a.do("DELETE", Prefix+"/nobody/tokens/"+tok2.Hash, "").fails(t, 404, "not_found")

	// Concurrent creations all land.
	var wg sync.WaitGroup
	created := make([]NewToken, maxAttempts)
	for i := range created {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := a.srv.Client().Post(a.srv.URL+acme+"/tokens", "application/json", nil)
			if err != nil {
				return
			}
			defer resp.Body.Close()
			var env struct{ Data NewToken }
			if resp.StatusCode == 201 && json.NewDecoder(resp.Body).Decode(&env) == nil {
				created[i] = env.Data
			}
		}()
	}
	wg.Wait()
	a.do("GET", acme+"/tokens?consistent=true", "").ok(t, 200, &hashes)
	require.Len(t, hashes, len(created))
	for _, c := range created {
		require.Contains(t, hashes, c.Hash)
		owner, ok := a.node.State().TenantByToken(c.Token)
		require.True(t, ok)
		require.Equal(t, "acme", owner.ID)
	}

	// The cluster bounds a tenant's tokens; the refusal names the field.
	for len(hashes) < 32 {
		a.do("POST", acme+"/tokens", "").ok(t, 201, nil)
		hashes = append(hashes, "")
	}
	a.do("POST", acme+"/tokens", "").fails(t, 400, "bad_data", "invalid token_hashes: has 33 hashes, more than the limit of 32")
}

// TestUnavailable: with the node shut down, writes and linearizable reads
// answer 503 with Retry-After; local reads go on from the last state.
func TestUnavailable(t *testing.T) {
	a := startAPI(t, nil)
	const acme = Prefix + "/acme"
	a.do("PUT", acme, `{}`).ok(t, 201, nil)
	require.NoError(t, a.node.Shutdown())

	for _, r := range []response{
		a.do("PUT", acme, `{}`),
		a.do("PATCH", acme, `{}`),
		a.do("DELETE", acme, ``),
		a.do("POST", acme+"/tokens", ``),
		a.do("GET", acme+"?consistent=true", ``),
	} {
		r.fails(t, 503, "unavailable", "shut down")
		require.Equal(t, "2", r.header.Get("Retry-After"))
	}
	a.do("GET", acme, "").ok(t, 200, nil)
	a.do("GET", Prefix, "").ok(t, 200, nil)
}
