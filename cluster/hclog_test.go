package cluster

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/kmsd/kmsd/fsm"
)

func TestHCLogAdapter(t *testing.T) {
	var buf bytes.Buffer
	sl := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	l := newHCLog(sl, "")
	raftLog := l.Named("raft").With("id", "n1")

	raftLog.Info("entering leader state", "term", 3)
	raftLog.Debug("debug line")
	raftLog.Trace("trace line") // below slog's Debug: dropped
	l.SetLevel(hclog.Warn)      // shared by derived loggers
	raftLog.Info("suppressed")
	raftLog.Error("failed", "error", errors.New("boom"))
	if !raftLog.IsWarn() || raftLog.IsInfo() || raftLog.GetLevel() != hclog.Warn {
		t.Fatal("level not shared")
	}
	raftLog.StandardLogger(nil).Print("[ERR] from std logger")
	raftLog.StandardLogger(nil).Print("[INFO] dropped at warn")

	out := buf.String()
	for _, want := range []string{
		`level=INFO msg="entering leader state" logger=raft id=n1 term=3`,
		`level=DEBUG msg="debug line" logger=raft id=n1`,
		`level=ERROR msg=failed logger=raft id=n1 error=boom`,
		`level=ERROR msg="from std logger" logger=raft id=n1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	for _, bad := range []string{"trace line", "suppressed", "dropped at warn"} {
		if strings.Contains(out, bad) {
			t.Errorf("%q logged:\n%s", bad, out)
		}
	}
	if n := raftLog.Named("x").Name(); n != "raft.x" {
		t.Errorf("Named = %q", n)
	}
	if n := raftLog.ResetNamed("y").Name(); n != "y" {
		t.Errorf("ResetNamed = %q", n)
	}
	if a := raftLog.ImpliedArgs(); len(a) != 2 {
		t.Errorf("ImpliedArgs = %v", a)
	}
}

// TestNoLeader: a node that is not bootstrapped and has no peers never
// learns of a leader.
func TestNoLeader(t *testing.T) {
	tn := newTestNode(t, "lonely", false, nil)
	n := tn.node
	if _, err := n.Apply(testContext(t, time.Second), &fsm.CreateKey{Key: key("a", 1)}); !errors.Is(err, ErrNoLeader) {
		t.Fatalf("Apply = %v, want ErrNoLeader", err)
	}
	if err := n.ReadBarrier(testContext(t, time.Second)); !errors.Is(err, ErrNoLeader) {
		t.Fatalf("ReadBarrier = %v, want ErrNoLeader", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := n.WaitLeader(ctx); !errors.Is(err, ErrTimeout) {
		t.Fatalf("WaitLeader = %v, want ErrTimeout", err)
	}
	if err := n.AddVoter(testContext(t, time.Second), "x", "127.0.0.1:1"); !errors.Is(err, ErrNoLeader) {
		t.Fatalf("AddVoter = %v", err)
	}
	if st := n.Status(); st.State != "Follower" || st.Leader != "" || len(st.Members) != 0 {
		t.Fatalf("Status = %+v", st)
	}
}
