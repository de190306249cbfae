package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/grafana/grafana-plugin-sdk-go/data"
)

// quantileSeries collects, per label set, one value per quantile and time:
// the shape of every quantile view (a frame per series, a field per
// quantile).
type quantileSeries struct {
	quantiles []float64
	series    map[string]*qseries
}

type qseries struct {
	labels  map[string]string
	name    string   // display prefix, e.g. "stage enqueue → dequeue"
	used    []string // labels the name already shows
	times   []time.Time
	values  map[time.Time][]*float64
	samples map[time.Time]float64
}

func newQuantileSeries(qs []float64) *quantileSeries {
	return &quantileSeries{quantiles: qs, series: map[string]*qseries{}}
}

func labelsKey(name string, m map[string]string) string {
	var b strings.Builder
	b.WriteString(name)
	for _, k := range slices.Sorted(maps.Keys(m)) {
		fmt.Fprintf(&b, "\xff%s=%s", k, m[k])
	}
	return b.String()
}

func (s *quantileSeries) add(name hopName, labels map[string]string, qi int, t time.Time, v float64) *qseries {
	delete(labels, "__name__")
	k := labelsKey(name.text, labels)
	se := s.series[k]
	if se == nil {
		se = &qseries{labels: labels, name: name.text, used: name.used, values: map[time.Time][]*float64{}}
		s.series[k] = se
	}
	vals := se.values[t]
	if vals == nil {
		vals = make([]*float64, len(s.quantiles))
		se.values[t] = vals
		se.times = append(se.times, t)
	}
	vals[qi] = &v
	return se
}

// labelSummary is a series' labels as a legend shows them: values in label
// name order, e.g. "checkout GET /cart".
func labelSummary(m map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, m[k])
	}
	return strings.Join(parts, " ")
}

// frames turns the series into one frame per series: a time field and one
// float field per quantile (seconds), plus the sample count if known.
func (s *quantileSeries) frames(frameName string) []*data.Frame {
	var out []*data.Frame
	for _, k := range slices.Sorted(maps.Keys(s.series)) {
		se := s.series[k]
		slices.SortFunc(se.times, func(a, b time.Time) int { return a.Compare(b) })
		f := data.NewFrame(frameName, data.NewField("Time", nil, se.times))
		rest := maps.Clone(se.labels)
		for _, l := range se.used {
			delete(rest, l)
		}
		display := strings.TrimSpace(strings.Join([]string{se.name, labelSummary(rest)}, " "))
		for qi, q := range s.quantiles {
			vals := make([]*float64, len(se.times))
			for i, t := range se.times {
				vals[i] = se.values[t][qi]
			}
			fld := data.NewField(quantileName(q), copyLabels(se.labels), vals)
			fld.Config = &data.FieldConfig{Unit: "s", DisplayNameFromDS: strings.TrimSpace(quantileName(q) + " " + display)}
			f.Fields = append(f.Fields, fld)
		}
		if se.samples != nil {
			counts := make([]float64, len(se.times))
			for i, t := range se.times {
				counts[i] = se.samples[t]
			}
			fld := data.NewField("samples", copyLabels(se.labels), counts)
			fld.Config = &data.FieldConfig{
				Unit: "short", DisplayNameFromDS: strings.TrimSpace("samples " + display),
				Custom: map[string]any{"hideFrom": map[string]bool{"viz": true, "legend": true, "tooltip": false}},
			}
			f.Fields = append(f.Fields, fld)
		}
		f.Meta = &data.FrameMeta{Type: data.FrameTypeTimeSeriesWide, TypeVersion: data.FrameTypeVersion{0, 1}}
		out = append(out, f)
	}
	return out
}

func copyLabels(m map[string]string) data.Labels {
	if len(m) == 0 {
		return nil
	}
	return data.Labels(maps.Clone(m))
}

// exact answers exact window quantiles from the raw tier.
func (d *Datasource) exact(ctx context.Context, q parsedQuery) (data.Frames, error) {
	if q.Path == PathPromQL {
		return d.promQuantiles(ctx, q, func(qv float64) string {
			e := fmt.Sprintf("quantile_over_time(%s, %s[%s])", fmtFloat(qv), withMetric(q.Selector, "hopwatch_latency_raw_seconds"), promDuration(q.window))
			if len(q.By) > 0 {
				// PromQL cannot merge raw samples across series; the
				// group's worst series is what a "by" means here.
				e = fmt.Sprintf("max by (%s) (%s)", strings.Join(q.By, ", "), e)
			}
			return e
		}, "")
	}
	params := url.Values{
		"window": {promDuration(q.window)},
		"start":  {formatTime(q.from)}, "end": {formatTime(q.to)}, "step": {formatSeconds(q.step)},
	}
	if sel := strings.TrimSpace(q.Selector); sel != "" {
		params.Set("match[]", sel)
	} else {
		params.Set("match[]", "hopwatch_latency_raw_seconds")
	}
	for _, v := range q.Quantiles {
		params.Add("quantile", fmtFloat(v))
	}
	if len(q.By) > 0 {
		params.Set("by", strings.Join(q.By, ","))
	}
	var r latencyResult
	if err := d.client.get(ctx, "/api/v1/latency", params, &r); err != nil {
		return nil, fmt.Errorf("/api/v1/latency: %w", err)
	}
	qs := newQuantileSeries(r.Quantiles)
	if len(r.Quantiles) == 0 {
		qs.quantiles = q.Quantiles
	}
	for _, res := range r.Result {
		for _, v := range res.Values {
			if len(v) != 3 {
				return nil, fmt.Errorf("/api/v1/latency: a value of %d elements, want 3", len(v))
			}
			var ts float64
			var vals []string
			var count string
			if err := json.Unmarshal(v[0], &ts); err != nil {
				return nil, fmt.Errorf("/api/v1/latency: time: %w", err)
			}
			if err := json.Unmarshal(v[1], &vals); err != nil {
				return nil, fmt.Errorf("/api/v1/latency: values: %w", err)
			}
			_ = json.Unmarshal(v[2], &count)
			t := unixSeconds(ts)
			var se *qseries
			for qi, s := range vals {
				f, err := strconv.ParseFloat(s, 64)
				if err != nil {
					return nil, fmt.Errorf("/api/v1/latency: value %q: %w", s, err)
				}
				se = qs.add(hopName{}, maps.Clone(res.Metric), qi, t, f)
			}
			if se != nil {
				if se.samples == nil {
					se.samples = map[time.Time]float64{}
				}
				c, _ := strconv.ParseFloat(count, 64)
				se.samples[t] = c
			}
		}
	}
	return qs.frames(""), nil
}

// sketch answers quantiles of the native histograms of the span metrics.
func (d *Datasource) sketch(ctx context.Context, q parsedQuery) (data.Frames, error) {
	return d.promQuantiles(ctx, q, func(qv float64) string {
		inner := fmt.Sprintf("rate(%s[%s])", withMetric(q.Selector, "traces_spanmetrics_latency"), promDuration(q.window))
		if len(q.By) > 0 {
			inner = fmt.Sprintf("sum by (%s) (%s)", strings.Join(q.By, ", "), inner)
		}
		return fmt.Sprintf("histogram_quantile(%s, %s)", fmtFloat(qv), inner)
	}, "")
}

// hopName names a series in a legend: a text and the labels it shows.
type hopName struct {
	text string
	used []string
}

// promQuantiles runs expr(q) as a range query for every quantile and merges
// the answers into one frame per series.
func (d *Datasource) promQuantiles(ctx context.Context, q parsedQuery, expr func(float64) string, name string) (data.Frames, error) {
	qs := newQuantileSeries(q.Quantiles)
	if err := d.addPromQuantiles(ctx, q, qs, expr, func(map[string]string) hopName { return hopName{text: name} }); err != nil {
		return nil, err
	}
	return qs.frames(""), nil
}

func (d *Datasource) addPromQuantiles(ctx context.Context, q parsedQuery, qs *quantileSeries, expr func(float64) string, name func(map[string]string) hopName) error {
	for qi, qv := range q.Quantiles {
		res, err := d.client.queryRange(ctx, expr(qv), q.from, q.to, q.step)
		if err != nil {
			return err
		}
		for _, s := range res {
			n := name(s.Metric)
			for _, p := range s.Values {
				qs.add(n, maps.Clone(s.Metric), qi, p.time(), p.V)
			}
		}
	}
	return nil
}

// hops answers the hops of one service: the time between its stages, the
// queue hops it produces to or consumes from, and the network part of the
// requests it makes or serves.
func (d *Datasource) hops(ctx context.Context, q parsedQuery) (data.Frames, error) {
	svc := strconv.Quote(q.Service)
	w := promDuration(q.window)
	kinds := []struct {
		expr string
		name func(m map[string]string) hopName
	}{
		{
			expr: fmt.Sprintf("sum by (span_name, from_stage, to_stage) (rate(hopwatch_stage_duration_seconds{service=%s}[%s]))", svc, w),
			name: func(m map[string]string) hopName {
				return hopName{fmt.Sprintf("stage %s → %s", m["from_stage"], m["to_stage"]), []string{"from_stage", "to_stage"}}
			},
		},
		{
			expr: fmt.Sprintf("sum by (producer, consumer) (rate(hopwatch_hop_queue_seconds{producer=%s}[%s]) or rate(hopwatch_hop_queue_seconds{consumer=%s}[%s]))", svc, w, svc, w),
			name: func(m map[string]string) hopName {
				return hopName{fmt.Sprintf("queue %s → %s", m["producer"], m["consumer"]), []string{"producer", "consumer"}}
			},
		},
		{
			expr: fmt.Sprintf("sum by (client, server) (rate(hopwatch_hop_network_seconds{client=%s}[%s]) or rate(hopwatch_hop_network_seconds{server=%s}[%s]))", svc, w, svc, w),
			name: func(m map[string]string) hopName {
				return hopName{fmt.Sprintf("network %s → %s", m["client"], m["server"]), []string{"client", "server"}}
			},
		},
	}
	var out data.Frames
	for _, k := range kinds {
		qs := newQuantileSeries(q.Quantiles)
		err := d.addPromQuantiles(ctx, q, qs, func(qv float64) string {
			return fmt.Sprintf("histogram_quantile(%s, %s)", fmtFloat(qv), k.expr)
		}, k.name)
		if err != nil {
			return nil, err
		}
		out = append(out, qs.frames("")...)
	}
	for _, f := range out {
		// Name the frame after its hop, so a table or a legend shows it.
		for _, fld := range f.Fields[1:] {
			f.Name = strings.TrimPrefix(fld.Config.DisplayNameFromDS, fld.Name+" ")
			break
		}
	}
	return out, nil
}

// edge is one client → server pair of the service graph.
type edge struct {
	client, server string
	rate, failed   float64
	quantiles      []*float64
}

// graph answers the service graph at the end of the time range: per edge
// the request rate, the error ratio and the server-side quantiles over the
// window, as the node graph panel reads them (a nodes and an edges frame),
// and the clock offsets between nodes.
func (d *Datasource) graph(ctx context.Context, q parsedQuery) (data.Frames, error) {
	w := promDuration(q.window)
	edges := map[[2]string]*edge{}
	get := func(m map[string]string) *edge {
		k := [2]string{m["client"], m["server"]}
		e := edges[k]
		if e == nil {
			e = &edge{client: k[0], server: k[1], quantiles: make([]*float64, len(q.Quantiles))}
			edges[k] = e
		}
		return e
	}
	instant := func(expr string, set func(e *edge, v float64)) error {
		res, err := d.client.queryInstant(ctx, expr, q.to)
		if err != nil {
			return err
		}
		for _, s := range res {
			if s.Value == nil {
				continue
			}
			if q.Service != "" && s.Metric["client"] != q.Service && s.Metric["server"] != q.Service {
				continue
			}
			set(get(s.Metric), s.Value.V)
		}
		return nil
	}
	if err := instant(fmt.Sprintf("sum by (client, server) (rate(traces_service_graph_request_total[%s]))", w),
		func(e *edge, v float64) { e.rate = v }); err != nil {
		return nil, err
	}
	if err := instant(fmt.Sprintf("sum by (client, server) (rate(traces_service_graph_request_failed_total[%s]))", w),
		func(e *edge, v float64) { e.failed = v }); err != nil {
		return nil, err
	}
	for qi, qv := range q.Quantiles {
		expr := fmt.Sprintf("histogram_quantile(%s, sum by (client, server) (rate(traces_service_graph_request_server_seconds[%s])))", fmtFloat(qv), w)
		if err := instant(expr, func(e *edge, v float64) { e.quantiles[qi] = &v }); err != nil {
			return nil, err
		}
	}
	keys := slices.SortedFunc(maps.Keys(edges), func(a, b [2]string) int {
		return strings.Compare(a[0]+"\xff"+a[1], b[0]+"\xff"+b[1])
	})

	ef := data.NewFrame("edges")
	ids, src, dst := []string{}, []string{}, []string{}
	rates, errRatio := []float64{}, []float64{}
	qcols := make([][]*float64, len(q.Quantiles))
	nodes := map[string]float64{}
	for _, k := range keys {
		e := edges[k]
		ids = append(ids, e.client+"→"+e.server)
		src = append(src, e.client)
		dst = append(dst, e.server)
		rates = append(rates, e.rate)
		ratio := 0.0
		if e.rate > 0 {
			ratio = e.failed / e.rate
		}
		errRatio = append(errRatio, ratio)
		for qi := range q.Quantiles {
			qcols[qi] = append(qcols[qi], e.quantiles[qi])
		}
		nodes[e.client] += 0
		nodes[e.server] += e.rate
	}
	ef.Fields = append(ef.Fields,
		data.NewField("id", nil, ids),
		data.NewField("source", nil, src),
		data.NewField("target", nil, dst),
	)
	// The node graph panel shows mainstat on the edge: the highest quantile.
	if n := len(q.Quantiles); n > 0 {
		main := data.NewField("mainstat", nil, slices.Clone(qcols[n-1]))
		main.Config = &data.FieldConfig{Unit: "s", DisplayName: quantileName(q.Quantiles[n-1])}
		ef.Fields = append(ef.Fields, main)
	}
	sec := data.NewField("secondarystat", nil, slices.Clone(rates))
	sec.Config = &data.FieldConfig{Unit: "reqps", DisplayName: "requests"}
	ef.Fields = append(ef.Fields, sec)
	for qi, qv := range q.Quantiles {
		f := data.NewField("detail__"+strings.ToLower(quantileName(qv)), nil, qcols[qi])
		f.Config = &data.FieldConfig{Unit: "s", DisplayName: quantileName(qv)}
		ef.Fields = append(ef.Fields, f)
	}
	rf := data.NewField("detail__rate", nil, rates)
	rf.Config = &data.FieldConfig{Unit: "reqps", DisplayName: "requests"}
	xf := data.NewField("detail__error_ratio", nil, errRatio)
	xf.Config = &data.FieldConfig{Unit: "percentunit", DisplayName: "errors"}
	ef.Fields = append(ef.Fields, rf, xf)
	ef.Meta = &data.FrameMeta{PreferredVisualization: data.VisTypeNodeGraph}

	nf := data.NewFrame("nodes")
	var nid []string
	var nrate []float64
	for _, n := range slices.Sorted(maps.Keys(nodes)) {
		nid = append(nid, n)
		nrate = append(nrate, nodes[n])
	}
	nm := data.NewField("mainstat", nil, nrate)
	nm.Config = &data.FieldConfig{Unit: "reqps", DisplayName: "requests served"}
	nf.Fields = append(nf.Fields, data.NewField("id", nil, nid), data.NewField("title", nil, slices.Clone(nid)), nm)
	nf.Meta = &data.FrameMeta{PreferredVisualization: data.VisTypeNodeGraph}

	cf, err := d.clockOffsets(ctx, q)
	if err != nil {
		return nil, err
	}
	return data.Frames{nf, ef, cf}, nil
}

// clockOffsets is hopwatch_clock_offset_seconds at the end of the range:
// the server node's clock minus the client node's, per node pair.
func (d *Datasource) clockOffsets(ctx context.Context, q parsedQuery) (*data.Frame, error) {
	res, err := d.client.queryInstant(ctx, "hopwatch_clock_offset_seconds", q.to)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(res, func(a, b promSeries) int {
		return strings.Compare(labelsKey("", a.Metric), labelsKey("", b.Metric))
	})
	var cn, sn []string
	var off []float64
	for _, s := range res {
		if s.Value == nil {
			continue
		}
		cn = append(cn, s.Metric["client_node"])
		sn = append(sn, s.Metric["server_node"])
		off = append(off, s.Value.V)
	}
	of := data.NewField("offset", nil, off)
	of.Config = &data.FieldConfig{Unit: "s", DisplayName: "clock offset (server − client)"}
	f := data.NewFrame("clock offsets",
		data.NewField("client_node", nil, cn), data.NewField("server_node", nil, sn), of)
	f.Meta = &data.FrameMeta{PreferredVisualization: data.VisTypeTable}
	return f, nil
}

// watermarks lists the tenant's writers: state, position, last write, and
// lag (the time from a writer's position to now), and the tenant's
// watermark and its lag.
func (d *Datasource) watermarks(ctx context.Context, _ parsedQuery) (data.Frames, error) {
	var r writersResult
	if err := d.client.get(ctx, "/api/v1/writers", nil, &r); err != nil {
		return nil, fmt.Errorf("/api/v1/writers: %w", err)
	}
	now := time.Now()
	slices.SortFunc(r.Writers, func(a, b struct {
		Writer    string  `json:"writer"`
		State     string  `json:"state"`
		Position  float64 `json:"position"`
		LastWrite float64 `json:"lastWrite"`
	}) int {
		return strings.Compare(a.Writer, b.Writer)
	})
	var names, states []string
	var pos, last []time.Time
	var lag []float64
	for _, w := range r.Writers {
		names = append(names, w.Writer)
		states = append(states, w.State)
		pos = append(pos, unixSeconds(w.Position))
		last = append(last, unixSeconds(w.LastWrite))
		lag = append(lag, now.Sub(unixSeconds(w.Position)).Seconds())
	}
	lf := data.NewField("lag", nil, lag)
	lf.Config = &data.FieldConfig{Unit: "s", DisplayName: "lag"}
	wf := data.NewFrame("writers",
		data.NewField("writer", nil, names), data.NewField("state", nil, states),
		data.NewField("position", nil, pos), data.NewField("last write", nil, last), lf)
	wf.Meta = &data.FrameMeta{PreferredVisualization: data.VisTypeTable}

	tf := data.NewFrame("watermark", data.NewField("Time", nil, []time.Time{now.UTC().Truncate(time.Millisecond)}))
	var wm []*time.Time
	var wlag []*float64
	if r.Watermark != nil {
		t := unixSeconds(*r.Watermark)
		l := now.Sub(t).Seconds()
		wm, wlag = []*time.Time{&t}, []*float64{&l}
	} else {
		wm, wlag = []*time.Time{nil}, []*float64{nil}
	}
	wlf := data.NewField("watermark lag", nil, wlag)
	wlf.Config = &data.FieldConfig{Unit: "s", DisplayName: "watermark lag"}
	tf.Fields = append(tf.Fields, data.NewField("watermark", nil, wm), wlf)
	return data.Frames{wf, tf}, nil
}

// exemplars returns the trace ids behind the query's series over the time
// range as Grafana's exemplar frame, each trace id linked to its trace.
func (d *Datasource) exemplars(ctx context.Context, q parsedQuery) (*data.Frame, error) {
	metric := "hopwatch_latency_raw_seconds"
	if q.Mode == ModeSketch {
		metric = "traces_spanmetrics_latency"
	}
	var res []exemplarSeries
	err := d.client.get(ctx, "/api/v1/query_exemplars", url.Values{
		"query": {withMetric(q.Selector, metric)}, "start": {formatTime(q.from)}, "end": {formatTime(q.to)},
	}, &res)
	if err != nil {
		return nil, fmt.Errorf("/api/v1/query_exemplars: %w", err)
	}
	type row struct {
		t      time.Time
		v      float64
		trace  string
		series string
	}
	var rows []row
	for _, s := range res {
		sl := maps.Clone(s.SeriesLabels)
		delete(sl, "__name__")
		for _, e := range s.Exemplars {
			v, err := strconv.ParseFloat(e.Value, 64)
			if err != nil {
				continue
			}
			id := e.Labels["trace_id"]
			if id == "" {
				id = e.Labels["traceID"]
			}
			rows = append(rows, row{unixSeconds(e.Timestamp), v, id, labelSummary(sl)})
		}
	}
	slices.SortFunc(rows, func(a, b row) int {
		if c := a.t.Compare(b.t); c != 0 {
			return c
		}
		return strings.Compare(a.trace, b.trace)
	})
	ts := make([]time.Time, len(rows))
	vs := make([]float64, len(rows))
	ids := make([]string, len(rows))
	ss := make([]string, len(rows))
	for i, r := range rows {
		ts[i], vs[i], ids[i], ss[i] = r.t, r.v, r.trace, r.series
	}
	vf := data.NewField("Value", nil, vs)
	vf.Config = &data.FieldConfig{Unit: "s", DisplayName: "latency"}
	tf := data.NewField("trace_id", nil, ids)
	tf.Config = &data.FieldConfig{DisplayName: "trace id", Links: d.traceLinks()}
	f := data.NewFrame("exemplar", data.NewField("Time", nil, ts), vf, tf, data.NewField("series", nil, ss))
	f.Meta = &data.FrameMeta{DataTopic: data.DataTopicAnnotations, Custom: map[string]string{"resultType": "exemplar"}}
	return f, nil
}

// traceLinks are the data links of a trace id: to the configured tracing
// datasource in Explore and/or to a trace URL.
func (d *Datasource) traceLinks() []data.DataLink {
	var links []data.DataLink
	if uid := d.settings.TracesDatasourceUID; uid != "" {
		links = append(links, data.DataLink{
			Title:    "Trace ${__value.raw}",
			Internal: &data.InternalDataLink{DatasourceUID: uid, Query: map[string]string{"query": "${__value.raw}", "queryType": "traceql"}},
		})
	}
	if u := d.settings.TraceLinkURL; u != "" {
		links = append(links, data.DataLink{Title: "Open trace ${__value.raw}", URL: u, TargetBlank: true})
	}
	return links
}

func fmtFloat(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
