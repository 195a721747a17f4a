package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsd/kmsd/api"
	"github.com/kmsd/kmsd/health"
	"github.com/kmsd/kmsd/internal/logfile"
)

func logTestNode(t *testing.T, cfg *fileConfig) *node {
	t.Helper()
	n := &node{health: health.NewRegistry(nil), reg: prometheus.NewRegistry()}
	if err := n.openLogs(cfg, api.NewErrorStream(nil)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.logs.close)
	return n
}

func checkOf(t *testing.T, n *node, name string) health.Check {
	t.Helper()
	for _, c := range n.health.Report(context.Background()).Checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no %q check registered", name)
	return health.Check{}
}

// gauge reads one unlabelled sample from the node's registry.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		if len(f.Metric) != 1 || len(f.Metric[0].Label) != 0 {
			t.Fatalf("%s has %d samples (labels %v); kms-go needs one unlabelled sample", name, len(f.Metric), f.Metric[0].Label)
		}
		m := f.Metric[0]
		if m.Counter != nil {
			return m.Counter.GetValue()
		}
		return m.Gauge.GetValue()
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The audit and error-log files get NDJSON; the checks and metrics
// follow the sinks' health, audit failing readiness, error_log only
// degrading it.
func TestOpenLogs(t *testing.T) {
	dir := t.TempDir()
	cfg := &fileConfig{}
	cfg.Log.Error, cfg.Log.Audit = "WARN", "off"
	cfg.Audit.File = filepath.Join(dir, "audit", "audit.log")
	cfg.Audit.OnFailure, cfg.Audit.MaxWait = "continue", 100*time.Millisecond
	cfg.ErrorLog.File = filepath.Join(dir, "error.log")
	n := logTestNode(t, cfg)

	n.log.Info("below the level")
	n.log.Error("disk on fire", "detail", 42)
	sink := n.logs.auditSink()
	if sink == nil || !sink.Enqueue([]byte(`{"request":{"path":"/v1/key/create/k"}}`+"\n"), 0) {
		t.Fatal("the audit sink refused an event")
	}
	waitFor(t, "both files are written", func() bool {
		a, _ := os.ReadFile(cfg.Audit.File)
		e, _ := os.ReadFile(cfg.ErrorLog.File)
		return len(a) > 0 && len(e) > 0
	})
	errLog, _ := os.ReadFile(cfg.ErrorLog.File)
	var rec map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(errLog), &rec); err != nil {
		t.Fatalf("error log %q is not one JSON record: %v", errLog, err)
	}
	if rec["level"] != "ERROR" || rec["msg"] != "disk on fire" || rec["detail"] != float64(42) {
		t.Errorf("error log record %v", rec)
	}
	for _, name := range []string{"audit", "error_log"} {
		if c := checkOf(t, n, name); c.Status != health.OK {
			t.Errorf("%s check %+v while the files are writable", name, c)
		}
	}
	if v := gauge(t, n.reg, "kmsd_audit_events_total"); v != 1 {
		t.Errorf("kmsd_audit_events_total = %v, want 1", v)
	}
	if v := gauge(t, n.reg, "kmsd_audit_healthy"); v != 1 {
		t.Errorf("kmsd_audit_healthy = %v, want 1", v)
	}

	// Both files become unwritable (root too): their directories turn
	// into regular files and the files vanish; the path check notices
	// within a second.
	for _, p := range []string{cfg.Audit.File, cfg.ErrorLog.File} {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.RemoveAll(filepath.Dir(cfg.Audit.File)); err != nil {
		t.Fatal(err)
	}
	mustOK(t, os.WriteFile(filepath.Dir(cfg.Audit.File), nil, 0o600))
	mustOK(t, os.Mkdir(cfg.ErrorLog.File, 0o700)) // the error log path is now a directory
	time.Sleep(1100 * time.Millisecond)
	sink.Enqueue([]byte("{}\n"), 0)
	n.log.Error("another error")
	waitFor(t, "the audit check fails", func() bool { return checkOf(t, n, "audit").Status == health.Fail })
	waitFor(t, "the error_log check degrades", func() bool { return checkOf(t, n, "error_log").Status == health.Degraded })
	if c := checkOf(t, n, "audit"); !strings.Contains(c.Message, "not a directory") || !strings.Contains(c.Message, "on_failure: continue") {
		t.Errorf("audit check message %q should name the error and the policy", c.Message)
	}
	if c := checkOf(t, n, "error_log"); !strings.Contains(c.Message, "is a directory") {
		t.Errorf("error_log check message %q should name the error", c.Message)
	}
	if r := n.health.Report(context.Background()); r.Ready {
		t.Error("the node reports ready while its audit file fails")
	}
	if v := gauge(t, n.reg, "kmsd_audit_healthy"); v != 0 {
		t.Errorf("kmsd_audit_healthy = %v while failing", v)
	}
	if v := gauge(t, n.reg, "kmsd_error_log_write_errors_total"); v < 1 {
		t.Errorf("kmsd_error_log_write_errors_total = %v", v)
	}

	// Fixed: both recover by themselves.
	mustOK(t, os.Remove(filepath.Dir(cfg.Audit.File)))
	mustOK(t, os.Remove(cfg.ErrorLog.File))
	waitFor(t, "both checks recover", func() bool {
		return checkOf(t, n, "audit").Status == health.OK && checkOf(t, n, "error_log").Status == health.OK
	})
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// Without files every family still has its one sample, and the checks
// pass.
func TestOpenLogsUnconfigured(t *testing.T) {
	cfg := &fileConfig{}
	cfg.Log.Error, cfg.Log.Audit = "INFO", "off"
	n := logTestNode(t, cfg)
	if n.logs.auditSink() != nil {
		t.Error("an audit sink without audit.file or log.audit")
	}
	for _, name := range []string{"kmsd_audit_events_total", "kmsd_audit_events_lost_total", "kmsd_audit_write_errors_total",
		"kmsd_error_log_events_total", "kmsd_error_log_events_lost_total", "kmsd_error_log_write_errors_total", "kmsd_audit_stdout_events_lost_total"} {
		if v := gauge(t, n.reg, name); v != 0 {
			t.Errorf("%s = %v", name, v)
		}
	}
	for _, name := range []string{"kmsd_audit_healthy", "kmsd_error_log_healthy"} {
		if v := gauge(t, n.reg, name); v != 1 {
			t.Errorf("%s = %v", name, v)
		}
	}
	if r := n.health.Report(context.Background()); !r.Ready || len(r.Failing()) != 0 {
		t.Errorf("report %+v", r)
	}
	n.reopenLogs() // no files: a no-op
}

// The log.audit stdout copy never decides the audit policy: with only the
// copy, the API's sink is always healthy and accepts every event; with a
// file, the file's health is what counts.
func TestTeeSink(t *testing.T) {
	var out syncBuf
	cp, err := logfile.New(logfile.Options{Writer: &out})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Close(context.Background()) })
	tee := teeSink{copy: cp}
	if !tee.Healthy() || !tee.Enqueue([]byte("{\"a\":1}\n"), 0) {
		t.Error("a copy-only tee refused an event or reported unhealthy")
	}
	waitFor(t, "the copy is written", func() bool { return out.String() == "{\"a\":1}\n" })

	file, err := logfile.New(logfile.Options{Path: filepath.Join(t.TempDir(), "audit.log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = file.Close(context.Background()) })
	tee = teeSink{primary: file, copy: cp}
	if !tee.Enqueue([]byte("{\"b\":2}\n"), 0) || !tee.Healthy() {
		t.Error("the tee refused an event for a writable file")
	}
	waitFor(t, "both get the event", func() bool {
		return strings.Contains(out.String(), `{"b":2}`) && file.Stats().Written == 1
	})
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
