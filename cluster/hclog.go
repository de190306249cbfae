package cluster

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"

	"github.com/hashicorp/go-hclog"
)

// hclogAdapter lets hashicorp/raft and raft-wal log through the node's
// slog.Logger. raft's chatty Info lines ("entering follower state") stay at
// Info: they are the record of elections an operator wants.
type hclogAdapter struct {
	base *slog.Logger // with args, without the name
	l    *slog.Logger // base with the name
	name string
	args []any
}

var _ hclog.Logger = (*hclogAdapter)(nil)

func newHCLog(l *slog.Logger, name string) hclog.Logger {
	return &hclogAdapter{base: l, l: l.With("component", name), name: name}
}

func slogLevel(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace:
		return slog.LevelDebug - 4
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	}
	return slog.LevelInfo
}

func (a *hclogAdapter) Log(level hclog.Level, msg string, args ...any) {
	a.l.Log(context.Background(), slogLevel(level), msg, hclogValues(args)...)
}

// hclogValues renders hclog's formatting values (hclog.Fmt, Hex, Octal,
// Binary, Quote) as hclog would, so that raft's
// `"servers", hclog.Fmt("%+v", servers)` logs the servers rather than the
// format and its arguments as a list. args is not modified.
func hclogValues(args []any) []any {
	var out []any
	for i, v := range args {
		var s string
		switch v := v.(type) {
		case hclog.Format:
			if len(v) == 0 {
				continue
			}
			format, ok := v[0].(string)
			if !ok {
				continue
			}
			s = fmt.Sprintf(format, v[1:]...)
		case hclog.Hex:
			s = fmt.Sprintf("0x%x", int(v))
		case hclog.Octal:
			s = fmt.Sprintf("0%o", int(v))
		case hclog.Binary:
			s = fmt.Sprintf("0b%b", int(v))
		case hclog.Quote:
			s = fmt.Sprintf("%q", string(v))
		default:
			continue
		}
		if out == nil {
			out = append([]any(nil), args...)
		}
		out[i] = s
	}
	if out == nil {
		return args
	}
	return out
}
func (a *hclogAdapter) Trace(msg string, args ...any) { a.Log(hclog.Trace, msg, args...) }
func (a *hclogAdapter) Debug(msg string, args ...any) { a.Log(hclog.Debug, msg, args...) }
func (a *hclogAdapter) Info(msg string, args ...any)  { a.Log(hclog.Info, msg, args...) }
func (a *hclogAdapter) Warn(msg string, args ...any)  { a.Log(hclog.Warn, msg, args...) }
func (a *hclogAdapter) Error(msg string, args ...any) { a.Log(hclog.Error, msg, args...) }

func (a *hclogAdapter) enabled(level hclog.Level) bool {
	return a.l.Enabled(context.Background(), slogLevel(level))
}
func (a *hclogAdapter) IsTrace() bool { return a.enabled(hclog.Trace) }
func (a *hclogAdapter) IsDebug() bool { return a.enabled(hclog.Debug) }
func (a *hclogAdapter) IsInfo() bool  { return a.enabled(hclog.Info) }
func (a *hclogAdapter) IsWarn() bool  { return a.enabled(hclog.Warn) }
func (a *hclogAdapter) IsError() bool { return a.enabled(hclog.Error) }

func (a *hclogAdapter) ImpliedArgs() []any { return a.args }

func (a *hclogAdapter) With(args ...any) hclog.Logger {
	args = hclogValues(args)
	base := a.base.With(args...)
	return &hclogAdapter{base: base, l: base.With("component", a.name), name: a.name, args: append(a.args[:len(a.args):len(a.args)], args...)}
}

func (a *hclogAdapter) Name() string { return a.name }

func (a *hclogAdapter) Named(name string) hclog.Logger {
	if a.name != "" {
		name = a.name + "." + name
	}
	return a.ResetNamed(name)
}

func (a *hclogAdapter) ResetNamed(name string) hclog.Logger {
	return &hclogAdapter{base: a.base, l: a.base.With("component", name), name: name, args: a.args}
}

// SetLevel does nothing: the slog handler decides.
func (a *hclogAdapter) SetLevel(hclog.Level) {}

func (a *hclogAdapter) GetLevel() hclog.Level {
	for _, l := range []hclog.Level{hclog.Trace, hclog.Debug, hclog.Info, hclog.Warn} {
		if a.enabled(l) {
			return l
		}
	}
	return hclog.Error
}

func (a *hclogAdapter) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return slog.NewLogLogger(a.l.Handler(), slog.LevelInfo)
}

func (a *hclogAdapter) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	return a.StandardLogger(opts).Writer()
}
