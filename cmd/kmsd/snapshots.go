package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/health"
)

// Scheduled local snapshots (the `snapshot:` config section). Every node
// writes its own snapshot of the replicated state every interval into
// snapshot.dir, with the writer of `kmsd snapshot save`
// (cluster.Node.WriteSnapshot: key material stays sealed under the REK):
//
//	kmsd-<node>-<UTC yyyymmddThhmmssZ>-<raft index>.snap
//	kmsd-<node>-<UTC yyyymmddThhmmssZ>-<raft index>.snap.sha256  (sha256sum -c format)
//
// A snapshot is written to a temp file, fsynced, verified from disk
// (fsm.VerifySnapshot), renamed into place, then its sidecar likewise,
// then the directory is fsynced. Retention keeps the newest N snapshots
// of this node; only this node's own file names are ever deleted.
// Failures are logged and counted, never fatal; the "snapshots" health
// check turns Degraded.

const (
	snapshotTimeLayout = "20060102T150405Z"
	// snapshotStartDelay is the wait before the first snapshot of a node
	// with none in the directory (capped by the interval): long enough for
	// a leader to be elected after a start.
	snapshotStartDelay = time.Minute
	// snapshotRetry is the wait after a failed attempt (capped by the
	// interval), so a passing problem (no leader) is not an interval long.
	snapshotRetry = time.Minute
)

// snapshotWriter is what the scheduler needs of *cluster.Node.
type snapshotWriter interface {
	WriteSnapshot(ctx context.Context, w io.Writer) (fsm.SnapshotInfo, error)
}

// schedClock is the scheduler's time source; tests use a fake.
type schedClock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realSchedClock struct{}

func (realSchedClock) Now() time.Time                         { return time.Now() }
func (realSchedClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// snapshotScheduler writes the scheduled snapshots and keeps their
// state for the metrics and the health check. Its methods are safe for
// concurrent use; run runs once at a time.
type snapshotScheduler struct {
	dir       string
	node      string // node id as used in file names
	interval  time.Duration
	retention int // 0 keeps every file
	src       snapshotWriter
	clock     schedClock
	log       *slog.Logger
	own       *regexp.Regexp // this node's snapshot file names
	ownTmp    *regexp.Regexp // this node's temp files (write, writeFileAtomic)

	mu           sync.Mutex
	started      time.Time
	lastSuccess  time.Time // zero: none (in this directory)
	lastFile     string
	lastIndex    uint64
	lastSize     int64
	lastDuration time.Duration
	lastErr      error // of the latest attempt; nil after a success
	lastAttempt  time.Time
	failures     uint64
}

// newSnapshotScheduler returns a scheduler for node's snapshots with cfg
// (interval <= 0: disabled). clock nil = real time.
func newSnapshotScheduler(cfg snapshotConfig, node string, src snapshotWriter, clock schedClock, log *slog.Logger) *snapshotScheduler {
	if clock == nil {
		clock = realSchedClock{}
	}
	safe := fileSafe(node)
	return &snapshotScheduler{
		dir: cfg.Dir, node: safe, interval: cfg.Interval, retention: cfg.Retention,
		src: src, clock: clock, log: log.With("component", "snapshots"),
		own:     regexp.MustCompile(`^kmsd-` + regexp.QuoteMeta(safe) + `-(\d{8}T\d{6}Z)-(\d+)\.snap$`),
		ownTmp:  regexp.MustCompile(`^\.tmp-kmsd-` + regexp.QuoteMeta(safe) + `-(\d+|\d{8}T\d{6}Z-\d+\.snap\.sha256\d+)$`),
		started: clock.Now(),
	}
}

// fileSafe maps a node id to a file-name fragment: anything but
// [A-Za-z0-9._-] becomes '_'.
func fileSafe(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			return r
		}
		return '_'
	}, s)
}

func (s *snapshotScheduler) enabled() bool { return s.interval > 0 }

// loop writes a snapshot every interval until ctx ends. The first one is
// due an interval after the newest existing snapshot of this node (so a
// restart neither skips nor doubles one), or snapshotStartDelay after the
// start when there is none; after a failure the next attempt comes
// snapshotRetry later. Each attempt is bounded by max(interval, 1 min).
func (s *snapshotScheduler) loop(ctx context.Context) {
	if !s.enabled() {
		return
	}
	s.recover()
	next := s.firstDue()
	for {
		wait := max(next.Sub(s.clock.Now()), 0)
		select {
		case <-ctx.Done():
			return
		case <-s.clock.After(wait):
		}
		actx, cancel := context.WithTimeout(ctx, max(s.interval, time.Minute))
		err := s.run(actx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		now := s.clock.Now()
		if err != nil {
			next = now.Add(min(s.interval, snapshotRetry))
		} else {
			next = now.Add(s.interval)
		}
	}
}

// firstDue is when the first snapshot after a start is due: never more
// than an interval away, even when the newest file's name is in the
// future (written while the clock was ahead, before it was corrected).
func (s *snapshotScheduler) firstDue() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	if s.lastSuccess.IsZero() {
		return now.Add(min(s.interval, snapshotStartDelay))
	}
	return minTime(s.lastSuccess.Add(s.interval), now.Add(s.interval))
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// recover reads the newest existing snapshot of this node (its time from
// the name, so age and health survive a restart) and removes temp files
// a crash left behind.
func (s *snapshotScheduler) recover() {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return // created by the first run
	}
	for _, e := range entries {
		if s.ownTmp.MatchString(e.Name()) && e.Type().IsRegular() {
			_ = os.Remove(filepath.Join(s.dir, e.Name()))
		}
	}
	files := s.ownFiles(entries)
	if len(files) == 0 {
		return
	}
	newest := files[len(files)-1]
	m := s.own.FindStringSubmatch(newest)
	at, err := time.Parse(snapshotTimeLayout, m[1])
	if err != nil {
		return
	}
	idx, _ := strconv.ParseUint(m[2], 10, 64)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastSuccess, s.lastFile, s.lastIndex = at, filepath.Join(s.dir, newest), idx
	if fi, err := os.Stat(s.lastFile); err == nil {
		s.lastSize = fi.Size()
	}
}

// ownFiles returns this node's snapshot file names among entries, oldest
// first (the UTC time in the name sorts lexically; the index breaks ties).
func (s *snapshotScheduler) ownFiles(entries []os.DirEntry) []string {
	var files []string
	for _, e := range entries {
		if e.Type().IsRegular() && s.own.MatchString(e.Name()) {
			files = append(files, e.Name())
		}
	}
	slices.SortFunc(files, func(a, b string) int {
		ma, mb := s.own.FindStringSubmatch(a), s.own.FindStringSubmatch(b)
		if c := strings.Compare(ma[1], mb[1]); c != 0 {
			return c
		}
		ia, _ := strconv.ParseUint(ma[2], 10, 64)
		ib, _ := strconv.ParseUint(mb[2], 10, 64)
		return cmpUint(ia, ib)
	})
	return files
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// run takes one snapshot, applies retention and records the outcome.
func (s *snapshotScheduler) run(ctx context.Context) error {
	at := s.clock.Now().UTC()
	start := time.Now()
	path, info, size, err := s.write(ctx, at)
	d := time.Since(start)
	s.mu.Lock()
	s.lastAttempt, s.lastDuration, s.lastErr = at, d, err
	if err != nil {
		s.failures++
	} else {
		s.lastSuccess, s.lastFile, s.lastIndex, s.lastSize = at, path, info.Index, size
	}
	s.mu.Unlock()
	if err != nil {
		s.log.Error("kmsd: scheduled snapshot failed", "dir", s.dir, "err", err)
		return err
	}
	s.log.Info("kmsd: scheduled snapshot written", "file", path, "index", info.Index, "keys", info.Keys,
		"bytes", size, "duration", d.Round(time.Millisecond).String())
	if err := s.prune(); err != nil {
		s.log.Error("kmsd: snapshot retention", "dir", s.dir, "err", err)
	}
	return nil
}

// write writes one snapshot file and its sidecar atomically (temp file,
// fsync, verify, rename; directory fsync).
func (s *snapshotScheduler) write(ctx context.Context, at time.Time) (string, fsm.SnapshotInfo, int64, error) {
	var info fsm.SnapshotInfo
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return "", info, 0, fmt.Errorf("snapshot: %w", err)
	}
	tmp, err := os.CreateTemp(s.dir, ".tmp-kmsd-"+s.node+"-*")
	if err != nil {
		return "", info, 0, fmt.Errorf("snapshot: %w", err)
	}
	defer os.Remove(tmp.Name()) // a no-op after the rename
	defer tmp.Close()
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(tmp, h)}
	if info, err = s.src.WriteSnapshot(ctx, cw); err != nil {
		return "", info, 0, err
	}
	if err := tmp.Sync(); err != nil {
		return "", info, 0, fmt.Errorf("snapshot: %w", err)
	}
	// Verify what is on disk, not what was sent.
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return "", info, 0, fmt.Errorf("snapshot: %w", err)
	}
	if _, err := fsm.VerifySnapshot(tmp); err != nil {
		return "", info, 0, fmt.Errorf("snapshot: the written file does not verify: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", info, 0, fmt.Errorf("snapshot: %w", err)
	}
	name := fmt.Sprintf("kmsd-%s-%s-%d.snap", s.node, at.Format(snapshotTimeLayout), info.Index)
	path := filepath.Join(s.dir, name)
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", info, 0, fmt.Errorf("snapshot: %w", err)
	}
	sum := hex.EncodeToString(h.Sum(nil)) + "  " + name + "\n"
	if err := writeFileAtomic(path+".sha256", []byte(sum), 0o600); err != nil {
		return "", info, 0, fmt.Errorf("snapshot: checksum file: %w", err)
	}
	if err := syncDir(s.dir); err != nil {
		return "", info, 0, fmt.Errorf("snapshot: %w", err)
	}
	return path, info, cw.n, nil
}

// prune deletes this node's snapshots beyond the newest retention ones
// (and their sidecars), and sidecars whose snapshot is gone.
func (s *snapshotScheduler) prune() error {
	if s.retention <= 0 {
		return nil
	}
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	files := s.ownFiles(entries)
	keep := map[string]bool{}
	for _, f := range files[max(len(files)-s.retention, 0):] {
		keep[f] = true
	}
	var errs []error
	removed := 0
	for _, e := range entries {
		name := e.Name()
		snap := strings.TrimSuffix(name, ".sha256")
		if !e.Type().IsRegular() || !s.own.MatchString(snap) || keep[snap] {
			continue
		}
		if err := os.Remove(filepath.Join(s.dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed++
	}
	if removed > 0 {
		if err := syncDir(s.dir); err != nil {
			errs = append(errs, err)
		}
		s.log.Info("kmsd: old scheduled snapshots removed", "files", removed, "kept", len(keep))
	}
	return errors.Join(errs...)
}

// check is the "snapshots" health check (readiness). It never fails:
// a missing backup is for an operator, not a reason to stop serving.
func (s *snapshotScheduler) check(context.Context) (health.Status, string) {
	if !s.enabled() {
		return health.OK, "scheduled snapshots are disabled"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	switch {
	case s.lastErr != nil:
		return health.Degraded, fmt.Sprintf("the last scheduled snapshot (%s) failed: %v", s.lastAttempt.Format(time.RFC3339), s.lastErr)
	case s.lastSuccess.IsZero() && now.Sub(s.started) > 2*s.interval:
		return health.Degraded, fmt.Sprintf("no scheduled snapshot since the start %s ago (interval %s)", now.Sub(s.started).Round(time.Second), s.interval)
	case s.lastSuccess.IsZero():
		return health.OK, "no scheduled snapshot yet"
	case now.Sub(s.lastSuccess) > 2*s.interval:
		return health.Degraded, fmt.Sprintf("the last scheduled snapshot %s is %s old (interval %s)", s.lastFile, now.Sub(s.lastSuccess).Round(time.Second), s.interval)
	}
	return health.OK, fmt.Sprintf("last snapshot %s (index %d, %d bytes)", s.lastFile, s.lastIndex, s.lastSize)
}

// countWriter counts the bytes written through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// syncDir fsyncs a directory, making renames and removals in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

var (
	descSnapInterval = prometheus.NewDesc("kmsd_snapshot_interval_seconds",
		"Configured interval of scheduled snapshots (0: disabled).", nil, nil)
	descSnapSuccess = prometheus.NewDesc("kmsd_snapshot_last_success_timestamp_seconds",
		"Unix time of this node's last successful scheduled snapshot (0: none).", nil, nil)
	descSnapSize = prometheus.NewDesc("kmsd_snapshot_last_size_bytes",
		"Size of the last successful scheduled snapshot file.", nil, nil)
	descSnapDuration = prometheus.NewDesc("kmsd_snapshot_last_duration_seconds",
		"Duration of the last scheduled snapshot attempt (write, fsync, verify, rename).", nil, nil)
	descSnapFailures = prometheus.NewDesc("kmsd_snapshot_failures_total",
		"Scheduled snapshot attempts that failed.", nil, nil)
	descSnapFailing = prometheus.NewDesc("kmsd_snapshot_failing",
		"1 while the latest scheduled snapshot attempt failed, else 0.", nil, nil)
	descSnapAge = prometheus.NewDesc("kmsd_snapshot_age_seconds",
		"Seconds since the last successful scheduled snapshot; since the start when there is none; 0 when disabled.", nil, nil)
)

func (s *snapshotScheduler) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSnapInterval, descSnapSuccess, descSnapSize, descSnapDuration, descSnapFailures, descSnapFailing, descSnapAge} {
		ch <- d
	}
}

func (s *snapshotScheduler) Collect(ch chan<- prometheus.Metric) {
	s.mu.Lock()
	defer s.mu.Unlock()
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	now := s.clock.Now()
	interval, success, age, failing := 0.0, 0.0, 0.0, 0.0
	if s.enabled() {
		interval = s.interval.Seconds()
		age = now.Sub(s.started).Seconds()
	}
	if !s.lastSuccess.IsZero() {
		success = float64(s.lastSuccess.UnixMilli()) / 1e3
		age = max(now.Sub(s.lastSuccess).Seconds(), 0)
	}
	if s.lastErr != nil {
		failing = 1
	}
	gauge(descSnapInterval, interval)
	gauge(descSnapSuccess, success)
	gauge(descSnapSize, float64(s.lastSize))
	gauge(descSnapDuration, s.lastDuration.Seconds())
	ch <- prometheus.MustNewConstMetric(descSnapFailures, prometheus.CounterValue, float64(s.failures))
	gauge(descSnapFailing, failing)
	gauge(descSnapAge, age)
}

// startSnapshots registers the scheduler's metrics and health check and
// starts its loop (a no-op loop when disabled). The returned function
// stops the loop and waits for it, e.g. before raft and badger close.
func (n *node) startSnapshots(ctx context.Context) (stop func()) {
	cfg := n.cfg.Load()
	s := newSnapshotScheduler(cfg.Snapshot, cfg.Cluster.NodeID, n.raft, nil, n.log)
	n.reg.MustRegister(s)
	n.health.Register("snapshots", health.Readiness, s.check)
	if s.enabled() {
		n.log.Info("kmsd: scheduled snapshots", "dir", s.dir, "interval", s.interval.String(), "retention", s.retention)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.loop(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}
