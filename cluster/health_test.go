package cluster

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/health"
)

// withChecks gives a node a health hook over a registry of fixed checks.
func withChecks(checks map[string]health.Func) func(*Config) {
	reg := health.NewRegistry(nil)
	for name, fn := range checks {
		reg.Register(name, health.Readiness, fn)
	}
	return func(c *Config) { c.Health = reg.Report }
}

func fixed(st health.Status, msg string) health.Func {
	return func(context.Context) (health.Status, string) { return st, msg }
}

// TestClusterStatusHealth: ClusterStatus (and the status RPC with
// ?health=1 the CLI uses) carries every member's health report; a member
// whose report does not come in time is unreachable, within the
// per-member bound; a member without a hook reports no health.
// (A 5-voter cluster: n5's stuck check must not cost the quorum.)
func TestClusterStatusHealth(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	addrs := reservePorts(t, 5)
	n1 := newTLSNode(t, ca, "n1", addrs[0], true, addrs, withChecks(map[string]health.Func{
		"raft": fixed(health.OK, "leader"), "certificates": fixed(health.Degraded, "api server expires in 2 days"),
	}))
	n1.waitLeader()
	n2 := newTLSNode(t, ca, "n2", addrs[1], false, addrs, withChecks(map[string]health.Func{
		"raft": fixed(health.OK, ""), "seal": fixed(health.Fail, "node is sealed: PIN incorrect"),
	}))
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	n3 := newTLSNode(t, ca, "n3", addrs[2], false, addrs, withChecks(map[string]health.Func{
		"slow": func(ctx context.Context) (health.Status, string) {
			<-ctx.Done() // honours ctx, but answers only at the deadline
			return health.Fail, "too slow"
		},
	}))
	n5 := newTLSNode(t, ca, "n5", addrs[4], false, addrs, withChecks(map[string]health.Func{
		"stuck": func(ctx context.Context) (health.Status, string) {
			select { // ignores ctx
			case <-hang:
			case <-time.After(10 * time.Second):
			}
			return health.Fail, "stuck"
		},
	}))
	n4 := newTLSNode(t, ca, "n4", addrs[3], false, addrs, nil)
	for _, tn := range []*testNode{n2, n3, n4, n5} {
		waitJoined(t, tn)
	}

	check := func(t *testing.T, st Status, took time.Duration) {
		t.Helper()
		if took > 3*healthTimeout {
			t.Errorf("status took %v; each member is bounded by %v", took, healthTimeout)
		}
		if st.Report == nil || st.Report.Status != health.Degraded || !st.Report.Ready {
			t.Errorf("n1's own report: %+v", st.Report)
		}
		by := map[string]Health{}
		for _, m := range st.Members {
			by[m.ID] = m.Health
		}
		failing := func(h Health) (names []string) {
			for _, c := range h.Failing {
				names = append(names, c.Name+"="+c.Status.String()+":"+c.Message)
			}
			return names
		}
		if h := by["n1"]; !h.Reachable || h.Status != "degraded" || !h.Ready || !h.Live ||
			!slices.Equal(failing(h), []string{"certificates=degraded:api server expires in 2 days"}) {
			t.Errorf("n1 (self): %+v", h)
		}
		if h := by["n2"]; !h.Reachable || h.State == "" || h.Status != "fail" || h.Ready || !h.Live ||
			!slices.Equal(failing(h), []string{"seal=fail:node is sealed: PIN incorrect"}) {
			t.Errorf("n2 (sealed): %+v", h)
		}
		// The member's handler deadline is a little shorter than ours, so
		// a check that waits for its ctx still gets its answer back.
		if h := by["n3"]; !h.Reachable || h.Status != "fail" || h.Ready ||
			!slices.Equal(failing(h), []string{"slow=fail:too slow"}) {
			t.Errorf("n3 (check answers at its deadline): %+v", h)
		}
		// A check that ignores ctx is abandoned at the member's deadline
		// (by health.Registry, which names it); the status does not wait
		// for it.
		if h := by["n5"]; !h.Reachable || h.Status != "fail" ||
			!slices.Equal(failing(h), []string{"stuck=fail:did not answer in time"}) {
			t.Errorf("n5 (check ignores ctx): %+v", h)
		}
		if h := by["n4"]; !h.Reachable || h.Status != "" || h.Ready || len(h.Failing) != 0 {
			t.Errorf("n4 (no hook): %+v", h)
		}
	}

	t.Run("ClusterStatus", func(t *testing.T) {
		t0 := time.Now()
		st := n1.node.ClusterStatus(ctxT(t))
		check(t, st, time.Since(t0))
	})
	t.Run("RPC", func(t *testing.T) {
		cli := NewClient(ca.tlsFn(t, "cli"))
		defer cli.CloseIdleConnections()
		t0 := time.Now()
		st, err := cli.Status(ctxT(t), n1.addr)
		if err != nil {
			t.Fatal(err)
		}
		check(t, st, time.Since(t0))
		// A plain status RPC carries the node's own report only.
		own, err := cli.localStatus(ctxT(t), n2.addr)
		if err != nil || own.Report == nil || own.Report.Ready || own.Members[0].Health.Status != "" {
			t.Errorf("n2 plain status: %+v, %v", own, err)
		}
		if own.Report != nil && !strings.Contains(own.Report.Checks[1].Message, "PIN incorrect") {
			t.Errorf("n2 report checks: %+v", own.Report.Checks)
		}
	})
	t.Run("Stopped", func(t *testing.T) {
		n5.stop()
		t0 := time.Now()
		st := n1.node.ClusterStatus(ctxT(t))
		if took := time.Since(t0); took > 3*healthTimeout {
			t.Errorf("status took %v", took)
		}
		for _, m := range st.Members {
			if m.ID == "n5" && (m.Health.Reachable || m.Health.Err == "" || m.Health.Status != "" || m.Health.Ready) {
				t.Errorf("stopped n5: %+v", m.Health)
			}
		}
	})
}

// TestReportHookIgnoresCtx: a raw Config.Health hook that ignores its
// context is abandoned when ctx ends and reported as one failing
// "health" check; one that answers is passed through.
func TestReportHookIgnoresCtx(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	stuck := &Node{cfg: Config{Health: func(context.Context) health.Report {
		<-hang
		return health.Report{Live: true, Ready: true}
	}}}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rep := stuck.report(ctx)
	if rep == nil || rep.Ready || rep.Status != health.Fail || len(rep.Checks) != 1 || rep.Checks[0].Name != "health" {
		t.Fatalf("stuck hook: %+v", rep)
	}
	ok := &Node{cfg: Config{Health: func(context.Context) health.Report { return health.Report{Live: true, Ready: true} }}}
	if rep := ok.report(context.Background()); rep == nil || !rep.Ready {
		t.Fatalf("answering hook: %+v", rep)
	}
	if rep := (&Node{}).report(context.Background()); rep != nil {
		t.Fatalf("no hook: %+v", rep)
	}
}
