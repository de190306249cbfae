package plugin

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/grafana/grafana-plugin-sdk-go/backend"
)

// Every hopwatch query in the provisioned dashboards is one the backend
// accepts.
func TestDashboardQueriesParse(t *testing.T) {
	files, err := filepath.Glob("../../../docs/grafana/dashboards/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards found: %v", err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			Panels []struct {
				Title   string            `json:"title"`
				Targets []json.RawMessage `json:"targets"`
			} `json:"panels"`
		}
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, p := range d.Panels {
			for _, raw := range p.Targets {
				var ds struct {
					Datasource struct{ Type string } `json:"datasource"`
				}
				_ = json.Unmarshal(raw, &ds)
				if ds.Datasource.Type != ID {
					continue
				}
				if _, err := parseQuery(backend.DataQuery{RefID: "A", JSON: raw}); err != nil {
					t.Errorf("%s, panel %q: %v", filepath.Base(f), p.Title, err)
				}
			}
		}
	}
}
