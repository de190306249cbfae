package plugin

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"

	"github.com/grafana/grafana-plugin-sdk-go/backend"
)

// CallResource proxies label and series look-ups to hopwatch with the
// datasource's tenant and token (the browser never sees the token):
//
//	labels                 → /api/v1/labels
//	label/{name}/values    → /api/v1/label/{name}/values
//	series                 → /api/v1/series
//
// The query string (match[], start, end) is passed on unchanged, and so is
// hopwatch's answer, status and body.
func (d *Datasource) CallResource(ctx context.Context, req *backend.CallResourceRequest, sender backend.CallResourceResponseSender) error {
	path, ok := resourcePath(req.Path)
	if !ok {
		return sendJSON(sender, http.StatusNotFound, map[string]string{"status": "error", "errorType": "not_found",
			"error": "unknown resource " + req.Path + " (want labels, label/{name}/values or series)"})
	}
	if req.Method != http.MethodGet && req.Method != http.MethodPost {
		return sendJSON(sender, http.StatusMethodNotAllowed, map[string]string{"status": "error", "errorType": "bad_data", "error": "use GET or POST"})
	}
	params := url.Values{}
	if u, err := url.Parse(req.URL); err == nil {
		params = u.Query()
	}
	if req.Method == http.MethodPost && len(req.Body) > 0 {
		if form, err := url.ParseQuery(string(req.Body)); err == nil {
			for k, v := range form {
				params[k] = append(params[k], v...)
			}
		}
	}
	resp, err := d.client.do(ctx, req.Method, path, params)
	if err != nil {
		return sendJSON(sender, http.StatusBadGateway, map[string]string{"status": "error", "errorType": "unavailable", "error": err.Error()})
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return sendJSON(sender, http.StatusBadGateway, map[string]string{"status": "error", "errorType": "unavailable", "error": err.Error()})
	}
	return sender.Send(&backend.CallResourceResponse{
		Status:  resp.StatusCode,
		Headers: map[string][]string{"Content-Type": {resp.Header.Get("Content-Type")}},
		Body:    body,
	})
}

func sendJSON(sender backend.CallResourceResponseSender, status int, v any) error {
	return sender.Send(&backend.CallResourceResponse{
		Status:  status,
		Headers: map[string][]string{"Content-Type": {"application/json"}},
		Body:    mustJSON(v),
	})
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only maps of strings and numbers are marshalled here
	}
	return b
}
