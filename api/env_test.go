package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/seal"
)

// adminKey is the KES test suite's admin API key (spec §14).
const adminKey = "kes:v1:AD9E7FSYWrMD+VjhI6q545cYT9YOyFxZb7UnjEepYDRc"

// fakeCluster is an in-memory KeyStore and Replicator. It applies
// commands like the FSM does (including RequestID idempotency) and can
// simulate a lagging replica and cluster failures.
type fakeCluster struct {
	mu       sync.Mutex
	keys     map[string]fsm.Key
	pending  map[string]fsm.Key // committed elsewhere; visible after a ReadBarrier
	barriers int
	applies  int

	barrierErr error                                    // ReadBarrier fails with it
	applyErr   error                                    // Apply fails with it, without applying
	afterErr   error                                    // Apply applies, then fails with it (ambiguous)
	listErr    error                                    // ListKeys fails with it
	getErr     error                                    // GetKey fails with it
	applyHook  func(context.Context, fsm.Command) error // runs first; non-nil error is returned
	getHook    func(name string)                        // runs first in GetKey
}

func newFakeCluster() *fakeCluster {
	return &fakeCluster{keys: map[string]fsm.Key{}, pending: map[string]fsm.Key{}}
}

func (f *fakeCluster) GetKey(name string) (fsm.Key, error) {
	f.mu.Lock()
	hook := f.getHook
	f.mu.Unlock()
	if hook != nil {
		hook(name)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.getErr != nil {
		return fsm.Key{}, f.getErr
	}
	k, ok := f.keys[name]
	if !ok {
		return fsm.Key{}, fsm.ErrKeyNotFound
	}
	return k, nil
}

func (f *fakeCluster) ListKeys(prefix string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.listErr != nil {
		return nil, f.listErr
	}
	var names []string
	for name := range f.keys { // map order: the API must sort
		if strings.HasPrefix(name, prefix) {
			names = append(names, name)
		}
	}
	return names, nil
}

func (f *fakeCluster) Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error) {
	f.mu.Lock()
	hook := f.applyHook
	f.mu.Unlock()
	if hook != nil {
		if err := hook(ctx, cmd); err != nil {
			return fsm.Result{}, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applies++
	if f.applyErr != nil {
		return fsm.Result{}, f.applyErr
	}
	res := fsm.Result{Index: uint64(f.applies)}
	switch c := cmd.(type) {
	case *fsm.CreateKey:
		if old, ok := f.keys[c.Key.Name]; ok {
			if old.RequestID != c.Key.RequestID {
				res.Code = fsm.CodeKeyExists
			}
			break
		}
		f.keys[c.Key.Name] = c.Key
	case *fsm.DeleteKey:
		if _, ok := f.keys[c.Name]; !ok {
			res.Code = fsm.CodeKeyNotFound
			break
		}
		delete(f.keys, c.Name)
	default:
		res.Code = fsm.CodeInvalid
	}
	if f.afterErr != nil {
		return fsm.Result{}, f.afterErr
	}
	return res, nil
}

func (f *fakeCluster) ReadBarrier(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.barriers++
	if f.barrierErr != nil {
		return f.barrierErr
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	maps.Copy(f.keys, f.pending)
	clear(f.pending)
	return nil
}

func (f *fakeCluster) set(fn func(f *fakeCluster)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeCluster) barrierCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.barriers
}

// syncBuffer is a goroutine-safe bytes.Buffer.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// env is a server over real TLS (h2 + http/1.1, RequireAnyClientCert)
// with three clients: the admin, a user with the "app" policy, and a
// stranger without a policy.
type env struct {
	t     *testing.T
	cfg   Config
	srv   *Server
	ts    *httptest.Server
	fc    *fakeCluster
	reg   *prometheus.Registry
	kr    atomic.Pointer[seal.Keyring]
	logs  *syncBuffer
	audit *syncBuffer
	errs  *ErrorStream

	admin, user, stranger APIKey
}

// appPolicy is the user's policy in every env.
func appPolicy(id string) Policy {
	return Policy{
		Allow: []string{
			"/v1/key/create/app*", "/v1/key/generate/app*", "/v1/key/decrypt/app*",
			"/v1/key/describe/app*", "/v1/key/list/*", "/v1/status",
		},
		Deny:       []string{"/v1/key/decrypt/app-internal*"},
		Identities: []string{id},
	}
}

type envOption func(*env, *Config, *Deps)

// withTLS replaces the server's client-auth mode.
func withClientAuth(mode tls.ClientAuthType) envOption {
	return func(e *env, _ *Config, _ *Deps) { e.ts.TLS.ClientAuth = mode }
}

func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	admin, err := ParseAPIKey(adminKey)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{
		t: t, fc: newFakeCluster(), reg: prometheus.NewRegistry(),
		logs: new(syncBuffer), audit: new(syncBuffer), errs: NewErrorStream(slog.LevelError),
		admin: admin, user: mustAPIKey(t), stranger: mustAPIKey(t),
	}
	e.kr.Store(testKeyring(t))
	cfg := Config{
		NodeName:  "node-1",
		Admin:     admin.Identity(),
		Policies:  map[string]Policy{"app": appPolicy(e.user.Identity())},
		Version:   "v-test",
		Commit:    "c-test",
		StartTime: time.Date(2026, 11, 22, 17, 0, 0, 0, time.UTC),
		Logger:    slog.New(e.errs.Wrap(slog.NewTextHandler(e.logs, nil))),
		ErrorLog:  e.errs,
		Audit:     e.audit,
		Registry:  e.reg,
	}
	deps := Deps{Store: e.fc, Cluster: e.fc, Keyring: e.kr.Load}
	e.ts = httptest.NewUnstartedServer(nil)
	e.ts.EnableHTTP2 = true
	e.ts.TLS = &tls.Config{
		ClientAuth: tls.RequireAnyClientCert,
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
	}
	for _, opt := range opts {
		opt(e, &cfg, &deps)
	}
	e.cfg = cfg
	if e.srv, err = New(cfg, deps); err != nil {
		t.Fatal(err)
	}
	e.ts.Config.Handler = e.srv.Handler()
	e.ts.Config.ErrorLog = log.New(io.Discard, "", 0) // expected handshake failures
	e.ts.StartTLS()
	t.Cleanup(func() {
		e.srv.Close()
		e.ts.Close()
	})
	return e
}

func mustAPIKey(t *testing.T) APIKey {
	t.Helper()
	k, err := GenerateAPIKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// testKeyring is a real keyring under a software sealer.
func testKeyring(t *testing.T) *seal.Keyring {
	t.Helper()
	root := make([]byte, 32)
	if _, err := rand.Read(root); err != nil {
		t.Fatal(err)
	}
	kr, _, err := seal.Init(t.Context(), seal.NewSoftware(root, "test"))
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

// client returns an HTTP client presenting key's certificate (none for a
// nil key). h1 forces HTTP/1.1; otherwise HTTP/2 is negotiated.
// Redirects are not followed.
func (e *env) client(key *APIKey, h1 bool) *http.Client {
	e.t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(e.ts.Certificate())
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2: !h1,
	}
	if h1 {
		tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	}
	if key != nil {
		cert, err := key.Certificate()
		if err != nil {
			e.t.Fatal(err)
		}
		tr.TLSClientConfig.Certificates = []tls.Certificate{cert}
	}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{
		Transport:     tr,
		Timeout:       30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// response is what a test looks at.
type response struct {
	code  int
	hdr   http.Header
	body  string
	proto int
}

// do sends one request. body may be nil, a string or an io.Reader.
func (e *env) do(c *http.Client, method, path string, body any) response {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case io.Reader:
		rd = b
	default:
		e.t.Fatalf("bad body type %T", body)
	}
	req, err := http.NewRequestWithContext(e.t.Context(), method, e.ts.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return response{code: resp.StatusCode, hdr: resp.Header, body: string(b), proto: resp.ProtoMajor}
}

// expect checks status and exact body.
func (r response) expect(t *testing.T, what string, code int, body string) {
	t.Helper()
	if r.code != code || r.body != body {
		t.Errorf("%s: got %d %q, want %d %q", what, r.code, r.body, code, body)
	}
}

// expectError checks a KES error response byte for byte.
func (r response) expectError(t *testing.T, what string, code int, message string) {
	t.Helper()
	r.expect(t, what, code, `{"message":"`+message+`"}`)
	if ct := r.hdr.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q", what, ct)
	}
	if r.hdr.Get("Content-Length") == "" && r.proto == 1 {
		t.Errorf("%s: no Content-Length", what)
	}
}

// expectEmpty checks a mutation's 200: empty body, no Content-Type.
func (r response) expectEmpty(t *testing.T, what string) {
	t.Helper()
	r.expect(t, what, http.StatusOK, "")
	if ct := r.hdr.Get("Content-Type"); ct != "" {
		t.Errorf("%s: Content-Type %q on an empty 200", what, ct)
	}
	if cl := r.hdr.Get("Content-Length"); cl != "0" && r.proto == 1 {
		t.Errorf("%s: Content-Length %q", what, cl)
	}
}

// seedKey stores a real key record directly, as if created earlier.
func (e *env) seedKey(name string, alg seal.Algorithm, secret []byte, pending bool) {
	e.t.Helper()
	var key *seal.Key
	var err error
	if secret == nil {
		key, err = seal.NewKey(alg, nil)
	} else {
		key, err = seal.ImportKey(alg, secret, nil)
	}
	if err != nil {
		e.t.Fatal(err)
	}
	e.seedSealed(name, key, pending)
}

func (e *env) seedSealed(name string, key *seal.Key, pending bool) {
	e.t.Helper()
	sealed, err := e.kr.Load().SealKey(name, 1, key)
	if err != nil {
		e.t.Fatal(err)
	}
	rec := fsm.Key{
		Name: name, Algorithm: uint8(key.Algorithm()), Version: 1, Sealed: sealed,
		CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), CreatedBy: "creator",
	}
	e.fc.set(func(f *fakeCluster) {
		if pending {
			f.pending[name] = rec
		} else {
			f.keys[name] = rec
		}
	})
}

var errBoom = errors.New("boom: disk on fire")
