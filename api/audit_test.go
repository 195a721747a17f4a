package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/logfile"
)

// syncBuffer is the env's audit sink: always healthy, never refuses.
func (b *syncBuffer) Enqueue(line []byte, _ time.Duration) bool {
	_, _ = b.Write(line)
	return true
}

func (b *syncBuffer) Healthy() bool { return true }

// fakeAuditSink records what the API hands it.
type fakeAuditSink struct {
	mu      sync.Mutex
	healthy bool
	refuse  bool // Enqueue refuses (and counts the line lost)
	lines   []string
	waits   []time.Duration
	lost    int
}

func (f *fakeAuditSink) Enqueue(line []byte, wait time.Duration) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.waits = append(f.waits, wait)
	if f.refuse {
		f.lost++
		return false
	}
	f.lines = append(f.lines, string(line))
	return true
}

func (f *fakeAuditSink) Healthy() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.healthy
}

func (f *fakeAuditSink) snapshot() (lines []string, waits []time.Duration, lost int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.lines...), append([]time.Duration(nil), f.waits...), f.lost
}

func withAudit(sink AuditSink, reject bool, maxWait time.Duration) envOption {
	return func(_ *env, cfg *Config, _ *Deps) {
		cfg.Audit, cfg.AuditReject, cfg.AuditMaxWait = sink, reject, maxWait
	}
}

// auditLine is an audit event as a test reads it.
type auditLine struct {
	Time    time.Time `json:"time"`
	Node    string    `json:"node"`
	Request struct {
		IP       string `json:"ip"`
		Path     string `json:"path"`
		Identity string `json:"identity"`
		Method   string `json:"method"`
		Key      string `json:"key"`
	} `json:"request"`
	Response struct {
		Code int           `json:"code"`
		Time time.Duration `json:"time"`
	} `json:"response"`
}

// auditLines waits (briefly) until the sink holds n lines and decodes
// them: the event is recorded as the handler returns, which may be just
// after the client saw the response.
func auditLines(t *testing.T, buf *syncBuffer, n int) []auditLine {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		raw := strings.SplitAfter(buf.String(), "\n")
		raw = raw[:len(raw)-1] // after the last '\n'
		if len(raw) > n {
			t.Fatalf("%d audit lines, want %d:\n%s", len(raw), n, buf.String())
		}
		if len(raw) == n {
			out := make([]auditLine, n)
			for i, l := range raw {
				if err := json.Unmarshal([]byte(l), &out[i]); err != nil {
					t.Fatalf("audit line %q: %v", l, err)
				}
			}
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d audit lines after 5s, want %d:\n%s", len(raw), n, buf.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// One event per request, with the key name for key routes, and nothing
// of the bodies: no plaintext, ciphertext or context.
func TestAuditEvents(t *testing.T) {
	e := newEnv(t)
	admin := e.client(&e.admin, false)
	const (
		secretContext   = "audit-test-context-do-not-log"
		secretPlaintext = "audit-test-plaintext-do-not-log"
	)
	var secrets []string // every sensitive byte string, as it would appear
	b64 := base64.StdEncoding.EncodeToString
	secrets = append(secrets, secretContext, b64([]byte(secretContext)), secretPlaintext, b64([]byte(secretPlaintext)))

	var dek generateResponse
	var enc encryptResponse
	steps := []struct {
		method, path string
		client       *http.Client
		body         any
		code         int
		key          string
		identity     string
		after        func(r response)
	}{
		{"POST", "/v1/key/create/ak-1", admin, nil, 200, "ak-1", e.admin.Identity(), nil},
		{"PUT", "/v1/key/generate/ak-1", admin, `{"context":"` + b64([]byte(secretContext)) + `"}`, 200, "ak-1", e.admin.Identity(),
			func(r response) { mustUnmarshal(t, r.body, &dek) }},
		{"PUT", "/v1/key/encrypt/ak-1", admin, `{"plaintext":"` + b64([]byte(secretPlaintext)) + `","context":"` + b64([]byte(secretContext)) + `"}`, 200, "ak-1", e.admin.Identity(),
			func(r response) { mustUnmarshal(t, r.body, &enc) }},
		{"GET", "/v1/key/describe/ak-missing", admin, nil, 404, "ak-missing", e.admin.Identity(), nil},
		{"GET", "/v1/key/list/ak*", admin, nil, 200, "", e.admin.Identity(), nil},
		{"GET", "/v1/key/list", admin, nil, 200, "", e.admin.Identity(), nil},
		{"GET", "/v1/policy/describe/app", admin, nil, 200, "", e.admin.Identity(), nil},
		{"GET", "/v1/status", e.client(&e.stranger, false), nil, 403, "", e.stranger.Identity(), nil},
		{"DELETE", "/v1/key/create/ak-2", admin, nil, 405, "", "", nil},
		{"DELETE", "/v1/key/delete/ak-1", admin, nil, 200, "ak-1", e.admin.Identity(), nil},
	}
	for i, st := range steps {
		r := e.do(st.client, st.method, st.path, st.body)
		if r.code != st.code {
			t.Fatalf("%s %s: %d %s, want %d", st.method, st.path, r.code, r.body, st.code)
		}
		if st.after != nil {
			st.after(r)
		}
		ev := auditLines(t, e.audit, i+1)[i] // exactly one more line
		switch {
		case ev.Request.Path != st.path || ev.Request.Method != st.method || ev.Response.Code != st.code:
			t.Errorf("%s %s: event %+v", st.method, st.path, ev)
		case ev.Request.Key != st.key:
			t.Errorf("%s %s: event key %q, want %q", st.method, st.path, ev.Request.Key, st.key)
		case st.identity != "" && ev.Request.Identity != st.identity:
			t.Errorf("%s %s: event identity %q, want %q", st.method, st.path, ev.Request.Identity, st.identity)
		case ev.Node != "node-1" || ev.Request.IP != "127.0.0.1" || time.Since(ev.Time) > time.Minute:
			t.Errorf("%s %s: event %+v", st.method, st.path, ev)
		case ev.Response.Time <= 0 || ev.Response.Time > time.Minute:
			t.Errorf("%s %s: response.time %v, want nanoseconds of the request", st.method, st.path, ev.Response.Time)
		}
	}
	if len(dek.Plaintext) == 0 || len(dek.Ciphertext) == 0 || len(enc.Ciphertext) == 0 {
		t.Fatalf("generate/encrypt answered no key material: %+v %+v", dek, enc)
	}
	secrets = append(secrets, b64(dek.Plaintext), b64(dek.Ciphertext), b64(enc.Ciphertext))
	log := e.audit.String()
	for _, s := range secrets {
		if strings.Contains(log, s) {
			t.Errorf("the audit log contains %q (a body, key material or ciphertext)", s)
		}
	}
}

func mustUnmarshal(t *testing.T, body string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(body), v); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
}

// The two failure policies, as seen by a client.
func TestAuditFailurePolicy(t *testing.T) {
	const maxWait = 50 * time.Millisecond
	for _, tc := range []struct {
		name            string
		reject, healthy bool
		refuse          bool
		wantCreate      int
		wantWait        time.Duration
	}{
		{name: "continue, healthy", healthy: true, wantCreate: 200},
		{name: "continue, failing sink: served, event lost", refuse: true, wantCreate: 200},
		{name: "reject, healthy", reject: true, healthy: true, wantCreate: 200, wantWait: maxWait},
		{name: "reject, healthy but queue full: served, event lost after the wait", reject: true, healthy: true, refuse: true, wantCreate: 200, wantWait: maxWait},
		{name: "reject, failing sink: refused up front", reject: true, refuse: true, wantCreate: 503, wantWait: maxWait},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sink := &fakeAuditSink{healthy: tc.healthy, refuse: tc.refuse}
			e := newEnv(t, withAudit(sink, tc.reject, maxWait))
			admin := e.client(&e.admin, false)
			r := e.do(admin, "POST", "/v1/key/create/pk", nil)
			if r.code != tc.wantCreate {
				t.Fatalf("create: %d %s, want %d", r.code, r.body, tc.wantCreate)
			}
			e.fc.mu.Lock()
			_, created := e.fc.keys["pk"]
			applies := e.fc.applies
			e.fc.mu.Unlock()
			if tc.wantCreate == 503 {
				r.expectError(t, "create", 503, "audit log unavailable: request refused")
				if created || applies != 0 {
					t.Errorf("a refused create changed state (applies %d, created %v)", applies, created)
				}
				// Key, policy and identity routes are refused; the
				// operational ones are served.
				for _, p := range []string{"/v1/key/describe/pk", "/v1/key/list/*", "/v1/policy/describe/app", "/v1/identity/self/describe", "/v1/identity/list/"} {
					e.do(admin, "GET", p, nil).expectError(t, p, 503, "audit log unavailable: request refused")
				}
				for _, p := range []string{"/version", "/v1/status", "/v1/metrics", "/v1/api", "/v1/ready"} {
					if r := e.do(admin, "GET", p, nil); r.code != 200 {
						t.Errorf("GET %s: %d %s while the audit sink fails, want 200", p, r.code, r.body)
					}
				}
				e.openStream("/v1/log/audit") // fails the test unless 200
			} else if !created {
				t.Errorf("create answered %d but the key was not created", r.code)
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				lines, waits, lost := sink.snapshot()
				if len(waits) > 0 {
					if waits[0] != tc.wantWait {
						t.Errorf("the event waited up to %v, want %v", waits[0], tc.wantWait)
					}
					if tc.refuse && (lost == 0 || len(lines) != 0) || !tc.refuse && len(lines) == 0 {
						t.Errorf("refuse=%v: lines %d, lost %d", tc.refuse, len(lines), lost)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the request was never handed to the audit sink")
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

// blockedWriter never returns from Write until released: a stuck disk.
type blockedWriter struct{ release chan struct{} }

func (w blockedWriter) Write(p []byte) (int, error) {
	<-w.release
	return len(p), nil
}

// A real logfile sink stuck in a write: under "continue" requests never
// wait for it; under "reject" each waits at most max_wait until the stall
// is detected, then requests are refused at once. Latencies are asserted
// loosely (machines are noisy); the numbers are logged.
func TestAuditStuckSinkBoundedLatency(t *testing.T) {
	for _, tc := range []struct {
		name    string
		reject  bool
		maxWait time.Duration
	}{
		{"continue", false, 0},
		{"reject", true, 100 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := blockedWriter{release: make(chan struct{})}
			sink, err := logfile.New(logfile.Options{Writer: w, QueueSize: 2, StallAfter: 400 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = sink.Close(ctx)
			})
			t.Cleanup(func() { close(w.release) }) // runs first
			e := newEnv(t, withAudit(sink, tc.reject, tc.maxWait))
			admin := e.client(&e.admin, false)

			var worst time.Duration
			codes := map[int]int{}
			start := time.Now()
			for i := 0; i < 40 && time.Since(start) < 10*time.Second; i++ {
				t0 := time.Now()
				r := e.do(admin, "GET", "/v1/key/list/", nil)
				d := time.Since(t0)
				worst = max(worst, d)
				codes[r.code]++
				if d > 2*time.Second {
					t.Errorf("request %d took %v with a stuck audit sink", i, d)
				}
				if tc.reject && r.code == 503 && codes[503] >= 5 {
					break
				}
			}
			st := sink.Stats()
			t.Logf("%s: codes %v, worst latency %v, sink %+v, healthy %v", tc.name, codes, worst, st, sink.Healthy())
			if st.Lost == 0 {
				t.Error("no event counted lost although the sink was stuck")
			}
			if tc.reject {
				if codes[503] == 0 || sink.Healthy() {
					t.Errorf("reject: codes %v; the stall was never detected, or requests were never refused", codes)
				}
			} else if codes[200] != sum(codes) {
				t.Errorf("continue: codes %v, want only 200", codes)
			}
		})
	}
}

func sum(m map[int]int) (n int) {
	for _, v := range m {
		n += v
	}
	return n
}
