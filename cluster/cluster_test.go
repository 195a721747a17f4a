package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/storage"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func testLogger() *slog.Logger {
	if os.Getenv("KMSD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return quiet
}

// testContext is bounded by the test's deadline (and at most d).
func testContext(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// testNode is a Node with its storage and FSM, restartable on the same
// directories and address.
type testNode struct {
	t       testing.TB
	id      string
	dir     string
	addr    string
	db      *storage.DB
	fsm     *fsm.FSM
	node    *Node
	deletes atomic.Int64
	mu      sync.Mutex
	deleted []string
	tune    func(*Config)
}

func newTestNode(t testing.TB, id string, bootstrap bool, tune func(*Config)) *testNode {
	t.Helper()
	tn := &testNode{t: t, id: id, dir: t.TempDir(), addr: "127.0.0.1:0", tune: tune}
	tn.start(bootstrap)
	t.Cleanup(tn.stop)
	return tn
}

func (tn *testNode) start(bootstrap bool) {
	t := tn.t
	t.Helper()
	db, err := storage.Open(storage.Options{Dir: filepath.Join(tn.dir, "state"), Logger: quiet, NoSyncWrites: true})
	if err != nil {
		t.Fatalf("%s: storage.Open: %v", tn.id, err)
	}
	f, err := fsm.New(db, fsm.Config{Logger: quiet, TempDir: tn.dir, OnDelete: func(name string) {
		tn.deletes.Add(1)
		tn.mu.Lock()
		tn.deleted = append(tn.deleted, name)
		tn.mu.Unlock()
	}})
	if err != nil {
		t.Fatalf("%s: fsm.New: %v", tn.id, err)
	}
	cfg := Config{
		NodeID: tn.id, DataDir: tn.dir, BindAddr: tn.addr, Bootstrap: bootstrap, Logger: testLogger(),
	}
	if tn.tune != nil {
		tn.tune(&cfg)
	}
	n, err := Open(testContext(t, 10*time.Second), cfg, f)
	if err != nil {
		_ = db.Close()
		t.Fatalf("%s: Open: %v", tn.id, err)
	}
	tn.db, tn.fsm, tn.node = db, f, n
	_, port, _ := net.SplitHostPort(string(n.trans.LocalAddr()))
	tn.addr = "127.0.0.1:" + port // reuse the port on restart
}

func (tn *testNode) stop() {
	if tn.node == nil {
		return
	}
	if err := tn.node.Shutdown(); err != nil {
		tn.t.Errorf("%s: Shutdown: %v", tn.id, err)
	}
	if err := tn.db.Close(); err != nil {
		tn.t.Errorf("%s: storage Close: %v", tn.id, err)
	}
	tn.node = nil
}

func (tn *testNode) restart() {
	tn.t.Helper()
	tn.stop()
	tn.start(true)
}

func (tn *testNode) waitLeader() {
	tn.t.Helper()
	ctx := testContext(tn.t, 10*time.Second)
	for !tn.node.IsLeader() {
		if err := tn.node.WaitLeader(ctx); err != nil {
			tn.t.Fatalf("%s: WaitLeader: %v", tn.id, err)
		}
		if !tn.node.IsLeader() {
			select {
			case <-ctx.Done():
				tn.t.Fatalf("%s: not leader: %+v", tn.id, tn.node.Status())
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
}

func key(name string, id byte) fsm.Key {
	return fsm.Key{
		Name: name, Algorithm: 1, Version: 1, Sealed: []byte("sealed-" + name),
		CreatedAt: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), CreatedBy: "tester",
		RequestID: [16]byte{0: id, 15: 1},
	}
}

func mustApply(t testing.TB, n *Node, cmd fsm.Command, want fsm.Code) fsm.Result {
	t.Helper()
	res, err := n.Apply(testContext(t, 10*time.Second), cmd)
	if err != nil {
		t.Fatalf("Apply(%T): %v", cmd, err)
	}
	if res.Code != want {
		t.Fatalf("Apply(%T) = %+v, want code %d", cmd, res, want)
	}
	return res
}

func TestSingleNode(t *testing.T) {
	tn := newTestNode(t, "n1", true, nil)
	tn.waitLeader()
	n := tn.node

	tests := []struct {
		cmd  fsm.Command
		want fsm.Code
	}{
		{&fsm.CreateKey{Key: key("a", 1)}, fsm.CodeOK},
		{&fsm.CreateKey{Key: key("a", 1)}, fsm.CodeOK}, // idempotent retry
		{&fsm.CreateKey{Key: key("a", 2)}, fsm.CodeKeyExists},
		{&fsm.CreateKey{Key: key("b", 3)}, fsm.CodeOK},
		{&fsm.DeleteKey{Name: "a", RequestID: [16]byte{4}}, fsm.CodeOK},
		{&fsm.DeleteKey{Name: "a", RequestID: [16]byte{5}}, fsm.CodeKeyNotFound},
		{&fsm.PutStanza{KeyID: "hsm", REKID: "rek", Stanza: []byte{1}}, fsm.CodeOK},
		{&fsm.PutStanza{KeyID: "hsm2", REKID: "other", Stanza: []byte{1}}, fsm.CodeInvalid},
	}
	var last uint64
	for i, tc := range tests {
		res := mustApply(t, n, tc.cmd, tc.want)
		if res.Index <= last {
			t.Fatalf("Test %d: index %d not increasing", i, res.Index)
		}
		last = res.Index
	}
	if err := n.ReadBarrier(testContext(t, 5*time.Second)); err != nil {
		t.Fatalf("ReadBarrier: %v", err)
	}
	if got := tn.fsm.AppliedIndex(); got != last {
		t.Fatalf("AppliedIndex = %d, want %d", got, last)
	}
	if names, _ := tn.fsm.ListKeys(""); fmt.Sprint(names) != "[b]" {
		t.Fatalf("keys = %v", names)
	}
	st := n.Status()
	if st.State != "Leader" || st.Leader != "n1" || len(st.Members) != 1 || st.FailureTolerance != 0 ||
		st.AppliedIndex != last || st.CommitIndex < last || st.LastLogIndex < last || st.Term == 0 {
		t.Fatalf("Status = %+v", st)
	}
	// Too large and unencodable commands never reach raft.
	big := key("big", 9)
	big.Sealed = make([]byte, MaxCommandSize)
	if _, err := n.Apply(testContext(t, time.Second), &fsm.CreateKey{Key: big}); !errors.Is(err, fsm.ErrInvalid) {
		t.Fatalf("Apply(big) = %v", err)
	}
	if _, err := n.Apply(testContext(t, time.Second), nil); !errors.Is(err, fsm.ErrInvalid) {
		t.Fatalf("Apply(nil) = %v", err)
	}
}

func TestApplyContext(t *testing.T) {
	tn := newTestNode(t, "n1", true, nil)
	tn.waitLeader()
	// Already expired: rejected before anything is proposed.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := tn.node.Apply(ctx, &fsm.CreateKey{Key: key("x", 1)}); !errors.Is(err, ErrTimeout) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Apply(cancelled) = %v", err)
	}
	if err := tn.node.ReadBarrier(ctx); !errors.Is(err, ErrTimeout) {
		t.Fatalf("ReadBarrier(cancelled) = %v", err)
	}
	if _, err := tn.fsm.GetKey("x"); !errors.Is(err, fsm.ErrKeyNotFound) {
		t.Fatal("cancelled apply was applied")
	}
	// A deadline that expires while waiting: the command was enqueued, so
	// the outcome is unknown (it may or may not have been applied).
	for range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Microsecond)
		time.Sleep(10 * time.Microsecond)
		_, err := tn.node.Apply(ctx, &fsm.CreateKey{Key: key("y", 2)})
		cancel()
		if err == nil {
			continue
		}
		if !errors.Is(err, ErrTimeout) && !errors.Is(err, ErrUnknownOutcome) {
			t.Fatalf("Apply(expired) = %v", err)
		}
	}
	// The retry with the same request id settles it.
	mustApply(t, tn.node, &fsm.CreateKey{Key: key("y", 2)}, fsm.CodeOK)
}

// TestRestart: the state survives, nothing is applied twice and writes
// continue.
func TestRestart(t *testing.T) {
	tn := newTestNode(t, "n1", true, nil)
	tn.waitLeader()
	for i := range 5 {
		mustApply(t, tn.node, &fsm.CreateKey{Key: key(fmt.Sprint("k", i), byte(i+1))}, fsm.CodeOK)
	}
	mustApply(t, tn.node, &fsm.DeleteKey{Name: "k0", RequestID: [16]byte{9}}, fsm.CodeOK)
	applied := tn.fsm.AppliedIndex()
	if tn.deletes.Load() != 1 {
		t.Fatalf("deletes = %d", tn.deletes.Load())
	}

	tn.restart()
	if got := tn.fsm.AppliedIndex(); got != applied {
		t.Fatalf("AppliedIndex after restart = %d, want %d", got, applied)
	}
	tn.waitLeader()
	if err := tn.node.ReadBarrier(testContext(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if tn.deletes.Load() != 1 {
		t.Fatalf("OnDelete ran again on restart: %d calls", tn.deletes.Load())
	}
	if names, _ := tn.fsm.ListKeys(""); fmt.Sprint(names) != "[k1 k2 k3 k4]" {
		t.Fatalf("keys after restart = %v", names)
	}
	res := mustApply(t, tn.node, &fsm.DeleteKey{Name: "k1", RequestID: [16]byte{10}}, fsm.CodeOK)
	if res.Index <= applied || tn.deletes.Load() != 2 {
		t.Fatalf("write after restart: %+v deletes %d", res, tn.deletes.Load())
	}
}

// TestSnapshotRestart: snapshot, more writes, restart; then a wiped FSM
// is rebuilt from the snapshot plus the log.
func TestSnapshotRestart(t *testing.T) {
	tn := newTestNode(t, "n1", true, func(c *Config) { c.TrailingLogs = 2 })
	tn.waitLeader()
	for i := range 10 {
		mustApply(t, tn.node, &fsm.CreateKey{Key: key(fmt.Sprint("s", i), byte(i+1))}, fsm.CodeOK)
	}
	if err := tn.node.Snapshot(testContext(t, 10*time.Second)); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	if err := tn.node.Snapshot(testContext(t, 10*time.Second)); err != nil {
		t.Fatalf("second Snapshot (nothing new): %v", err)
	}
	mustApply(t, tn.node, &fsm.DeleteKey{Name: "s0", RequestID: [16]byte{1, 1}}, fsm.CodeOK)
	mustApply(t, tn.node, &fsm.CreateKey{Key: key("after", 50)}, fsm.CodeOK)
	want, _ := tn.fsm.ListKeys("")
	applied := tn.fsm.AppliedIndex()

	tn.restart()
	tn.waitLeader()
	if got, _ := tn.fsm.ListKeys(""); fmt.Sprint(got) != fmt.Sprint(want) || tn.fsm.AppliedIndex() != applied {
		t.Fatalf("after restart: %v applied %d; want %v applied %d", got, tn.fsm.AppliedIndex(), want, applied)
	}
	if tn.deletes.Load() != 1 {
		t.Fatalf("deletes = %d", tn.deletes.Load())
	}
	mustApply(t, tn.node, &fsm.CreateKey{Key: key("more", 51)}, fsm.CodeOK)
	want = append(want, "more")
	slices.Sort(want)

	// Lose the FSM's state entirely: raft must restore its snapshot on
	// start and replay the log after it.
	tn.stop()
	if err := os.RemoveAll(filepath.Join(tn.dir, "state")); err != nil {
		t.Fatal(err)
	}
	tn.start(true)
	tn.waitLeader()
	if err := tn.node.ReadBarrier(testContext(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	got, _ := tn.fsm.ListKeys("")
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("rebuilt FSM keys = %v, want %v", got, want)
	}
}

// TestStateMismatch: FSM state with an empty raft directory is refused.
func TestStateMismatch(t *testing.T) {
	tn := newTestNode(t, "n1", true, nil)
	tn.waitLeader()
	mustApply(t, tn.node, &fsm.CreateKey{Key: key("a", 1)}, fsm.CodeOK)
	tn.stop()
	if err := os.RemoveAll(filepath.Join(tn.dir, "raft")); err != nil {
		t.Fatal(err)
	}
	db, err := storage.Open(storage.Options{Dir: filepath.Join(tn.dir, "state"), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	f, _ := fsm.New(db, fsm.Config{Logger: quiet})
	_, err = Open(testContext(t, 5*time.Second), Config{NodeID: "n1", DataDir: tn.dir, BindAddr: "127.0.0.1:0", Bootstrap: true, Logger: quiet}, f)
	if !errors.Is(err, ErrStateMismatch) {
		t.Fatalf("Open = %v, want ErrStateMismatch", err)
	}
}

func TestConfig(t *testing.T) {
	db, err := storage.Open(storage.Options{InMemory: true, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	f, _ := fsm.New(db, fsm.Config{Logger: quiet})
	dir := t.TempDir()
	tests := []Config{
		{DataDir: dir, BindAddr: "127.0.0.1:0"},
		{NodeID: "x", BindAddr: "127.0.0.1:0"},
		{NodeID: "x", DataDir: dir},
		{NodeID: "x", DataDir: dir, BindAddr: "127.0.0.1:0", LeaderLeaseTimeout: time.Second}, // lease > heartbeat
		{NodeID: "x", DataDir: dir, BindAddr: "127.0.0.1:0", ElectionTimeout: 100 * time.Millisecond},
	}
	for i, cfg := range tests {
		cfg.Logger = quiet
		if n, err := Open(context.Background(), cfg, f); err == nil {
			n.Shutdown()
			t.Fatalf("Test %d: Open(%+v) succeeded", i, cfg)
		}
	}
	if _, err := Open(context.Background(), Config{NodeID: "x", DataDir: dir, BindAddr: "127.0.0.1:0"}, nil); err == nil {
		t.Fatal("Open(nil FSM) succeeded")
	}
	if err := raftValidDefaults(); err != nil {
		t.Fatal(err)
	}
}

func raftValidDefaults() error {
	c := DefaultConfig()
	c.NodeID = "x"
	_, err := c.raftConfig(newHCLog(quiet, "").(*hclogAdapter), false)
	return err
}

func TestShutdownIdempotent(t *testing.T) {
	tn := newTestNode(t, "n1", true, nil)
	tn.waitLeader()
	n := tn.node
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Apply(testContext(t, time.Second), &fsm.CreateKey{Key: key("a", 1)}); !errors.Is(err, ErrShutdown) && !errors.Is(err, ErrNoLeader) {
		t.Fatalf("Apply after Shutdown = %v", err)
	}
	if err := n.WaitLeader(testContext(t, time.Second)); err != nil && !errors.Is(err, ErrShutdown) {
		t.Fatalf("WaitLeader after Shutdown = %v", err)
	}
	_ = n.Status()
	_ = tn.db.Close()
	tn.node = nil
}
