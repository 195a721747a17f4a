package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/cluster"
	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/health"
	"github.com/kmsd/kmsd/hsm"
	"github.com/kmsd/kmsd/seal"
	"github.com/kmsd/kmsd/storage"
)

var raftHealthTests = []struct {
	name   string
	st     cluster.Status
	want   health.Status
	substr string
}{
	{"leader", cluster.Status{NodeID: "a", State: "Leader", Leader: "a", Term: 3, CommitIndex: 10, AppliedIndex: 9,
		Members: []cluster.Member{{ID: "a"}, {ID: "b"}}}, health.OK, "leader, term 3"},
	{"follower", cluster.Status{NodeID: "b", State: "Follower", Leader: "a", Term: 3,
		Members: []cluster.Member{{ID: "a"}, {ID: "b"}}}, health.OK, "follower of a, term 3"},
	{"no leader", cluster.Status{NodeID: "b", State: "Candidate", Term: 9,
		Members: []cluster.Member{{ID: "a"}, {ID: "b"}}}, health.Degraded, "no leader known (candidate, term 9)"},
	{"lagging", cluster.Status{NodeID: "b", State: "Follower", Leader: "a", CommitIndex: 5000, AppliedIndex: 3000,
		Members: []cluster.Member{{ID: "a"}, {ID: "b"}}}, health.Degraded, "applied index 3000 is 2000 entries behind the commit index 5000"},
	{"lag within the margin", cluster.Status{NodeID: "b", State: "Follower", Leader: "a", CommitIndex: 1005, AppliedIndex: 5,
		Members: []cluster.Member{{ID: "a"}, {ID: "b"}}}, health.OK, "follower of a"},
	{"not joined", cluster.Status{NodeID: "c", State: "Follower"}, health.Fail, "c is not in the raft configuration"},
	{"removed", cluster.Status{NodeID: "c", State: "Follower", Leader: "a",
		Members: []cluster.Member{{ID: "a"}, {ID: "b"}}}, health.Fail, "not joined yet, or removed"},
	{"shut down", cluster.Status{NodeID: "a", State: "Shutdown", Members: []cluster.Member{{ID: "a"}}}, health.Fail, "raft is shut down"},
}

func TestRaftHealth(t *testing.T) {
	for i, tc := range raftHealthTests {
		got, msg := raftHealth(tc.st)
		if got != tc.want || !strings.Contains(msg, tc.substr) {
			t.Errorf("Test %d (%s): %v %q, want %v containing %q", i, tc.name, got, msg, tc.want, tc.substr)
		}
	}
}

// healthRaftNode opens a plain-TCP raft node (no node channel) over memory
// storage, as a node whose raft field the check reads.
func healthRaftNode(t *testing.T, id string, bootstrap bool) (*node, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	n := &node{log: quiet, fsm: memFSM(t)}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	n.raft, err = cluster.Open(ctx, cluster.Config{
		NodeID: id, DataDir: t.TempDir(), BindAddr: addr, Bootstrap: bootstrap, Logger: quiet,
	}, n.fsm)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.raft.Shutdown() })
	return n, addr
}

// waitCheck polls a check until it reports want (at most 10 s).
func waitCheck(t *testing.T, what string, fn health.Func, want health.Status, substr string) {
	t.Helper()
	var got health.Status
	var msg string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if got, msg = fn(t.Context()); got == want && strings.Contains(msg, substr) {
			return
		}
	}
	t.Fatalf("%s: raft check %v %q, want %v containing %q", what, got, msg, want, substr)
}

// TestRaftCheckStates walks real raft nodes through the check's states:
// not open, not joined, leader, joined, no leader after quorum loss,
// shut down.
func TestRaftCheckStates(t *testing.T) {
	if st, msg := (&node{}).raftCheck(t.Context()); st != health.Fail || !strings.Contains(msg, "not running") {
		t.Errorf("before raft opens: %v %q", st, msg)
	}
	a, _ := healthRaftNode(t, "a", true)
	b, bAddr := healthRaftNode(t, "b", false)
	waitCheck(t, "bootstrapped node", a.raftCheck, health.OK, "leader, term")
	waitCheck(t, "node that has not joined", b.raftCheck, health.Fail, "b is not in the raft configuration")

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := a.raft.AddVoter(ctx, "b", bAddr); err != nil {
		t.Fatal(err)
	}
	// Usually "follower of a"; under load b may win an election instead.
	waitCheck(t, "joined node", b.raftCheck, health.OK, ", term ")

	// Two voters, one gone: a loses its quorum and steps down.
	if err := b.raft.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitCheck(t, "stopped node", b.raftCheck, health.Fail, "raft is shut down")
	waitCheck(t, "quorum lost", a.raftCheck, health.Degraded, "no leader known")
	if err := a.raft.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitCheck(t, "shut down", a.raftCheck, health.Fail, "raft is shut down")
}

func TestSealCheck(t *testing.T) {
	dir := t.TempDir()
	n := &node{}
	n.cfg.Store(&fileConfig{DataDir: dir})
	if st, msg := n.sealCheck(t.Context()); st != health.Fail || !strings.Contains(msg, "joining") {
		t.Errorf("no stanza, no error: %v %q", st, msg)
	}
	n.noteUnseal(fmt.Errorf("hsm: open: %w", hsm.ErrPINIncorrect))
	if st, msg := n.sealCheck(t.Context()); st != health.Fail || !strings.Contains(msg, "node is sealed: hsm: open: ") || !strings.Contains(msg, "not retrying") {
		t.Errorf("wrong PIN: %v %q", st, msg)
	}
	n.noteUnseal(errors.New("hsm: token not found"))
	if st, msg := n.sealCheck(t.Context()); st != health.Fail || msg != "node is sealed: hsm: token not found (retrying)" {
		t.Errorf("other error: %v %q", st, msg)
	}
	kr, _, err := seal.Init(t.Context(), seal.NewSoftware(bytes.Repeat([]byte{3}, 32), "k"))
	if err != nil {
		t.Fatal(err)
	}
	defer kr.Destroy()
	n.noteUnseal(nil)
	n.keyring.Store(kr)
	if st, _ := n.sealCheck(t.Context()); st != health.OK {
		t.Errorf("unsealed: %v", st)
	}
}

func TestStoreCheck(t *testing.T) {
	if st, _ := (&node{}).storeCheck(t.Context()); st != health.Fail {
		t.Errorf("no state: %v", st)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	db, err := storage.Open(storage.Options{Dir: filepath.Join(t.TempDir(), "state"), Logger: quiet, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	f, err := fsm.New(db, fsm.Config{Logger: quiet, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	n := &node{fsm: f}
	if st, msg := n.storeCheck(t.Context()); st != health.OK {
		t.Errorf("open store: %v %q", st, msg)
	}
	db.Close()
	if st, msg := n.storeCheck(t.Context()); st != health.Fail || !strings.Contains(msg, "local state read failed") {
		t.Errorf("closed store: %v %q", st, msg)
	}
}

// TestPrintStatusHealth: members' health words and failing checks in the
// table and in --json.
func TestPrintStatusHealth(t *testing.T) {
	sealed := []health.Check{{Name: "seal", Status: health.Fail, Message: "node is sealed: PIN incorrect"}}
	st := cluster.Status{
		NodeID: "node1", State: "Leader", Leader: "node1", LeaderAddr: "10.0.0.1:7374", Term: 2,
		Members: []cluster.Member{
			{ID: "node1", Addr: "10.0.0.1:7374", Suffrage: "Voter", Health: cluster.Health{Reachable: true, State: "Leader", Applied: 9,
				Status: "degraded", Live: true, Ready: true, Failing: []health.Check{{Name: "certificates", Status: health.Degraded, Message: "api server expires in 5 days"}}}},
			{ID: "node2", Addr: "10.0.0.2:7374", Suffrage: "Voter", Health: cluster.Health{Reachable: true, State: "Follower", Applied: 9,
				Status: "fail", Live: true, Failing: sealed}},
			{ID: "node3", Addr: "10.0.0.3:7374", Suffrage: "Voter", Health: cluster.Health{Reachable: true, State: "Follower", Applied: 9,
				Status: "ok", Live: true, Ready: true}},
			{ID: "node4", Addr: "10.0.0.4:7374", Suffrage: "Voter", Health: cluster.Health{Reachable: true, State: "Follower", Applied: 8,
				Status: "fail", Failing: []health.Check{{Name: "store", Status: health.Fail, Message: "read failed", Liveness: true}}}},
		},
	}
	var b strings.Builder
	printStatus(&b, st)
	for _, want := range []string{
		"node1 *  10.0.0.1:7374  Voter     degraded  leader    9        0",
		"node2    10.0.0.2:7374  Voter     unready   follower  9        0",
		"node3    10.0.0.3:7374  Voter     ready     follower  9        0",
		"node4    10.0.0.4:7374  Voter     not-live  follower  8        1",
		"MEMBER  CHECK             STATUS    MESSAGE",
		"node1   certificates      degraded  api server expires in 5 days",
		"node2   seal              fail      node is sealed: PIN incorrect",
		"node4   store (liveness)  fail      read failed",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, b.String())
		}
	}

	raw, err := json.Marshal(statusJSONOf(st))
	if err != nil {
		t.Fatal(err)
	}
	var j struct {
		Members []struct {
			ID        string `json:"id"`
			Reachable bool   `json:"reachable"`
			Health    string `json:"health"`
			Ready     *bool  `json:"ready"`
			Live      *bool  `json:"live"`
			Status    string `json:"status"`
			Checks    []struct {
				Name, Status, Message string
			} `json:"checks"`
		} `json:"members"`
	}
	if err := json.Unmarshal(raw, &j); err != nil {
		t.Fatal(err)
	}
	m := j.Members[1]
	if m.ID != "node2" || !m.Reachable || m.Health != "unready" || m.Ready == nil || *m.Ready || m.Live == nil || !*m.Live ||
		m.Status != "fail" || len(m.Checks) != 1 || m.Checks[0].Name != "seal" || m.Checks[0].Status != "fail" || m.Checks[0].Message != sealed[0].Message {
		t.Errorf("--json member node2: %s", raw)
	}
	// A member without a report (an older kmsd): "ok", no ready/live.
	old := memberJSONOf(cluster.Member{ID: "x", Health: cluster.Health{Reachable: true, State: "Follower"}}, "")
	if old.Health != "ok" || old.Ready != nil || old.Live != nil || old.Checks != nil {
		t.Errorf("member without a report: %+v", old)
	}
}
