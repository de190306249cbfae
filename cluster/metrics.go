package cluster

import (
	"io/fs"
	"path/filepath"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// metrics are the node's own measurements. hashicorp/raft reports through
// go-metrics' process-wide sink; rather than bridge that global, the node
// measures around raft's API and reads raft's indexes at scrape time.
type metrics struct {
	commitDuration   prometheus.Histogram
	applyDuration    prometheus.Histogram
	applyErrors      prometheus.Counter
	leaderChanges    prometheus.Counter
	snapshots        prometheus.Counter
	snapshotDuration prometheus.Histogram
	restores         prometheus.Counter
	forwarded        *prometheus.CounterVec
	changes          *prometheus.CounterVec
	authRefused      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		commitDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name:                        "hopwatch_cluster_commit_duration_seconds",
			Help:                        "Time from proposing a change on the leader to its being committed and applied there.",
			Buckets:                     prometheus.ExponentialBuckets(0.0005, 2, 14),
			NativeHistogramBucketFactor: 1.1,
		}),
		applyDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name:                        "hopwatch_cluster_apply_duration_seconds",
			Help:                        "Time to apply one committed change to this node's state.",
			Buckets:                     prometheus.ExponentialBuckets(1e-6, 4, 10),
			NativeHistogramBucketFactor: 1.1,
		}),
		applyErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_cluster_apply_undecodable_total",
			Help: "Committed changes this node could not read (nodes run different versions).",
		}),
		leaderChanges: f.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_cluster_leader_changes_total",
			Help: "Times this node saw a new leader.",
		}),
		snapshots: f.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_cluster_snapshots_total",
			Help: "Snapshots of the state this node wrote.",
		}),
		snapshotDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name:                        "hopwatch_cluster_snapshot_duration_seconds",
			Help:                        "Time to write one snapshot of the state.",
			Buckets:                     prometheus.ExponentialBuckets(0.0001, 4, 10),
			NativeHistogramBucketFactor: 1.1,
		}),
		restores: f.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_cluster_snapshot_restores_total",
			Help: "Snapshots restored into the state (at start, or sent by the leader).",
		}),
		forwarded: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_cluster_forwarded_requests_total",
			Help: "Requests this node sent to the leader, by kind (write, join, remove, read_index) and result (ok, or the error kind).",
		}, []string{"kind", "result"}),
		changes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_cluster_changes_total",
			Help: "Changes proposed by this node while leader, by op and result.",
		}, []string{"op", "result"}),
		authRefused: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_cluster_auth_refused_total",
			Help: "Raft connections and internal gRPC calls refused for want of the cluster secret, by transport (raft, grpc).",
		}, []string{"transport"}),
	}
	return m
}

// registerRaftGauges adds the gauges read from raft at scrape time.
func registerRaftGauges(reg prometheus.Registerer, r *raft.Raft, fsm *fsm, walDir string, ready func() bool) {
	f := promauto.With(reg)
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "hopwatch_cluster_is_leader",
		Help: "1 if this node is the raft leader.",
	}, func() float64 { return b2f(r.State() == raft.Leader) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "hopwatch_cluster_ready",
		Help: "1 once this node has applied everything the leader had committed when it asked.",
	}, func() float64 { return b2f(ready()) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "hopwatch_cluster_term",
		Help: "The raft term this node is in.",
	}, func() float64 { return float64(r.CurrentTerm()) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "hopwatch_cluster_commit_index",
		Help: "The highest raft log index this node knows to be committed.",
	}, func() float64 { return float64(r.CommitIndex()) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "hopwatch_cluster_applied_index",
		Help: "The raft log index of the last change in this node's state.",
	}, func() float64 { return float64(fsm.state.Load().Index()) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "hopwatch_cluster_last_log_index",
		Help: "The last raft log index in this node's log.",
	}, func() float64 { return float64(r.LastIndex()) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "hopwatch_cluster_members",
		Help: "Nodes in the raft configuration as applied on this node.",
	}, func() float64 { return float64(len(fsm.state.Load().servers)) })
	f.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "hopwatch_cluster_log_size_bytes",
		Help: "Size on disk of the raft log (raft-wal segments and meta database).",
	}, func() float64 { return float64(dirSize(walDir)) })
}

// dirSize sums the sizes of the regular files under dir; errors count as
// nothing (a file can go away during the walk).
func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			n += info.Size()
		}
		return nil
	})
	return n
}
