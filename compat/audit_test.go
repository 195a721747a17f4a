package compat

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/kms-go/kes"
	"github.com/prometheus/common/expfmt"
	"gopkg.in/yaml.v3"
)

// auditNode is a started single node with audit.file (in its own
// directory, so a test can break it) and error_log.file.
type auditNode struct {
	*node
	auditDir, auditFile, errorFile string
	raw                            *rawClient
	admin                          *kes.Client
}

func startAuditNode(t *testing.T, name, policy string) *auditNode {
	t.Helper()
	n := newNode(t, nodeOptions{Name: name})
	an := &auditNode{node: n, auditDir: filepath.Join(n.dir, "audit")}
	an.auditFile = filepath.Join(an.auditDir, "audit.log")
	an.errorFile = filepath.Join(n.dir, "error.log")
	// The harness's yamlConfig has no audit sections: patch the file.
	b, err := os.ReadFile(n.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["audit"] = map[string]any{"file": an.auditFile, "on_failure": policy, "max_wait": "100ms"}
	cfg["error_log"] = map[string]any{"file": an.errorFile}
	if b, err = yaml.Marshal(cfg); err != nil {
		t.Fatal(err)
	}
	overwrite(t, n.cfgPath, b)
	n.start(t, nil)
	n.waitServing(t)
	an.raw = n.raw("admin", apiKeyCert(t, mustAPIKey(t, adminAPIKey)))
	an.admin = n.client(mustAPIKey(t, adminAPIKey))
	return an
}

// metric reads one unlabelled sample from /v1/metrics.
func (n *auditNode) metric(t *testing.T, name string) float64 {
	t.Helper()
	r := n.raw.do(t, "GET", "/v1/metrics", nil)
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(bytes.NewReader(r.Body))
	if err != nil {
		t.Fatalf("parse /v1/metrics: %v", err)
	}
	f, ok := fams[name]
	if !ok || len(f.Metric) != 1 {
		t.Fatalf("/v1/metrics: %s missing or not a single sample", name)
	}
	m := f.Metric[0]
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// breakAudit makes the audit file unwritable in a way that stops root
// too: its directory becomes a regular file. The sink notices at its next
// path check (at most 1 s later, on the next event).
func (n *auditNode) breakAudit(t *testing.T) {
	t.Helper()
	if err := os.Rename(n.auditDir, n.auditDir+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(n.auditDir, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
}

func (n *auditNode) fixAudit(t *testing.T) {
	t.Helper()
	if err := os.Remove(n.auditDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(n.auditDir+".moved", n.auditDir); err != nil {
		t.Fatal(err)
	}
}

// ready reports /v1/ready's status and message.
func (n *auditNode) ready(t *testing.T) (int, string) {
	t.Helper()
	r := n.raw.do(t, "GET", "/v1/ready", nil)
	msg, _ := errMessage(r.Body)
	return r.Status, msg
}

// auditEvents decodes the audit file twice: with kms-go's AuditStream
// (the client's format) and as raw JSON (kmsd's extra fields).
func auditEvents(t *testing.T, path string) ([]kes.AuditEvent, []map[string]any, string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var events []kes.AuditEvent
	st := kes.NewAuditStream(bytes.NewReader(b))
	for st.Next() {
		events = append(events, st.Event())
	}
	if err := st.Close(); err != nil {
		t.Errorf("kms-go AuditStream cannot decode %s: %v", path, err)
	}
	var raw []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Errorf("audit line %q is not JSON: %v", sc.Bytes(), err)
			continue
		}
		raw = append(raw, m)
	}
	return events, raw, string(b)
}

func waitAudit(t *testing.T, path string, what string, want func(string) bool) {
	t.Helper()
	waitFor(t, 10*time.Second, what, func() (bool, string) {
		b, _ := os.ReadFile(path)
		return want(string(b)), string(trunc(b))
	})
}

// TestAuditFile: audit.file gets one kms-go-decodable event per request
// with the key name and no secrets; error_log.file gets the server log as
// NDJSON. Then the audit file breaks under on_failure: continue: requests
// are still served, /v1/ready fails naming the audit check, the metrics
// show it, events beyond the queue are counted lost; once fixed, the node
// recovers by itself and writes the events it held.
func TestAuditFile(t *testing.T) {
	n := startAuditNode(t, "audit1", "continue")
	ctx := ctxT(t)
	const (
		secretCtx = "audit-compat-context-secret"
		secretPT  = "audit-compat-plaintext-secret"
	)
	if err := n.admin.CreateKey(ctx, "audit-k1"); err != nil {
		t.Fatal(err)
	}
	dek, err := n.admin.GenerateKey(ctx, "audit-k1", []byte(secretCtx))
	if err != nil {
		t.Fatal(err)
	}
	ct, err := n.admin.Encrypt(ctx, "audit-k1", []byte(secretPT), []byte(secretCtx))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.admin.DescribeKey(ctx, "audit-missing"); err == nil {
		t.Fatal("DescribeKey(audit-missing) succeeded")
	}
	waitAudit(t, n.auditFile, "the audit events of 4 key requests", func(s string) bool {
		return strings.Contains(s, "/v1/key/describe/audit-missing")
	})
	events, raw, text := auditEvents(t, n.auditFile)
	want := map[string]struct {
		code int
		key  string
	}{
		"/v1/key/create/audit-k1":        {200, "audit-k1"},
		"/v1/key/generate/audit-k1":      {200, "audit-k1"},
		"/v1/key/encrypt/audit-k1":       {200, "audit-k1"},
		"/v1/key/describe/audit-missing": {404, "audit-missing"},
	}
	seen := map[string]int{}
	for i, e := range events {
		w, ok := want[e.APIPath]
		if !ok {
			continue
		}
		seen[e.APIPath]++
		if e.StatusCode != w.code || e.ClientIdentity != adminIdentity || !e.ClientIP.Equal(net.IPv4(127, 0, 0, 1)) ||
			e.ResponseTime <= 0 || e.ResponseTime > 10*time.Second || time.Since(e.Timestamp) > time.Minute {
			t.Errorf("audit event %+v: want code %d, the admin identity, 127.0.0.1, a response time in ns", e, w.code)
		}
		req, _ := raw[i]["request"].(map[string]any)
		if req["key"] != w.key || raw[i]["node"] != "audit1" {
			t.Errorf("audit line %v: want request.key %q and node audit1", raw[i], w.key)
		}
	}
	for p := range want {
		if seen[p] != 1 {
			t.Errorf("%d audit events for %s, want exactly 1", seen[p], p)
		}
	}
	b64 := base64.StdEncoding.EncodeToString
	for _, s := range []string{secretCtx, b64([]byte(secretCtx)), secretPT, b64([]byte(secretPT)), b64(dek.Plaintext), b64(dek.Ciphertext), b64(ct)} {
		if strings.Contains(text, s) {
			t.Errorf("the audit file contains %q (a body, key material or ciphertext)", s)
		}
	}
	if fi, err := os.Stat(n.auditFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("audit file mode: %v %v, want 0600", fi.Mode(), err)
	}
	// The error log: the server log as NDJSON (log.error: INFO).
	waitAudit(t, n.errorFile, "the error log file has the startup records", func(s string) bool { return strings.Contains(s, "serving the KES API") })
	eb, _ := os.ReadFile(n.errorFile)
	for _, l := range bytes.Split(bytes.TrimSpace(eb), []byte("\n")) {
		var rec map[string]any
		if err := json.Unmarshal(l, &rec); err != nil || rec["level"] == nil || rec["msg"] == nil {
			t.Errorf("error log line %q: not a slog JSON record (%v)", l, err)
		}
	}
	if v := n.metric(t, "kmsd_audit_healthy"); v != 1 {
		t.Errorf("kmsd_audit_healthy = %v", v)
	}
	if v := n.metric(t, "kmsd_audit_events_total"); v < 4 {
		t.Errorf("kmsd_audit_events_total = %v after at least 4 audited requests", v)
	}

	// Break the audit file.
	n.breakAudit(t)
	for i := range 3 {
		start := time.Now()
		if err := n.admin.CreateKey(ctx, "audit-during-"+string(rune('a'+i))); err != nil {
			t.Errorf("CreateKey with a broken audit file under continue: %v", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("CreateKey took %v with a broken audit file under continue", d)
		}
	}
	waitFor(t, 10*time.Second, "/v1/ready to fail on the audit check", func() (bool, string) {
		code, msg := n.ready(t)
		return code == 503 && strings.Contains(msg, "audit") && strings.Contains(msg, "not a directory"), msg
	})
	if v := n.metric(t, "kmsd_audit_healthy"); v != 0 {
		t.Errorf("kmsd_audit_healthy = %v with a broken audit file", v)
	}
	if v := n.metric(t, "kmsd_audit_write_errors_total"); v < 1 {
		t.Errorf("kmsd_audit_write_errors_total = %v with a broken audit file", v)
	}
	// The sink holds 8192 queued events plus one batch of 1024; beyond
	// that, events are lost and counted. /version is audited and cheap.
	lost0 := n.metric(t, "kmsd_audit_events_lost_total")
	var bad atomic.Int64
	start := time.Now()
	parallel(9600, 16, func(int) {
		r, err := n.raw.try("GET", "/version", nil)
		if err != nil || r.Status != 200 {
			bad.Add(1)
		}
	})
	t.Logf("9600 GET /version with a broken audit file: %v", time.Since(start))
	if bad.Load() != 0 {
		t.Errorf("%d of 9600 requests failed under on_failure: continue", bad.Load())
	}
	if lost := n.metric(t, "kmsd_audit_events_lost_total"); lost-lost0 < 1 {
		t.Errorf("kmsd_audit_events_lost_total moved by %v after 9600 events into a broken sink", lost-lost0)
	}

	// Fix it: the node recovers by itself and writes what it held.
	written0 := n.metric(t, "kmsd_audit_events_total")
	n.fixAudit(t)
	waitFor(t, 15*time.Second, "/v1/ready to pass again", func() (bool, string) {
		code, msg := n.ready(t)
		return code == 200, msg
	})
	waitAudit(t, n.auditFile, "the events held during the outage", func(s string) bool {
		return strings.Contains(s, `"/v1/key/create/audit-during-a"`)
	})
	if v := n.metric(t, "kmsd_audit_healthy"); v != 1 {
		t.Errorf("kmsd_audit_healthy = %v after the fix", v)
	}
	if v := n.metric(t, "kmsd_audit_events_total"); v-written0 < 8192 {
		t.Errorf("kmsd_audit_events_total moved by %v after the fix, want the ~9000 held events", v-written0)
	}
}

// TestAuditReject: under on_failure: reject a broken audit file makes
// key requests fail with 503 up front (nothing is created), while
// /version, /v1/status and /v1/metrics are served; fixed, it recovers.
func TestAuditReject(t *testing.T) {
	n := startAuditNode(t, "audit2", "reject")
	ctx := ctxT(t)
	if err := n.admin.CreateKey(ctx, "reject-ok"); err != nil {
		t.Fatal(err)
	}
	n.breakAudit(t)
	var refused string
	for i := 0; i < 50 && refused == ""; i++ {
		name := "reject-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		start := time.Now()
		r := n.raw.do(t, "POST", "/v1/key/create/"+name, nil)
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("create took %v with a broken audit file under reject", d)
		}
		switch r.Status {
		case 503:
			wantError(t, r, 503, "audit log unavailable: request refused")
			refused = name
		case 200: // before the failure was detected
			time.Sleep(100 * time.Millisecond)
		default:
			t.Fatalf("create %s: %v", name, r)
		}
	}
	if refused == "" {
		t.Fatal("no create was refused within 50 attempts with a broken audit file under reject")
	}
	for _, p := range []string{"/version", "/v1/status", "/v1/metrics"} {
		if r := n.raw.do(t, "GET", p, nil); r.Status != 200 {
			t.Errorf("GET %s under reject with a broken audit file: %v", p, r)
		}
	}
	if code, msg := n.ready(t); code != 503 || !strings.Contains(msg, "audit") {
		t.Errorf("/v1/ready: %d %q, want 503 naming the audit check", code, msg)
	}
	wantError(t, n.raw.do(t, "GET", "/v1/key/describe/reject-ok", nil), 503, "audit log unavailable: request refused")

	n.fixAudit(t)
	waitFor(t, 15*time.Second, "creates to succeed again", func() (bool, string) {
		r := n.raw.do(t, "POST", "/v1/key/create/reject-after", nil)
		return r.Status == 200, r.String()
	})
	if _, err := n.admin.DescribeKey(ctx, refused); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("DescribeKey(%s) after a refused create: %v, want key does not exist", refused, err)
	}
	waitAudit(t, n.auditFile, "the refused request in the audit file", func(s string) bool {
		return strings.Contains(s, `"/v1/key/create/`+refused+`"`) && strings.Contains(s, `"code":503`)
	})
}
