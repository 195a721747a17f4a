package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsd/kmsd/api"
	"github.com/kmsd/kmsd/health"
	"github.com/kmsd/kmsd/internal/logfile"
)

// logSinks are the node's asynchronous log outputs (internal/logfile):
// the audit file, the error-log file and the KES-style audit copy on
// stdout. Each is nil when not configured. None of them can block a
// request or a log call.
type logSinks struct {
	audit    *logfile.Sink // audit.file
	errorLog *logfile.Sink // error_log.file
	stdout   *logfile.Sink // log.audit: on

	auditFile, errorFile string
	policy               string // audit.on_failure
	maxWait              time.Duration

	// log is the server logger, set once it exists: the sinks are made
	// before it (the error-log sink is one of its outputs).
	log atomic.Pointer[slog.Logger]
}

// openLogs builds the server logger — slog text on stderr plus, with
// error_log.file, NDJSON into the error-log sink; both wrapped by es for
// /v1/log/error — and the audit sinks; registers the "audit" and
// "error_log" checks and the kmsd_audit_* / kmsd_error_log_* metrics.
func (n *node) openLogs(cfg *fileConfig, es *api.ErrorStream) error {
	ls := &logSinks{
		auditFile: cfg.Audit.File,
		errorFile: cfg.ErrorLog.File,
		policy:    cfg.Audit.OnFailure,
		maxWait:   cfg.Audit.MaxWait,
	}
	var err error
	if cfg.Audit.File != "" {
		if ls.audit, err = logfile.New(logfile.Options{Path: cfg.Audit.File, OnChange: ls.report("audit file", cfg.Audit.File)}); err != nil {
			return fmt.Errorf("audit.file: %w", err)
		}
	}
	if cfg.ErrorLog.File != "" {
		if ls.errorLog, err = logfile.New(logfile.Options{Path: cfg.ErrorLog.File, OnChange: ls.report("error log file", cfg.ErrorLog.File)}); err != nil {
			ls.close()
			return fmt.Errorf("error_log.file: %w", err)
		}
	}
	if lvl, _ := parseLevel(cfg.Log.Audit); lvl <= slog.LevelInfo {
		if ls.stdout, err = logfile.New(logfile.Options{Writer: os.Stdout, OnChange: ls.report("audit stdout", "stdout")}); err != nil {
			ls.close()
			return fmt.Errorf("log.audit: %w", err)
		}
	}

	level, _ := parseLevel(cfg.Log.Error)
	n.logLevel.Set(level)
	opts := &slog.HandlerOptions{Level: &n.logLevel}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if ls.errorLog != nil {
		// The sink's Write never blocks and never fails: a record that
		// does not fit is counted in kmsd_error_log_events_lost_total.
		h = slog.NewMultiHandler(h, slog.NewJSONHandler(ls.errorLog, opts))
	}
	n.log = slog.New(es.Wrap(h))
	ls.log.Store(n.log)
	n.logs = ls

	n.health.Register("audit", health.Readiness, ls.auditCheck)
	n.health.Register("error_log", health.Readiness, ls.errorLogCheck)
	if err := n.reg.Register(logCollector{ls}); err != nil {
		ls.close()
		return fmt.Errorf("server: log metrics: %w", err)
	}
	return nil
}

// report returns an OnChange callback that logs a sink's transitions.
// A failure of the error-log sink is logged into that sink as well: the
// line is lost there (and counted), but reaches stderr and /v1/log/error.
func (ls *logSinks) report(what, target string) func(logfile.State) {
	return func(st logfile.State) {
		log := ls.log.Load()
		if log == nil {
			return
		}
		// The change may be noticed on a request's path (Healthy under
		// audit.on_failure: reject); logging to a blocked stderr must not
		// hold that request. "at" orders the lines if two cross.
		at := time.Now().UTC()
		go func() {
			if st.Healthy {
				log.Info("kmsd: "+what+" is writable again", "file", target, "at", at)
				return
			}
			log.Error("kmsd: "+what+" is failing; events are counted as lost until it recovers", "file", target, "err", st.Err, "at", at)
		}()
	}
}

// auditSink is what the API writes audit events to: the audit file
// (governed by audit.on_failure) plus, best effort, the stdout copy.
// Nil when neither is configured.
func (ls *logSinks) auditSink() api.AuditSink {
	if ls == nil || (ls.audit == nil && ls.stdout == nil) {
		return nil
	}
	return teeSink{primary: ls.audit, copy: ls.stdout}
}

// teeSink sends each event to primary (with the caller's wait) and to
// copy (never waiting). Only primary's health counts: the stdout copy is
// KES compatibility, not the audit trail.
type teeSink struct{ primary, copy *logfile.Sink }

func (t teeSink) Enqueue(line []byte, wait time.Duration) bool {
	if t.copy != nil {
		t.copy.Enqueue(line, 0)
	}
	if t.primary == nil {
		return true
	}
	return t.primary.Enqueue(line, wait)
}

func (t teeSink) Healthy() bool { return t.primary == nil || t.primary.Healthy() }

// auditCheck: Fail while the audit file is failing or stalled, so load
// balancers move traffic to nodes that can audit (both policies).
func (ls *logSinks) auditCheck(context.Context) (health.Status, string) {
	if ls.audit == nil {
		return health.OK, "no audit file configured"
	}
	st := ls.audit.State()
	if st.Healthy {
		return health.OK, ""
	}
	return health.Fail, fmt.Sprintf("audit file %s failing since %s (on_failure: %s; %d events lost): %v",
		ls.auditFile, st.Since.UTC().Format(time.RFC3339), ls.policy, ls.audit.Stats().Lost, st.Err)
}

// errorLogCheck: Degraded (still ready) while the error-log file fails.
func (ls *logSinks) errorLogCheck(context.Context) (health.Status, string) {
	if ls.errorLog == nil {
		return health.OK, "no error log file configured"
	}
	st := ls.errorLog.State()
	if st.Healthy {
		return health.OK, ""
	}
	return health.Degraded, fmt.Sprintf("error log file %s failing since %s (%d records lost): %v",
		ls.errorFile, st.Since.UTC().Format(time.RFC3339), ls.errorLog.Stats().Lost, st.Err)
}

// reopen reopens the files (SIGHUP, after logrotate moved them). It does
// not wait for the writers.
func (ls *logSinks) reopen() {
	if ls == nil {
		return
	}
	for _, s := range []*logfile.Sink{ls.audit, ls.errorLog} {
		if s != nil {
			s.Reopen()
		}
	}
}

// close drains the sinks, at most 2 s each (the error log last, so the
// audit sink's final failures still reach it).
func (ls *logSinks) close() {
	if ls == nil {
		return
	}
	for _, s := range []*logfile.Sink{ls.audit, ls.stdout, ls.errorLog} {
		if s == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := s.Close(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "kmsd: %v\n", err)
		}
		cancel()
	}
}

// reopenLogs is the SIGHUP hook.
func (n *node) reopenLogs() { n.logs.reopen() }

// logCollector exports the sinks' counters, one unlabelled sample per
// family (kms-go's Metrics() rejects anything else). An unconfigured sink
// reports zeros and healthy.
type logCollector struct{ ls *logSinks }

var logDescs = func() map[string]*prometheus.Desc {
	d := map[string]*prometheus.Desc{}
	for _, f := range []struct{ prefix, what string }{
		{"kmsd_audit", "audit events (audit.file)"},
		{"kmsd_error_log", "error log records (error_log.file)"},
	} {
		d[f.prefix+"_events_total"] = prometheus.NewDesc(f.prefix+"_events_total", "Number of "+f.what+" written.", nil, nil)
		d[f.prefix+"_events_lost_total"] = prometheus.NewDesc(f.prefix+"_events_lost_total", "Number of "+f.what+" lost: not queued (queue full or sink failing) or not written at shutdown.", nil, nil)
		d[f.prefix+"_write_errors_total"] = prometheus.NewDesc(f.prefix+"_write_errors_total", "Number of failed or stalled opens and writes of the "+f.what+" file.", nil, nil)
		d[f.prefix+"_healthy"] = prometheus.NewDesc(f.prefix+"_healthy", "1 if the "+f.what+" file is writable (or not configured), 0 while failing or stalled.", nil, nil)
	}
	d["kmsd_audit_stdout_events_lost_total"] = prometheus.NewDesc("kmsd_audit_stdout_events_lost_total",
		"Number of audit events not written to stdout (log.audit: on) because stdout did not keep up.", nil, nil)
	return d
}()

func (logCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range logDescs {
		ch <- d
	}
}

func (c logCollector) Collect(ch chan<- prometheus.Metric) {
	for prefix, s := range map[string]*logfile.Sink{"kmsd_audit": c.ls.audit, "kmsd_error_log": c.ls.errorLog} {
		var st logfile.Stats
		healthy := 1.0
		if s != nil {
			st = s.Stats()
			if !s.Healthy() {
				healthy = 0
			}
		}
		ch <- prometheus.MustNewConstMetric(logDescs[prefix+"_events_total"], prometheus.CounterValue, float64(st.Written))
		ch <- prometheus.MustNewConstMetric(logDescs[prefix+"_events_lost_total"], prometheus.CounterValue, float64(st.Lost))
		ch <- prometheus.MustNewConstMetric(logDescs[prefix+"_write_errors_total"], prometheus.CounterValue, float64(st.WriteErrors))
		ch <- prometheus.MustNewConstMetric(logDescs[prefix+"_healthy"], prometheus.GaugeValue, healthy)
	}
	var lost uint64
	if c.ls.stdout != nil {
		lost = c.ls.stdout.Stats().Lost
	}
	ch <- prometheus.MustNewConstMetric(logDescs["kmsd_audit_stdout_events_lost_total"], prometheus.CounterValue, float64(lost))
}
