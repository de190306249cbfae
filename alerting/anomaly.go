package alerting

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"gopkg.in/yaml.v3"
)

// AnomalyNamespace is the rule namespace of the generated anomaly group.
const AnomalyNamespace = "hopwatch-anomaly"

// AnomalyOptions configures baseline anomaly alerts: the series a selector
// opts in are compared, window by window, with their own recent past.
type AnomalyOptions struct {
	// Selector opts series in, e.g. {service=~"checkout|cart"}; empty
	// turns anomaly alerts off.
	Selector string
	// Quantile and Window name the recorded window series compared
	// (hopwatch_window_latency_seconds{quantile, window}); the window must
	// be one of --window-quantiles.windows.
	Quantile float64
	Window   time.Duration
	// Baseline is how far back the series' mean and deviation are taken,
	// ending where the current window begins.
	Baseline time.Duration
	// Deviations: anomalous when the current value exceeds the baseline
	// mean by more than this many standard deviations ...
	Deviations float64
	// MinRatio: ... and exceeds the mean by this factor (so that a very
	// steady series does not fire on a tiny change).
	MinRatio float64
	// Windows is how many consecutive anomalous evaluations fire the alert.
	Windows int
	// MinBaselineSamples: a series with fewer points in its baseline is
	// not judged (new series have no past).
	MinBaselineSamples int
}

// DefaultAnomalyOptions compares P99 over 1m with the hour before.
func DefaultAnomalyOptions() AnomalyOptions {
	return AnomalyOptions{Quantile: 0.99, Window: time.Minute, Baseline: time.Hour, Deviations: 3, MinRatio: 1.2, Windows: 3, MinBaselineSamples: 10}
}

// Validate reports every problem with the options.
func (o AnomalyOptions) Validate() error {
	if o.Selector == "" {
		return nil
	}
	var errs []error
	if _, err := parser.NewParser(parser.Options{}).ParseMetricSelector(o.Selector); err != nil {
		errs = append(errs, fmt.Errorf("invalid anomaly selector %q: %v", o.Selector, err))
	}
	if o.Quantile < 0 || o.Quantile > 1 {
		errs = append(errs, fmt.Errorf("invalid anomaly quantile %v: must be in [0, 1]", o.Quantile))
	}
	if o.Window <= 0 || o.Baseline <= o.Window {
		errs = append(errs, fmt.Errorf("invalid anomaly window %s and baseline %s: want 0 < window < baseline", o.Window, o.Baseline))
	}
	if o.Deviations <= 0 || o.MinRatio < 1 {
		errs = append(errs, fmt.Errorf("invalid anomaly thresholds: deviations %v must be positive, ratio %v at least 1", o.Deviations, o.MinRatio))
	}
	if o.Windows < 1 || o.MinBaselineSamples < 1 {
		errs = append(errs, fmt.Errorf("invalid anomaly counts: windows %d and baseline samples %d must be at least 1", o.Windows, o.MinBaselineSamples))
	}
	return errors.Join(errs...)
}

// anomalyGroup generates the rule group for the options, evaluated every
// interval.
func anomalyGroup(o AnomalyOptions, interval time.Duration) (rulefmt.RuleGroup, error) {
	ms, err := parser.NewParser(parser.Options{}).ParseMetricSelector(o.Selector)
	if err != nil {
		return rulefmt.RuleGroup{}, err
	}
	var sel []string
	for _, m := range ms {
		if m.Name == model.MetricNameLabel {
			continue
		}
		sel = append(sel, m.String())
	}
	wlabel := model.Duration(o.Window).String()
	sel = append([]string{
		fmt.Sprintf("quantile=%q", strconv.FormatFloat(o.Quantile, 'f', -1, 64)),
		fmt.Sprintf("window=%q", wlabel),
	}, sel...)
	cur := "hopwatch_window_latency_seconds{" + strings.Join(sel, ", ") + "}"
	past := fmt.Sprintf("%s[%s] offset %s", cur, model.Duration(o.Baseline-o.Window), wlabel)
	expr := fmt.Sprintf(`%[1]s > (avg_over_time(%[2]s) + %[3]s * stddev_over_time(%[2]s))
and %[1]s > %[4]s * avg_over_time(%[2]s)
and count_over_time(%[2]s) >= %[5]d`,
		cur, past, strconv.FormatFloat(o.Deviations, 'f', -1, 64), strconv.FormatFloat(o.MinRatio, 'f', -1, 64), o.MinBaselineSamples)

	rule := rulefmt.Rule{
		Alert: "HopwatchLatencyAnomaly",
		Expr:  expr,
		For:   model.Duration(time.Duration(o.Windows-1) * interval),
		Labels: map[string]string{
			"severity": "warning",
			"anomaly":  "baseline",
		},
		Annotations: map[string]string{
			"summary": fmt.Sprintf("P%s over %s of {{ $labels.service }} {{ $labels.span_name }} is {{ $value | humanizeDuration }}, "+
				"above its baseline of the previous %s for %d evaluations", pct(o.Quantile), wlabel, model.Duration(o.Baseline), o.Windows),
		},
	}
	return rulefmt.RuleGroup{Name: "latency-baseline", Interval: model.Duration(interval), Rules: []rulefmt.Rule{rule}}, nil
}

func pct(q float64) string { return strconv.FormatFloat(q*100, 'f', -1, 64) }

func equalGroups(a, b rulefmt.RuleGroup) bool {
	x, err1 := yaml.Marshal(a)
	y, err2 := yaml.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}
