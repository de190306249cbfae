package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// client calls hopwatch's HTTP API with the instance's tenant and token.
type client struct {
	base   string
	tenant string
	token  string
	http   *http.Client
}

func newClient(s Settings) *client {
	return &client{base: s.URL, tenant: s.Tenant, token: s.Token, http: &http.Client{Timeout: 2 * time.Minute}}
}

// apiError is an error answer of the API, in Prometheus's envelope.
type apiError struct {
	Status    int
	ErrorType string
	Message   string
}

func (e *apiError) Error() string {
	if e.ErrorType != "" {
		return fmt.Sprintf("hopwatch: %d %s: %s", e.Status, e.ErrorType, e.Message)
	}
	return fmt.Sprintf("hopwatch: %d: %s", e.Status, e.Message)
}

// do sends method path?params to hopwatch and returns the raw answer.
func (c *client) do(ctx context.Context, method, path string, params url.Values) (*http.Response, error) {
	u := c.base + path
	var body io.Reader
	if method == http.MethodPost {
		body = strings.NewReader(params.Encode())
	} else if len(params) > 0 {
		u += "?" + params.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if c.tenant != "" {
		req.Header.Set("X-Scope-OrgID", c.tenant)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return c.http.Do(req)
}

// get calls an API endpoint and decodes the data of its envelope into out.
func (c *client) get(ctx context.Context, path string, params url.Values, out any) error {
	method := http.MethodGet
	if len(params.Encode()) > 1024 {
		method = http.MethodPost
	}
	resp, err := c.do(ctx, method, path, params)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return err
	}
	var env struct {
		Status    string          `json:"status"`
		Data      json.RawMessage `json:"data"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
	}
	if err := json.Unmarshal(b, &env); err != nil || env.Status == "" {
		msg := strings.TrimSpace(string(b))
		if len(msg) > 200 {
			msg = msg[:200]
		}
		return &apiError{Status: resp.StatusCode, Message: msg}
	}
	if env.Status != "success" {
		return &apiError{Status: resp.StatusCode, ErrorType: env.ErrorType, Message: env.Error}
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(env.Data, out)
}

// promSample is one [unix seconds, "value"] pair of the Prometheus API.
type promSample struct {
	T float64
	V float64
}

func (s *promSample) UnmarshalJSON(b []byte) error {
	var pair [2]json.RawMessage
	if err := json.Unmarshal(b, &pair); err != nil {
		return err
	}
	if err := json.Unmarshal(pair[0], &s.T); err != nil {
		return err
	}
	var v string
	if err := json.Unmarshal(pair[1], &v); err != nil {
		return err
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return err
	}
	s.V = f
	return nil
}

func (s promSample) time() time.Time { return unixSeconds(s.T) }

func unixSeconds(t float64) time.Time {
	return time.UnixMilli(int64(t*1000 + 0.5)).UTC()
}

// promSeries is a series of a matrix or vector result.
type promSeries struct {
	Metric map[string]string `json:"metric"`
	Values []promSample      `json:"values"`
	Value  *promSample       `json:"value"`
}

type promResult struct {
	ResultType string       `json:"resultType"`
	Result     []promSeries `json:"result"`
}

func formatTime(t time.Time) string {
	return strconv.FormatFloat(float64(t.UnixMilli())/1000, 'f', -1, 64)
}

func formatSeconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64)
}

// queryRange runs a PromQL range query.
func (c *client) queryRange(ctx context.Context, q string, from, to time.Time, step time.Duration) ([]promSeries, error) {
	var r promResult
	err := c.get(ctx, "/api/v1/query_range", url.Values{
		"query": {q}, "start": {formatTime(from)}, "end": {formatTime(to)}, "step": {formatSeconds(step)},
	}, &r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", q, err)
	}
	return r.Result, nil
}

// queryInstant runs a PromQL instant query at t.
func (c *client) queryInstant(ctx context.Context, q string, t time.Time) ([]promSeries, error) {
	var r promResult
	if err := c.get(ctx, "/api/v1/query", url.Values{"query": {q}, "time": {formatTime(t)}}, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", q, err)
	}
	return r.Result, nil
}

// latencyResult is /api/v1/latency's answer.
type latencyResult struct {
	Window    float64   `json:"window"`
	Quantiles []float64 `json:"quantiles"`
	Result    []struct {
		Metric map[string]string   `json:"metric"`
		Values [][]json.RawMessage `json:"values"`
	} `json:"result"`
}

// exemplarSeries is one series of /api/v1/query_exemplars.
type exemplarSeries struct {
	SeriesLabels map[string]string `json:"seriesLabels"`
	Exemplars    []struct {
		Labels    map[string]string `json:"labels"`
		Value     string            `json:"value"`
		Timestamp float64           `json:"timestamp"`
	} `json:"exemplars"`
}

// writersResult is /api/v1/writers' answer.
type writersResult struct {
	Watermark *float64 `json:"watermark"`
	Writers   []struct {
		Writer    string  `json:"writer"`
		State     string  `json:"state"`
		Position  float64 `json:"position"`
		LastWrite float64 `json:"lastWrite"`
	} `json:"writers"`
}

// buildInfo is /api/v1/status/buildinfo's answer.
type buildInfo struct {
	Version   string `json:"version"`
	Revision  string `json:"revision"`
	Branch    string `json:"branch"`
	BuildDate string `json:"buildDate"`
	GoVersion string `json:"goVersion"`
}
