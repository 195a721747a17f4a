package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsd/kmsd/cluster"
	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/health"
)

// fakeSchedClock is a manual schedClock: After channels fire on Advance.
type fakeSchedClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
	afters  int // After calls so far
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeSchedClock(t time.Time) *fakeSchedClock { return &fakeSchedClock{now: t} }

func (c *fakeSchedClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeSchedClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.afters++
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, fakeWaiter{c.now.Add(d), ch})
	return ch
}

// Advance moves the clock and fires every due waiter.
func (c *fakeSchedClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at.After(c.now) {
			kept = append(kept, w)
			continue
		}
		w.ch <- c.now
	}
	c.waiters = kept
}

// waitAfters waits (bounded) until After has been called n times: the
// scheduler's loop calls it once per wait, so the n-th call means the
// previous run has finished.
func (c *fakeSchedClock) waitAfters(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		got := c.afters
		c.mu.Unlock()
		if got >= n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("the scheduler did not wait for the %d-th time", n)
}

// raftNode is a real single-voter cluster.Node over an in-memory FSM: the
// writer scheduled snapshots use in production.
func raftNode(t *testing.T) *cluster.Node {
	t.Helper()
	f := memFSM(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	n, err := cluster.Open(t.Context(), cluster.Config{
		NodeID: "n1", DataDir: t.TempDir(), BindAddr: "127.0.0.1:0", Bootstrap: true, Logger: quiet,
	}, f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Shutdown() }) // before memFSM's storage closes (LIFO)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for !n.IsLeader() {
		if err := n.WaitLeader(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return n
}

func createKeys(t *testing.T, n *cluster.Node, prefix string, count int) {
	t.Helper()
	for i := range count {
		name := fmt.Sprintf("%s-%d", prefix, i)
		res, err := n.Apply(t.Context(), &fsm.CreateKey{Key: fsm.Key{
			Name: name, Algorithm: 1, Version: 1, Sealed: []byte("sealed-" + name),
			CreatedAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), CreatedBy: "tester", RequestID: [16]byte{byte(i), 1},
		}})
		if err != nil || res.Code != fsm.CodeOK {
			t.Fatalf("create %s: %+v, %v", name, res, err)
		}
	}
}

// snapMetrics gathers the scheduler's families, each one unlabelled sample.
func snapMetrics(t *testing.T, s *snapshotScheduler) map[string]float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(s)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if len(mf.GetMetric()) != 1 || len(mf.GetMetric()[0].GetLabel()) != 0 {
			t.Fatalf("%s: %v; want one unlabelled sample", mf.GetName(), mf.GetMetric())
		}
		m := mf.GetMetric()[0]
		got[mf.GetName()] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
	}
	return got
}

var n1Snap = regexp.MustCompile(`^kmsd-n1-\d{8}T\d{6}Z-\d+\.snap$`)

// ownSnaps lists node n1's snapshot files in dir, sorted.
func ownSnaps(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var m []string
	for _, e := range entries {
		if n1Snap.MatchString(e.Name()) {
			m = append(m, e.Name())
		}
	}
	slices.Sort(m)
	return m
}

func TestSnapshotScheduler(t *testing.T) {
	src := raftNode(t)
	createKeys(t, src, "a", 3)
	dir := filepath.Join(t.TempDir(), "snapshots") // created by the first run
	start := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	clock := newFakeSchedClock(start)
	log, logs := testLogger(t)
	s := newSnapshotScheduler(snapshotConfig{Dir: dir, Interval: time.Hour, Retention: 3}, "n1", src, clock, log)

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); s.loop(ctx) }()
	defer func() { cancel(); <-done }()

	clock.waitAfters(t, 1)
	if st, msg := s.check(ctx); st != health.OK {
		t.Fatalf("health before the first snapshot: %v %s", st, msg)
	}
	// The first snapshot is due snapshotStartDelay after the start.
	clock.Advance(snapshotStartDelay - time.Second)
	if files := ownSnaps(t, dir); len(files) != 0 {
		t.Fatalf("snapshot before it was due: %v", files)
	}
	clock.Advance(time.Second)
	clock.waitAfters(t, 2)
	files := ownSnaps(t, dir)
	index := src.Status().AppliedIndex
	want := fmt.Sprintf("kmsd-n1-20261122T100100Z-%d.snap", index)
	if len(files) != 1 || files[0] != want {
		t.Fatalf("files %v, want [%s]", files, want)
	}
	path := filepath.Join(dir, want)
	checkSnapshotFile(t, path, 3)

	m := snapMetrics(t, s)
	fi, _ := os.Stat(path)
	for name, v := range map[string]float64{
		"kmsd_snapshot_interval_seconds":               3600,
		"kmsd_snapshot_last_success_timestamp_seconds": float64(start.Add(time.Minute).Unix()),
		"kmsd_snapshot_last_size_bytes":                float64(fi.Size()),
		"kmsd_snapshot_failures_total":                 0,
		"kmsd_snapshot_failing":                        0,
		"kmsd_snapshot_age_seconds":                    0,
	} {
		if m[name] != v {
			t.Errorf("%s = %v, want %v", name, m[name], v)
		}
	}
	if m["kmsd_snapshot_last_duration_seconds"] <= 0 {
		t.Errorf("kmsd_snapshot_last_duration_seconds = %v", m["kmsd_snapshot_last_duration_seconds"])
	}
	if st, msg := s.check(ctx); st != health.OK || !strings.Contains(msg, want) {
		t.Errorf("health after a snapshot: %v %s", st, msg)
	}

	// Other files in the directory are never touched by retention.
	foreign := []string{"kmsd-n2-20200101T000000Z-1.snap", "kmsd-n1-b-20200101T000000Z-1.snap", "notes.txt", "kmsd-n1-old.snap"}
	for _, f := range foreign {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Four more intervals, with writes between: retention keeps 3.
	for i := range 4 {
		createKeys(t, src, fmt.Sprint("b", i), 1)
		clock.Advance(30 * time.Minute)
		if got := len(ownSnaps(t, dir)); got != min(i+1, 3) {
			t.Fatalf("%d snapshots after half an interval, want %d", got, min(i+1, 3))
		}
		clock.Advance(30 * time.Minute)
		clock.waitAfters(t, 3+i)
	}
	files = ownSnaps(t, dir)
	if len(files) != 3 || !strings.Contains(files[2], "T140100Z-") || !strings.Contains(files[0], "T120100Z-") {
		t.Fatalf("after retention: %v", files)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	for _, f := range foreign {
		if !slices.Contains(names, f) {
			t.Errorf("retention removed a foreign file %s", f)
		}
	}
	sidecars := 0
	for _, n := range names {
		if strings.HasSuffix(n, ".sha256") {
			sidecars++
			if !slices.Contains(files, strings.TrimSuffix(n, ".sha256")) {
				t.Errorf("orphan sidecar %s", n)
			}
		}
		if strings.HasPrefix(n, ".tmp-") {
			t.Errorf("temp file left: %s", n)
		}
	}
	if sidecars != 3 {
		t.Errorf("%d sidecars for %d snapshots: %v", sidecars, len(files), names)
	}
	newest := filepath.Join(dir, files[2])
	checkSnapshotFile(t, newest, 7)
	if !strings.Contains(logs.String(), "old scheduled snapshots removed") {
		t.Error("retention was not logged")
	}

	// A restart picks the newest file up: its age and the next due time.
	cancel()
	<-done
	tmpLeft := filepath.Join(dir, ".tmp-kmsd-n1-12345")
	otherTmp := filepath.Join(dir, ".tmp-kmsd-n1-b-12345")
	for _, p := range []string{tmpLeft, otherTmp} {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(20 * time.Minute)
	s2 := newSnapshotScheduler(snapshotConfig{Dir: dir, Interval: time.Hour, Retention: 3}, "n1", src, clock, log)
	s2.recover()
	if _, err := os.Stat(tmpLeft); !os.IsNotExist(err) {
		t.Errorf("a crashed write's temp file survived the restart: %v", err)
	}
	if _, err := os.Stat(otherTmp); err != nil {
		t.Errorf("another node's temp file was removed: %v", err)
	}
	last := start.Add(4*time.Hour + time.Minute)
	if due := s2.firstDue(); !due.Equal(last.Add(time.Hour)) {
		t.Errorf("first due after restart %v, want %v", due, last.Add(time.Hour))
	}
	if age := snapMetrics(t, s2)["kmsd_snapshot_age_seconds"]; age != 20*60 {
		t.Errorf("age after restart = %v, want 1200", age)
	}
}

// checkSnapshotFile checks a scheduled snapshot: it verifies, holds keys
// keys, its sidecar is valid for sha256sum -c and `kmsd snapshot verify`
// accepts both (and refuses a wrong sidecar).
func checkSnapshotFile(t *testing.T, path string, keys int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	info, err := fsm.VerifySnapshot(f)
	f.Close()
	if err != nil || info.Keys != keys {
		t.Fatalf("%s: %d keys, %v; want %d keys", path, info.Keys, err, keys)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v, %v; want 0600", path, fi.Mode(), err)
	}
	side, err := os.ReadFile(path + ".sha256")
	if err != nil {
		t.Fatal(err)
	}
	sum, name, ok := parseSHA256Line(string(side))
	if !ok || name != filepath.Base(path) || len(sum) != 64 {
		t.Fatalf("sidecar %q", side)
	}
	if bin, err := exec.LookPath("sha256sum"); err == nil {
		cmd := exec.Command(bin, "-c", filepath.Base(path)+".sha256")
		cmd.Dir = filepath.Dir(path)
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), ": OK") {
			t.Errorf("sha256sum -c: %v\n%s", err, out)
		}
	} else {
		t.Log("sha256sum not installed; sidecar checked by our own parser only")
	}
	var out bytes.Buffer
	if err := snapshotVerify(t.Context(), &out, []string{path}); err != nil || !strings.Contains(out.String(), "sidecar") {
		t.Errorf("snapshot verify: %v\n%s", err, out.String())
	}
}

func TestSnapshotSchedulerFailureAndRecovery(t *testing.T) {
	src := raftNode(t)
	createKeys(t, src, "k", 2)
	base := t.TempDir()
	parent := filepath.Join(base, "not-a-dir")
	if err := os.WriteFile(parent, []byte("a regular file"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(parent, "snapshots") // unusable, even for root
	clock := newFakeSchedClock(time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC))
	log, logs := testLogger(t)
	s := newSnapshotScheduler(snapshotConfig{Dir: dir, Interval: 10 * time.Minute, Retention: 2}, "n1", src, clock, log)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); s.loop(ctx) }()
	defer func() { cancel(); <-done }()

	clock.waitAfters(t, 1)
	clock.Advance(time.Minute)
	clock.waitAfters(t, 2)
	m := snapMetrics(t, s)
	if m["kmsd_snapshot_failures_total"] != 1 || m["kmsd_snapshot_failing"] != 1 || m["kmsd_snapshot_last_success_timestamp_seconds"] != 0 {
		t.Fatalf("metrics after a failure: %v", m)
	}
	if st, msg := s.check(ctx); st != health.Degraded || !strings.Contains(msg, "failed") {
		t.Fatalf("health after a failure: %v %s", st, msg)
	}
	if !strings.Contains(logs.String(), "scheduled snapshot failed") {
		t.Fatal("the failure was not logged")
	}
	// Still failing a retry later (a minute, not an interval).
	clock.Advance(time.Minute)
	clock.waitAfters(t, 3)
	if got := snapMetrics(t, s)["kmsd_snapshot_failures_total"]; got != 2 {
		t.Fatalf("failures after the retry = %v, want 2", got)
	}
	// The operator fixes the directory: the next retry succeeds.
	if err := os.Remove(parent); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	clock.waitAfters(t, 4)
	m = snapMetrics(t, s)
	if m["kmsd_snapshot_failures_total"] != 2 || m["kmsd_snapshot_failing"] != 0 || m["kmsd_snapshot_last_success_timestamp_seconds"] == 0 {
		t.Fatalf("metrics after recovery: %v", m)
	}
	if st, msg := s.check(ctx); st != health.OK {
		t.Fatalf("health after recovery: %v %s", st, msg)
	}
	if files := ownSnaps(t, dir); len(files) != 1 {
		t.Fatalf("files after recovery: %v", files)
	}
}

func TestSnapshotHealth(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		interval time.Duration
		started  time.Time
		success  time.Time
		err      error
		want     health.Status
	}{
		{"disabled", -1, now.Add(-48 * time.Hour), time.Time{}, nil, health.OK},
		{"fresh start", time.Hour, now.Add(-time.Minute), time.Time{}, nil, health.OK},
		{"none for 2 intervals", time.Hour, now.Add(-2*time.Hour - time.Second), time.Time{}, nil, health.Degraded},
		{"recent", time.Hour, now.Add(-5 * time.Hour), now.Add(-time.Hour), nil, health.OK},
		{"just within 2 intervals", time.Hour, now.Add(-5 * time.Hour), now.Add(-2 * time.Hour), nil, health.OK},
		{"too old", time.Hour, now.Add(-5 * time.Hour), now.Add(-2*time.Hour - time.Second), nil, health.Degraded},
		{"last attempt failed", time.Hour, now.Add(-5 * time.Hour), now.Add(-time.Minute), os.ErrPermission, health.Degraded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newSnapshotScheduler(snapshotConfig{Dir: t.TempDir(), Interval: tc.interval, Retention: 1}, "n1", nil, newFakeSchedClock(now), slog.New(slog.DiscardHandler))
			s.started, s.lastSuccess, s.lastErr = tc.started, tc.success, tc.err
			st, msg := s.check(t.Context())
			if st != tc.want {
				t.Errorf("check = %v %q, want %v", st, msg, tc.want)
			}
			if st == health.Fail {
				t.Error("the snapshots check must never fail readiness")
			}
		})
	}
}

func TestSnapshotsDisabled(t *testing.T) {
	clock := newFakeSchedClock(time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC))
	s := newSnapshotScheduler(snapshotConfig{Dir: t.TempDir(), Interval: -1, Retention: 1}, "n1", nil, clock, slog.New(slog.DiscardHandler))
	done := make(chan struct{})
	go func() { defer close(done); s.loop(t.Context()) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a disabled scheduler's loop did not return")
	}
	if m := snapMetrics(t, s); m["kmsd_snapshot_interval_seconds"] != 0 || m["kmsd_snapshot_age_seconds"] != 0 {
		t.Fatalf("metrics when disabled: %v", m)
	}
}

func TestParseSHA256Line(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	tests := []struct {
		line, name string
		ok         bool
	}{
		{sum + "  kmsd-n1-x.snap\n", "kmsd-n1-x.snap", true},
		{sum + " *kmsd-n1-x.snap\n", "kmsd-n1-x.snap", true},
		{strings.ToUpper(sum) + "  f\n", "f", true},
		{sum + "  f", "f", true},
		{sum + " f\n", "", false},
		{sum + "  \n", "", false},
		{sum[:62] + "  f\n", "", false},
		{strings.Repeat("zz", 32) + "  f\n", "", false},
		{sum + "  f\n" + sum + "  g\n", "", false},
	}
	for _, tc := range tests {
		_, name, ok := parseSHA256Line(tc.line)
		if ok != tc.ok || name != tc.name {
			t.Errorf("parseSHA256Line(%q) = %q, %v; want %q, %v", tc.line, name, ok, tc.name, tc.ok)
		}
	}
}

func TestSnapshotVerifySidecarMismatch(t *testing.T) {
	f := memFSM(t)
	path := writeSnapshot(t, f)
	name := filepath.Base(path)
	for _, tc := range []struct {
		name, sidecar, want string
	}{
		{"wrong sum", strings.Repeat("00", 32) + "  " + name + "\n", "checksum mismatch"},
		{"wrong name", strings.Repeat("00", 32) + "  other.snap\n", "names"},
		{"garbage", "hello\n", "sha256sum format"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(path+".sha256", []byte(tc.sidecar), 0o600); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			err := snapshotVerify(t.Context(), &out, []string{path})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(out.String(), "FAILED") {
				t.Fatalf("verify with a bad sidecar: %v\n%s", err, out.String())
			}
		})
	}
	os.Remove(path + ".sha256")
	var out bytes.Buffer
	if err := snapshotVerify(t.Context(), &out, []string{path}); err != nil || strings.Contains(out.String(), "sidecar") {
		t.Fatalf("verify without a sidecar: %v\n%s", err, out.String())
	}
}

// TestSnapshotFirstDue: the first snapshot after a start is due an
// interval after the newest file of this node, a minute after the start
// without one, and never more than an interval away (a file named in the
// future, written while the clock was ahead, must not stop the schedule).
func TestSnapshotFirstDue(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		newest time.Time // zero: no file
		want   time.Time
	}{
		{"no snapshot yet", time.Time{}, now.Add(snapshotStartDelay)},
		{"recent snapshot", now.Add(-20 * time.Minute), now.Add(40 * time.Minute)},
		{"overdue snapshot", now.Add(-5 * time.Hour), now.Add(-4 * time.Hour)},
		{"snapshot named in the future", now.Add(30 * 24 * time.Hour), now.Add(time.Hour)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if !tc.newest.IsZero() {
				name := fmt.Sprintf("kmsd-n1-%s-7.snap", tc.newest.Format(snapshotTimeLayout))
				if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			s := newSnapshotScheduler(snapshotConfig{Dir: dir, Interval: time.Hour, Retention: 2}, "n1", nil, newFakeSchedClock(now), slog.New(slog.DiscardHandler))
			s.recover()
			if got := s.firstDue(); !got.Equal(tc.want) {
				t.Errorf("firstDue = %s, want %s", got, tc.want)
			}
		})
	}
}
