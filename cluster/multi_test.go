package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsd/kmsd/fsm"
)

// waitFor polls cond every 10ms until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitReplicated(t testing.TB, index uint64, nodes ...*testNode) {
	t.Helper()
	for _, tn := range nodes {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := tn.fsm.WaitApplied(ctx, index)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", tn.id, err)
		}
	}
}

func TestThreeNodes(t *testing.T) {
	n1 := newTestNode(t, "n1", true, nil)
	n1.waitLeader()
	n2 := newTestNode(t, "n2", false, nil)
	n3 := newTestNode(t, "n3", false, nil)
	for _, tn := range []*testNode{n2, n3} {
		if err := n1.node.AddVoter(testContext(t, 10*time.Second), tn.id, tn.addr); err != nil {
			t.Fatalf("AddVoter(%s): %v", tn.id, err)
		}
	}
	all := []*testNode{n1, n2, n3}
	for _, tn := range all[1:] {
		if err := tn.node.WaitLeader(testContext(t, 10*time.Second)); err != nil {
			t.Fatalf("%s: WaitLeader: %v", tn.id, err)
		}
	}
	for _, tn := range all {
		waitJoined(t, tn) // added by AddVoter: the membership watch sees it
	}
	// Without a node channel the health probes cannot run.
	for _, m := range n1.node.ClusterStatus(testContext(t, 5*time.Second)).Members {
		if m.ID != "n1" && (m.Health.Reachable || !strings.Contains(m.Health.Err, "TLS")) {
			t.Fatalf("plain-mode health of %s: %+v", m.ID, m.Health)
		}
	}
	if len(n2.node.Members()) != 3 {
		t.Fatalf("Members = %+v", n2.node.Members())
	}
	if st := n1.node.Status(); len(st.Members) != 3 || st.FailureTolerance != 1 {
		t.Fatalf("Status = %+v", st)
	}

	// Writes on the leader reach every FSM.
	var last fsm.Result
	for i := range 10 {
		last = mustApply(t, n1.node, &fsm.CreateKey{Key: key(fmt.Sprint("r", i), byte(i+1))}, fsm.CodeOK)
	}
	last = mustApply(t, n1.node, &fsm.DeleteKey{Name: "r0", RequestID: [16]byte{0xd0}}, fsm.CodeOK)
	waitReplicated(t, last.Index, all...)
	want, _ := n1.fsm.ListKeys("")
	for _, tn := range all {
		got, _ := tn.fsm.ListKeys("")
		if fmt.Sprint(got) != fmt.Sprint(want) || len(got) != 9 {
			t.Fatalf("%s keys = %v, want %v", tn.id, got, want)
		}
		if tn.deletes.Load() != 1 {
			t.Fatalf("%s OnDelete calls = %d", tn.id, tn.deletes.Load())
		}
	}

	// Followers refuse writes and (for now) read barriers, naming the leader.
	if _, err := n2.node.Apply(testContext(t, 5*time.Second), &fsm.CreateKey{Key: key("f", 99)}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("follower Apply = %v", err)
	}
	if err := n3.node.ReadBarrier(testContext(t, 5*time.Second)); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("follower ReadBarrier = %v", err)
	}
	if id, addr := n2.node.Leader(); id != "n1" || addr != n1.addr {
		t.Fatalf("n2 sees leader %s at %s", id, addr)
	}
	if err := n1.node.ReadBarrier(testContext(t, 5*time.Second)); err != nil {
		t.Fatalf("leader ReadBarrier: %v", err)
	}

	// Kill the leader: one of the others takes over, well under a second
	// on loopback (the bound here is generous for slow CI).
	start := time.Now()
	n1.stop()
	var leader, other *testNode
	waitFor(t, 10*time.Second, "a new leader", func() bool {
		for _, tn := range []*testNode{n2, n3} {
			if tn.node.IsLeader() {
				leader = tn
			}
		}
		return leader != nil
	})
	t.Logf("failover took %s (%s)", time.Since(start), leader.id)
	other = n2
	if leader == n2 {
		other = n3
	}
	res := mustApply(t, leader.node, &fsm.CreateKey{Key: key("after-failover", 77)}, fsm.CodeOK)
	waitReplicated(t, res.Index, leader, other)
	if _, err := other.fsm.GetKey("after-failover"); err != nil {
		t.Fatalf("%s: %v", other.id, err)
	}
	if err := leader.node.ReadBarrier(testContext(t, 5*time.Second)); err != nil {
		t.Fatalf("new leader ReadBarrier: %v", err)
	}

	// Remove the dead node; the two survivors keep a quorum of 2.
	if err := leader.node.RemoveServer(testContext(t, 10*time.Second), "n1"); err != nil {
		t.Fatalf("RemoveServer: %v", err)
	}
	if st := leader.node.Status(); len(st.Members) != 2 || st.FailureTolerance != 0 {
		t.Fatalf("Status after remove = %+v", st)
	}
	if err := other.node.AddVoter(testContext(t, 5*time.Second), "n9", "127.0.0.1:1"); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("AddVoter on follower = %v", err)
	}

	// Metrics reflect the leader's view.
	reg := prometheus.NewRegistry()
	reg.MustRegister(leader.node.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += "{" + l.GetValue() + "}"
			}
			got[name] = m.GetGauge().GetValue()
		}
	}
	checks := map[string]float64{
		"kmsd_raft_state":             2, // leader
		"kmsd_raft_leader":            1,
		"kmsd_raft_members":           2,
		"kmsd_raft_voters":            2,
		"kmsd_raft_failure_tolerance": 0,
		"kmsd_raft_applied_index":     float64(leader.fsm.AppliedIndex()),
	}
	for k, v := range checks {
		if got[k] != v {
			t.Fatalf("metric %s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
	if got["kmsd_raft_term"] < 2 || got["kmsd_raft_commit_index"] < float64(res.Index) {
		t.Fatalf("metrics: %v", got)
	}
}

// TestReadBarrierAfterElection: right after an election the leader's
// last committed entry is its no-op, which the FSM never sees; the read
// barrier must still return promptly (the slow path with a raft barrier).
func TestReadBarrierAfterElection(t *testing.T) {
	tn := newTestNode(t, "n1", true, nil)
	tn.waitLeader()
	mustApply(t, tn.node, &fsm.CreateKey{Key: key("a", 1)}, fsm.CodeOK)
	tn.restart()
	tn.waitLeader()
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := tn.node.ReadBarrier(ctx)
		cancel()
		if err != nil {
			t.Fatalf("ReadBarrier %d: %v (status %+v)", i, err, tn.node.Status())
		}
	}
	if i, term := tn.fsm.Applied(); term != tn.node.Status().Term || i == 0 {
		t.Logf("applied %d term %d", i, term)
	}
}
