package plugin

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"

	"github.com/grafana/grafana-plugin-sdk-go/backend"
)

// ID is the plugin id, as in src/plugin.json.
const ID = "hopwatch-latency-datasource"

// Settings are a datasource instance's settings: jsonData plus the
// decrypted secureJsonData.
type Settings struct {
	// URL of hopwatch's HTTP API (the web port, :9800).
	URL string `json:"-"`
	// Tenant is sent as X-Scope-OrgID; empty sends no header (hopwatch then
	// answers for "anonymous", or for the token's tenant with --auth.enabled).
	Tenant string `json:"tenant"`
	// TraceLinkURL, if set, is the URL of a slow point's trace, with
	// ${__value.raw} standing for the trace id.
	TraceLinkURL string `json:"traceLinkUrl"`
	// TracesDatasourceUID, if set, links trace ids to that datasource
	// (Tempo, Jaeger) in Explore.
	TracesDatasourceUID string `json:"tracesDatasourceUid"`
	// Token is the bearer token (secureJsonData.token).
	Token string `json:"-"`
}

// LoadSettings reads a datasource instance's settings.
func LoadSettings(s backend.DataSourceInstanceSettings) (Settings, error) {
	var out Settings
	if len(s.JSONData) > 0 {
		if err := json.Unmarshal(s.JSONData, &out); err != nil {
			return Settings{}, fmt.Errorf("reading jsonData: %w", err)
		}
	}
	out.URL = strings.TrimRight(s.URL, "/")
	if out.URL == "" {
		return Settings{}, fmt.Errorf("no URL: set the URL of hopwatch's HTTP API, e.g. http://localhost:9800")
	}
	u, err := url.Parse(out.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return Settings{}, fmt.Errorf("URL %q: want http(s)://host:port", out.URL)
	}
	out.Token = s.DecryptedSecureJSONData["token"]
	return out, nil
}
