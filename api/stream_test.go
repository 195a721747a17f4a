package api

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// openStream starts a /v1/log/* subscription over real TLS and returns
// its line reader once the headers arrived.
func (e *env) openStream(path string) (*bufio.Reader, *http.Response) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(e.t.Context())
	e.t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", e.ts.URL+path, nil)
	resp, err := e.client(&e.admin, false).Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		e.t.Fatalf("%s: %d %q", path, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return bufio.NewReader(resp.Body), resp
}

// readLine reads one NDJSON line or fails after a while.
func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	type result struct {
		line string
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		line, err := r.ReadString('\n')
		ch <- result{line, err}
	}()
	select {
	case res := <-ch:
		if res.err != nil {
			t.Fatalf("read stream: %v", res.err)
		}
		return res.line
	case <-time.After(10 * time.Second):
		t.Fatal("no event on the stream")
		return ""
	}
}

// §16 item 45.
func TestAuditStream(t *testing.T) {
	e := newEnv(t)
	lines, _ := e.openStream("/v1/log/audit")
	e.do(e.client(&e.admin, false), "POST", "/v1/key/create/audited", nil).expectEmpty(t, "create")
	line := readLine(t, lines)

	var ev struct {
		Time    time.Time `json:"time"`
		Node    string    `json:"node"`
		Request struct {
			IP       string `json:"ip"`
			Path     string `json:"path"`
			Identity string `json:"identity"`
			Method   string `json:"method"`
		} `json:"request"`
		Response struct {
			Code int           `json:"code"`
			Time time.Duration `json:"time"`
		} `json:"response"`
	}
	if err := json.Unmarshal([]byte(line), &ev); err != nil {
		t.Fatalf("%v: %s", err, line)
	}
	switch {
	case time.Since(ev.Time) > time.Minute || ev.Node != "node-1":
		t.Errorf("event: %s", line)
	case ev.Request.IP != "127.0.0.1" || ev.Request.Path != "/v1/key/create/audited" || ev.Request.Method != "POST":
		t.Errorf("request: %s", line)
	case ev.Request.Identity != e.admin.Identity():
		t.Errorf("identity: %s", line)
	case ev.Response.Code != 200 || ev.Response.Time <= 0 || ev.Response.Time > time.Minute:
		t.Errorf("response: %s", line)
	}
	// The same line went to the audit sink.
	if !strings.Contains(e.audit.String(), `"path":"/v1/key/create/audited"`) {
		t.Errorf("audit sink: %s", e.audit.String())
	}
	// Failures are audited too; the stream itself is not.
	e.do(e.client(&e.stranger, false), "GET", "/v1/status", nil)
	if line := readLine(t, lines); !strings.Contains(line, `"code":403`) {
		t.Errorf("403 event: %s", line)
	}
	if strings.Contains(e.audit.String(), "/v1/log/audit") {
		t.Error("the audit stream was audited")
	}
}

// §16 item 46.
func TestErrorStream(t *testing.T) {
	e := newEnv(t)
	lines, _ := e.openStream("/v1/log/error")
	e.cfg.Logger.Info("not an error")
	e.cfg.Logger.Error("something broke", "detail", 42)
	line := readLine(t, lines)
	var ev struct{ Message string }
	if err := json.Unmarshal([]byte(line), &ev); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(ev.Message, `level=ERROR msg="something broke" detail=42`) || strings.HasSuffix(ev.Message, "\n") {
		t.Errorf("event: %q", ev.Message)
	}
	// An unexpected handler error reaches the stream, with the request.
	e.fc.set(func(f *fakeCluster) { f.getErr = errBoom })
	e.do(e.client(&e.admin, false), "GET", "/v1/key/describe/k", nil).expectError(t, "describe", 502, "failed to read key")
	line = readLine(t, lines)
	for _, want := range []string{`api: failed to read key`, `req.path=/v1/key/describe/k`, `boom: disk on fire`} {
		if !strings.Contains(line, want) {
			t.Errorf("event lacks %q: %s", want, line)
		}
	}
	// A bad request body is logged too, as KES does (spec §9.3).
	e.fc.set(func(f *fakeCluster) { f.getErr = nil })
	e.do(e.client(&e.admin, false), "PUT", "/v1/key/generate/k", `{bad json`).expectError(t, "bad json", 400, "invalid request body")
	line = readLine(t, lines)
	if !strings.Contains(line, `api: invalid request body`) || !strings.Contains(line, `invalid character 'b'`) {
		t.Errorf("bad body event: %s", line)
	}
	if !strings.Contains(e.logs.String(), "something broke") || !strings.Contains(e.logs.String(), "not an error") {
		t.Error("the wrapped handler did not get the records")
	}
}

// Close ends open streams.
func TestCloseEndsStreams(t *testing.T) {
	e := newEnv(t)
	lines, _ := e.openStream("/v1/log/audit")
	e.srv.Close()
	done := make(chan error, 1)
	go func() {
		_, err := lines.ReadString('\n')
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Error("stream delivered a line after Close")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("stream still open after Close")
	}
}

// stuckWriter is a subscriber connection that accepts headers and then
// never drains a byte.
type stuckWriter struct {
	hdr     http.Header
	release chan struct{}
}

func (w *stuckWriter) Header() http.Header { return w.hdr }
func (w *stuckWriter) WriteHeader(int)     {}
func (w *stuckWriter) Flush()              {}
func (w *stuckWriter) Write(p []byte) (int, error) {
	<-w.release
	return len(p), nil
}

// A subscriber that stops reading never blocks requests; its missed
// events are counted.
func TestBlockedSubscriber(t *testing.T) {
	e := newEnv(t)
	cert, _ := e.admin.Certificate()
	withTLS := func(r *http.Request) *http.Request {
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert.Leaf}}
		r.RemoteAddr = "127.0.0.1:1"
		return r
	}
	sw := &stuckWriter{hdr: http.Header{}, release: make(chan struct{})}
	ctx, cancel := context.WithCancel(t.Context())
	streamDone := make(chan struct{})
	go func() {
		defer close(streamDone)
		e.srv.Handler().ServeHTTP(sw, withTLS(httptest.NewRequestWithContext(ctx, "GET", "/v1/log/audit", nil)))
	}()
	for deadline := time.Now().Add(5 * time.Second); !e.srv.audit.active(); {
		if time.Now().After(deadline) {
			t.Fatal("the audit subscriber never registered")
		}
		time.Sleep(time.Millisecond)
	}

	n := 2*subscriberBuffer + 100
	start := time.Now()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range n / 4 {
				rec := httptest.NewRecorder()
				e.srv.Handler().ServeHTTP(rec, withTLS(httptest.NewRequest("GET", "/version", nil)))
				if rec.Code != 200 {
					t.Errorf("version: %d", rec.Code)
					return
				}
			}
		})
	}
	wg.Wait()
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("%d requests took %v", n, d)
	}
	if dropped := e.srv.audit.dropped.Load(); dropped < uint64(n-subscriberBuffer-1) {
		t.Errorf("dropped %d events, want at least %d", dropped, n-subscriberBuffer-1)
	}
	if r := e.do(e.client(&e.admin, false), "GET", "/v1/metrics", nil); !strings.Contains(r.body, "kmsd_api_log_audit_dropped_events_total ") {
		t.Error("drop counter not exported")
	}
	close(sw.release)
	cancel()
	<-streamDone
}

// The error stream's handler keeps attributes and groups, and only
// formats records at its level while someone listens.
func TestErrorStreamHandler(t *testing.T) {
	es := NewErrorStream(slog.LevelWarn)
	var inner bytes.Buffer
	log := slog.New(es.Wrap(slog.NewTextHandler(&inner, &slog.HandlerOptions{Level: slog.LevelError})))
	log.Warn("nobody listens") // not formatted for the stream, not logged by inner
	ch := es.b.subscribe()
	defer es.b.unsubscribe(ch)
	log.With("a", 1).WithGroup("g").Warn("warned", "b", 2)
	log.Info("too low")
	select {
	case line := <-ch:
		var ev struct{ Message string }
		if err := json.Unmarshal(line, &ev); err != nil || !strings.Contains(ev.Message, `level=WARN msg=warned a=1 g.b=2`) {
			t.Errorf("event %s (%v)", line, err)
		}
	default:
		t.Fatal("no event")
	}
	select {
	case line := <-ch:
		t.Errorf("unexpected event %s", line)
	default:
	}
	if inner.Len() != 0 {
		t.Errorf("inner handler got records below its level: %s", inner.String())
	}
}
