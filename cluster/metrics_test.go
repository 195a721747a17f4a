package cluster

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kmsd/kmsd/fsm"
)

// gather returns n's families by name, failing on any family that is not
// exactly one unlabelled sample (kms-go's Metrics() rejects it).
func gather(t testing.TB, n *Node) map[string]*dto.Metric {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(n.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.Metric{}
	for _, mf := range mfs {
		if len(mf.GetMetric()) != 1 || len(mf.GetMetric()[0].GetLabel()) != 0 {
			t.Fatalf("%s: %d samples %v; want one unlabelled sample", mf.GetName(), len(mf.GetMetric()), mf.GetMetric())
		}
		out[mf.GetName()] = mf.GetMetric()[0]
	}
	return out
}

func TestMetricsLatencies(t *testing.T) {
	ca := newTestCA(t, "metrics")
	nodes, _ := newTLSCluster(t, ca, 3, fastSnapshots)
	leader := leaderOf(t, nodes...)
	var follower *testNode
	for _, tn := range nodes {
		if tn != leader {
			follower = tn
			break
		}
	}
	const onLeader, forwarded = 12, 5
	var last fsm.Result
	for i := range onLeader {
		last = mustApply(t, leader.node, &fsm.CreateKey{Key: key(fmt.Sprint("l", i), byte(i+1))}, fsm.CodeOK)
	}
	for i := range forwarded {
		last = mustApply(t, follower.node, &fsm.CreateKey{Key: key(fmt.Sprint("f", i), byte(100+i))}, fsm.CodeOK)
	}
	waitReplicated(t, last.Index, nodes...)

	lm, fm := gather(t, leader.node), gather(t, follower.node)
	hist := func(m map[string]*dto.Metric, name string) (uint64, float64) {
		h := m[name].GetHistogram()
		if h == nil {
			t.Fatalf("%s is not a histogram: %v", name, m[name])
		}
		return h.GetSampleCount(), h.GetSampleSum()
	}
	// Leader: every write committed through raft.Apply here, forwarded ones included.
	if n, sum := hist(lm, "kmsd_raft_commit_duration_seconds"); n < onLeader+forwarded || sum <= 0 {
		t.Errorf("leader commit histogram: %d samples, sum %v; want >= %d", n, sum, onLeader+forwarded)
	} else {
		t.Logf("leader commit: %d samples, mean %v", n, time.Duration(sum/float64(n)*1e9))
	}
	if n, _ := hist(lm, "kmsd_raft_forward_duration_seconds"); n != 0 {
		t.Errorf("leader forwarded %d writes; want 0", n)
	}
	if n, sum := hist(fm, "kmsd_raft_forward_duration_seconds"); n != forwarded || sum <= 0 {
		t.Errorf("follower forward histogram: %d samples, sum %v; want %d", n, sum, forwarded)
	} else {
		t.Logf("follower forward: %d samples, mean %v", n, time.Duration(sum/float64(n)*1e9))
	}
	if n, _ := hist(fm, "kmsd_raft_commit_duration_seconds"); n != 0 {
		t.Errorf("follower committed %d writes itself; want 0", n)
	}
	// Every node's FSM applied every write, in batches.
	for _, tn := range nodes {
		m := gather(t, tn.node)
		batches, sum := hist(m, "kmsd_fsm_apply_duration_seconds")
		entries := m["kmsd_fsm_applied_entries_total"].GetCounter().GetValue()
		if batches == 0 || sum <= 0 || entries < onLeader+forwarded || float64(batches) > entries {
			t.Errorf("%s: FSM apply: %d batches, sum %v, %v entries; want >= %d entries", tn.id, batches, sum, entries, onLeader+forwarded)
		}
		// fastSnapshots: raft has snapshotted by now (or soon).
		waitFor(t, 10*time.Second, tn.id+" raft snapshot", func() bool {
			return gather(t, tn.node)["kmsd_raft_last_snapshot_index"].GetGauge().GetValue() > 0
		})
		m = gather(t, tn.node)
		ts := m["kmsd_raft_last_snapshot_timestamp_seconds"].GetGauge().GetValue()
		if age := time.Since(time.UnixMilli(int64(ts * 1e3))); age < 0 || age > time.Minute {
			t.Errorf("%s: last raft snapshot %v ago (timestamp %v)", tn.id, age, ts)
		}
		if idx := m["kmsd_raft_last_snapshot_index"].GetGauge().GetValue(); idx > float64(tn.fsm.AppliedIndex()) {
			t.Errorf("%s: snapshot index %v above the applied index %d", tn.id, idx, tn.fsm.AppliedIndex())
		}
	}
}

func TestSnapshotTime(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want int64 // unix ms; 0 = zero time
	}{
		{"3-1024-1763806500123", 1763806500123},
		{"1-2-3", 3},
		{"", 0},
		{"garbage", 0},
		{"1-2-x", 0},
		{"1-2-0", 0},
		{"1-2--5", 0},
	} {
		got := snapshotTime(tc.id)
		if (tc.want == 0) != got.IsZero() || (tc.want != 0 && got.UnixMilli() != tc.want) {
			t.Errorf("snapshotTime(%q) = %v, want %d ms", tc.id, got, tc.want)
		}
	}
}
