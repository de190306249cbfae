package auth

import (
	"bytes"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/metadata"
)

func TestNewToken(t *testing.T) {
	a, err := NewToken(nil)
	require.NoError(t, err)
	b, err := NewToken(nil)
	require.NoError(t, err)
	require.NotEqual(t, a, b)
	require.True(t, strings.HasPrefix(a, TokenPrefix))
	require.Len(t, a, TokenLength)
	require.Equal(t, 46, TokenLength)
	_, err = parseBearer("Bearer " + a)
	require.NoError(t, err, "a generated token must pass the bearer syntax")

	fixed, err := NewToken(bytes.NewReader(make([]byte, 32)))
	require.NoError(t, err)
	require.Equal(t, "hw_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", fixed)

	_, err = NewToken(bytes.NewReader(make([]byte, 31)))
	require.ErrorContains(t, err, "reading 32 random bytes")
	_, err = NewToken(iotest.ErrReader(errors.New("no entropy")))
	require.ErrorContains(t, err, "no entropy")
}

func TestHash(t *testing.T) {
	// SHA-256 of "abc" (FIPS 180-2, appendix B.1).
	const abc = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	require.Equal(t, abc, FormatHash(HashToken("abc")))
	h, err := ParseHash(abc)
	require.NoError(t, err)
	require.Equal(t, HashToken("abc"), h)

	f := func(s, wantErr string) {
		t.Helper()
		_, err := ParseHash(s)
		require.ErrorContains(t, err, wantErr)
	}
	f("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", `starts with "sha256:"`)
	f("sha256:ba78", "has 64 hex digits")
	f("sha256:"+strings.Repeat("zz", 32), "is hex")
}

func TestBearer(t *testing.T) {
	ok := func(value, want string) {
		t.Helper()
		got, err := BearerFromHeader(http.Header{"Authorization": {value}})
		require.NoError(t, err)
		require.Equal(t, want, got)
		got, err = BearerFromMetadata(metadata.Pairs("authorization", value))
		require.NoError(t, err)
		require.Equal(t, want, got)
	}
	ok("Bearer hw_abc", "hw_abc")
	ok("bearer hw_abc", "hw_abc")
	ok("BEARER   hw_abc", "hw_abc")
	ok("Bearer a-b.c_d~e+f/g==", "a-b.c_d~e+f/g==")

	bad := func(h http.Header, reason Reason, wantMsg string) {
		t.Helper()
		_, err := BearerFromHeader(h)
		var e *Error
		require.ErrorAs(t, err, &e)
		require.Equal(t, reason, e.Reason)
		require.ErrorIs(t, err, ErrUnauthenticated)
		require.Contains(t, err.Error(), wantMsg)
		require.NotContains(t, err.Error(), "s3cret", "a refusal must not repeat the credential")
	}
	hdr := func(vs ...string) http.Header { return http.Header{"Authorization": vs} }
	bad(http.Header{}, ReasonMissing, "no bearer token: send the header Authorization: Bearer <token>")
	bad(hdr(""), ReasonMalformed, "is not Bearer <token>")
	bad(hdr("hw_s3cret"), ReasonMalformed, `put "Bearer " before the token`)
	bad(hdr("Bearer"), ReasonMalformed, "no token after it")
	bad(hdr("Bearer   "), ReasonMalformed, "no token after it")
	bad(hdr("Basic dXNlcjpzM2NyZXQ="), ReasonMalformed, "uses the Basic scheme")
	bad(hdr("hw_s3cret_token_pasted_without_scheme x"), ReasonMalformed, "is not Bearer <token>")
	bad(hdr("Bearer hw_s3cret more"), ReasonMalformed, "byte at offset 9")
	bad(hdr("Bearer hw_s3cret\t"), ReasonMalformed, "byte at offset 9")
	bad(hdr("Bearer a==b"), ReasonMalformed, "byte at offset 3")
	bad(hdr("Bearer "+strings.Repeat("a", maxTokenLength+1)), ReasonMalformed, "513 bytes, longer than the limit of 512")
	bad(hdr("Bearer a", "Bearer b"), ReasonMalformed, "2 Authorization headers")

	_, err := BearerFromMetadata(metadata.MD{})
	require.ErrorIs(t, err, ErrUnauthenticated)
	_, err = BearerFromMetadata(metadata.Pairs("authorization", "Bearer a", "authorization", "Bearer b"))
	require.ErrorContains(t, err, "2 Authorization headers")
}

func TestLoadAdminTokens(t *testing.T) {
	dir := t.TempDir()
	write := func(content string) string {
		t.Helper()
		p := filepath.Join(dir, "admin-tokens")
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	plain := "hw_" + strings.Repeat("x", 43)
	hs, err := LoadAdminTokens(write("# ops team\n\n" + FormatHash(HashToken("one-token-of-enough-length")) + "\n  " + plain + "  \r\n"))
	require.NoError(t, err)
	require.Equal(t, [][32]byte{HashToken("one-token-of-enough-length"), HashToken(plain)}, hs)

	p := write("sha256:1234\ntiny1\n" + "hw_s3cret/with space\n")
	_, err = LoadAdminTokens(p)
	require.ErrorContains(t, err, p+" line 1: a token hash has 64 hex digits")
	require.ErrorContains(t, err, p+" line 2: a token of 5 bytes is too short")
	require.ErrorContains(t, err, p+" line 3: neither a hash")
	require.NotContains(t, err.Error(), "s3cret")
	require.NotContains(t, err.Error(), "tiny1")

	_, err = LoadAdminTokens(write("# nothing\n"))
	require.ErrorContains(t, err, "holds no token or hash")

	_, err = LoadAdminTokens(filepath.Join(dir, "missing"))
	require.ErrorContains(t, err, filepath.Join(dir, "missing"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

// TestAdminTokenFileExample loads the example of docs/security.md.
func TestAdminTokenFileExample(t *testing.T) {
	hs, err := LoadAdminTokens(filepath.Join("testdata", "admin-tokens"))
	require.NoError(t, err)
	require.Len(t, hs, 2)
	require.Equal(t, HashToken("hw_gxajcnnLMYCobZYO5hv7ciIdPL_cbl4c9YJGqS_nQP4"), hs[1])
}
