// Package plugin is the backend of hopwatch's Grafana datasource. It
// answers Grafana's QueryData, CheckHealth and CallResource calls by calling
// hopwatch's HTTP API (the Prometheus API, /api/v1/latency and
// /api/v1/writers) with the datasource's tenant and token, and turns the
// answers into data frames. It never reads hopwatch's storage directly.
package plugin

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/grafana/grafana-plugin-sdk-go/backend"
	"github.com/grafana/grafana-plugin-sdk-go/backend/instancemgmt"
	"github.com/grafana/grafana-plugin-sdk-go/data"
)

// Datasource is one configured hopwatch datasource.
type Datasource struct {
	settings Settings
	client   *client
}

var (
	_ backend.QueryDataHandler      = (*Datasource)(nil)
	_ backend.CheckHealthHandler    = (*Datasource)(nil)
	_ backend.CallResourceHandler   = (*Datasource)(nil)
	_ instancemgmt.InstanceDisposer = (*Datasource)(nil)
)

// NewDatasource is the instance factory Grafana's plugin runtime calls for
// every datasource (and again when its settings change).
func NewDatasource(_ context.Context, s backend.DataSourceInstanceSettings) (instancemgmt.Instance, error) {
	settings, err := LoadSettings(s)
	if err != nil {
		return nil, err
	}
	return &Datasource{settings: settings, client: newClient(settings)}, nil
}

// Dispose closes idle connections when Grafana drops the instance.
func (d *Datasource) Dispose() { d.client.http.CloseIdleConnections() }

// QueryData answers every query of the request independently: one failing
// query yields an error response for its refID only.
func (d *Datasource) QueryData(ctx context.Context, req *backend.QueryDataRequest) (*backend.QueryDataResponse, error) {
	resp := backend.NewQueryDataResponse()
	for _, dq := range req.Queries {
		resp.Responses[dq.RefID] = d.query(ctx, dq)
	}
	return resp, nil
}

func (d *Datasource) query(ctx context.Context, dq backend.DataQuery) backend.DataResponse {
	q, err := parseQuery(dq)
	if err != nil {
		return backend.ErrDataResponseWithSource(backend.StatusBadRequest, backend.ErrorSourceDownstream, err.Error())
	}
	var frames data.Frames
	switch q.Mode {
	case ModeExact:
		frames, err = d.exact(ctx, q)
	case ModeSketch:
		frames, err = d.sketch(ctx, q)
	case ModeHops:
		frames, err = d.hops(ctx, q)
	case ModeGraph:
		frames, err = d.graph(ctx, q)
	case ModeWatermarks:
		frames, err = d.watermarks(ctx, q)
	}
	if err == nil && q.Exemplars && (q.Mode == ModeExact || q.Mode == ModeSketch) {
		var ex *data.Frame
		ex, err = d.exemplars(ctx, q)
		if ex != nil {
			frames = append(frames, ex)
		}
	}
	if err != nil {
		status := backend.StatusInternal
		if ae, ok := err.(interface{ Unwrap() error }); ok {
			if a, ok := ae.Unwrap().(*apiError); ok && a.Status == 400 {
				status = backend.StatusBadRequest
			}
		}
		return backend.ErrDataResponseWithSource(status, backend.ErrorSourceDownstream, err.Error())
	}
	for _, f := range frames {
		f.RefID = q.refID
	}
	return backend.DataResponse{Frames: frames}
}

// CheckHealth asks hopwatch for its build info (with the tenant and token)
// and reads the tenant's label names, so a wrong token or tenant shows here.
func (d *Datasource) CheckHealth(ctx context.Context, _ *backend.CheckHealthRequest) (*backend.CheckHealthResult, error) {
	var bi buildInfo
	if err := d.client.get(ctx, "/api/v1/status/buildinfo", nil, &bi); err != nil {
		return &backend.CheckHealthResult{Status: backend.HealthStatusError, Message: "hopwatch at " + d.settings.URL + ": " + err.Error()}, nil
	}
	var labels []string
	if err := d.client.get(ctx, "/api/v1/labels", nil, &labels); err != nil {
		return &backend.CheckHealthResult{Status: backend.HealthStatusError,
			Message: fmt.Sprintf("hopwatch %s answers, but reading the tenant's labels failed: %v", bi.Version, err)}, nil
	}
	tenant := d.settings.Tenant
	if tenant == "" {
		tenant = "the token's tenant, or anonymous"
	}
	return &backend.CheckHealthResult{
		Status:      backend.HealthStatusOk,
		Message:     fmt.Sprintf("hopwatch %s (revision %s); tenant: %s", bi.Version, bi.Revision, tenant),
		JSONDetails: mustJSON(map[string]any{"version": bi.Version, "revision": bi.Revision, "tenant": d.settings.Tenant, "labels": len(labels)}),
	}, nil
}

// resourcePaths are the look-ups CallResource proxies to hopwatch.
func resourcePath(p string) (string, bool) {
	p = strings.Trim(p, "/")
	switch {
	case p == "labels", p == "series":
		return "/api/v1/" + p, true
	case strings.HasPrefix(p, "label/") && strings.HasSuffix(p, "/values"):
		name := strings.TrimSuffix(strings.TrimPrefix(p, "label/"), "/values")
		if name == "" || strings.Contains(name, "/") {
			return "", false
		}
		return "/api/v1/label/" + url.PathEscape(name) + "/values", true
	}
	return "", false
}
