package api

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/fsm"
)

// §16 item 1: HTTP/1.1 and HTTP/2 over TLS.
func TestProtocols(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		h1    bool
		proto int
	}{{true, 1}, {false, 2}} {
		r := e.do(e.client(&e.admin, tc.h1), "GET", "/version", nil)
		if r.code != 200 || r.proto != tc.proto {
			t.Errorf("h1=%v: got %d over HTTP/%d", tc.h1, r.code, r.proto)
		}
		r.expect(t, "version", 200, `{"version":"v-test","commit":"c-test"}`+"\n")
	}
}

// §16 item 2: no client certificate fails the handshake; a self-signed
// API-key certificate is accepted.
func TestClientCertificateRequired(t *testing.T) {
	e := newEnv(t)
	req, _ := http.NewRequest("GET", e.ts.URL+"/version", nil)
	if resp, err := e.client(nil, true).Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("request without a client certificate succeeded: %d", resp.StatusCode)
	}
	e.do(e.client(&e.stranger, false), "GET", "/version", nil).expect(t, "self-signed", 200, `{"version":"v-test","commit":"c-test"}`+"\n")
}

// §16 item 5: method checks.
func TestMethods(t *testing.T) {
	e := newEnv(t)
	c := e.client(&e.admin, false)
	for _, tc := range []struct {
		method, path, want string
	}{
		{"GET", "/v1/key/create/k", "PUT"},
		{"DELETE", "/v1/key/hmac/k", "PUT"},
		{"POST", "/v1/key/describe/k", "GET"},
		{"PUT", "/v1/key/delete/k", "DELETE"},
		{"HEAD", "/version", "GET"},
		{"HEAD", "/v1/status", "GET"},
		{"POST", "/v1/log/audit", "GET"},
		{"PATCH", "/v1/key/list/", "GET"},
	} {
		r := e.do(c, tc.method, tc.path, nil)
		what := tc.method + " " + tc.path
		if tc.method == "HEAD" {
			if r.code != http.StatusMethodNotAllowed {
				t.Errorf("%s: got %d", what, r.code)
			}
		} else {
			r.expectError(t, what, 405, "received method '"+tc.method+"' expected '"+tc.want+"'")
		}
		if r.hdr.Get("Accept") != tc.want || r.hdr.Get("Allow") != tc.want {
			t.Errorf("%s: Accept %q Allow %q", what, r.hdr.Get("Accept"), r.hdr.Get("Allow"))
		}
	}
	// POST is accepted on every PUT route (the create succeeds).
	e.do(c, "POST", "/v1/key/create/posted", nil).expectEmpty(t, "POST create")
	e.do(c, "PUT", "/v1/key/create/put", nil).expectEmpty(t, "PUT create")
}

// §1.2: the ServeMux redirects (307) and 404s as KES does.
func TestRedirectsAndNotFound(t *testing.T) {
	e := newEnv(t)
	c := e.client(&e.admin, true)
	for _, tc := range []struct{ method, path, location string }{
		{"GET", "/v1/key/describe", "/v1/key/describe/"},
		{"PUT", "/v1/key/create", "/v1/key/create/"},
		{"GET", "/v1/key/describe//x", "/v1/key/describe/x"},
		{"GET", "/v1/key/describe/a/../b", "/v1/key/describe/b"},
		{"GET", "/v1//status", "/v1/status"},
	} {
		r := e.do(c, tc.method, tc.path, nil)
		if r.code != http.StatusTemporaryRedirect || r.hdr.Get("Location") != tc.location {
			t.Errorf("%s %s: got %d Location %q, want 307 %q", tc.method, tc.path, r.code, r.hdr.Get("Location"), tc.location)
		}
	}
	// §16 item 7.
	for _, path := range []string{
		"/", "/v1", "/v1/identity/self/describe/", "/v1/key/bulk/decrypt/k", "/v1/status/",
		"/v1/sys/seal", "/v1/enclave/create/e", "/v1/policy/write/p", "/v1/log/audit/trace",
	} {
		r := e.do(c, "GET", path, nil)
		r.expect(t, path, 404, "404 page not found\n")
		if ct := r.hdr.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
			t.Errorf("%s: Content-Type %q", path, ct)
		}
	}
}

// §16 item 6: list routes without the trailing slash list everything,
// also for a non-admin whose rule is written for the slash form.
func TestListWithoutSlash(t *testing.T) {
	e := newEnv(t)
	e.seedKey("app-1", 1, nil, false)
	e.seedKey("zzz", 1, nil, false)
	admin := e.client(&e.admin, false)
	e.do(admin, "GET", "/v1/key/list", nil).expect(t, "key list", 200, `{"names":["app-1","zzz"]}`+"\n")
	e.do(admin, "GET", "/v1/policy/list", nil).expect(t, "policy list", 200, `{"names":["app"],"continue_at":""}`+"\n")
	ids := []string{e.admin.Identity(), e.user.Identity()}
	if ids[0] > ids[1] {
		ids[0], ids[1] = ids[1], ids[0]
	}
	e.do(admin, "GET", "/v1/identity/list", nil).expect(t, "identity list", 200,
		`{"identities":["`+ids[0]+`","`+ids[1]+`"],"continue_at":""}`+"\n")
	e.do(e.client(&e.user, false), "GET", "/v1/key/list", nil).expect(t, "user key list", 200, `{"names":["app-1","zzz"]}`+"\n")
	e.do(e.client(&e.user, false), "GET", "/v1/policy/list", nil).expectError(t, "user policy list", 403, "not authorized: insufficient permissions")
}

// §16 item 8: path arguments are decoded before validation and policy.
func TestPercentDecoding(t *testing.T) {
	e := newEnv(t)
	e.seedKey("app-1", 1, nil, false)
	e.seedKey("other", 1, nil, false)
	admin, user := e.client(&e.admin, false), e.client(&e.user, false)
	e.do(admin, "GET", "/v1/key/describe/a%2Fb", nil).expectError(t, "%2F", 400, "key name 'a/b' is empty, too long or contains invalid characters")
	e.do(admin, "GET", "/v1/key/list/app%2A", nil).expect(t, "%2A", 200, `{"names":["app-1"]}`+"\n")
	r := e.do(user, "GET", "/v1/key/describe/%61pp-1", nil) // %61 = 'a': allowed by /v1/key/describe/app*
	if r.code != 200 {
		t.Errorf("decoded policy match: got %d %s", r.code, r.body)
	}
	e.do(user, "GET", "/v1/key/describe/%6Fther", nil).expectError(t, "decoded deny", 403, "not authorized: insufficient permissions")
}

// §16 item 9: body limits.
func TestBodyLimits(t *testing.T) {
	e := newEnv(t)
	e.seedKey("k", 1, nil, false)
	c := e.client(&e.admin, false)
	huge := `{"plaintext":"` + strings.Repeat("A", MB) + `"}` // > 1,000,000 bytes
	over := strings.Repeat(" ", MB+1)
	for _, path := range []string{"/v1/key/generate/k", "/v1/key/encrypt/k", "/v1/key/decrypt/k", "/v1/key/hmac/k"} {
		e.do(c, "PUT", path, over).expectError(t, path+" 1,000,001 bytes", 400, "invalid request body")
		e.do(c, "PUT", path, huge).expectError(t, path+" huge", 400, "invalid request body")
	}
	e.do(c, "PUT", "/v1/key/import/big", over).expectError(t, "import 1,000,001 bytes", 400, "invalid import key request body")

	// Exactly the limit is fine (1,000,000 bytes of valid JSON).
	exact := `{"message":""}` + strings.Repeat(" ", MB-len(`{"message":""}`))
	if r := e.do(c, "PUT", "/v1/key/hmac/k", exact); r.code != 200 {
		t.Errorf("hmac with exactly 1,000,000 bytes: %d %s", r.code, r.body)
	}
	// A 700 KB plaintext still succeeds (base64 inflates it to ~933 KB).
	pt := make([]byte, 700_000)
	body, _ := json.Marshal(encryptRequest{Plaintext: pt})
	r := e.do(c, "PUT", "/v1/key/encrypt/k", string(body))
	var out encryptResponse
	if r.code != 200 || json.Unmarshal([]byte(r.body), &out) != nil || len(out.Ciphertext) != len(pt)+44 {
		t.Errorf("700 KB encrypt: %d, %d bytes of ciphertext", r.code, len(out.Ciphertext))
	}
}

// Per-route deadlines reach the cluster calls and a timed-out write is a
// clean 503, well before the connection would hang.
func TestDeadline(t *testing.T) {
	e := newEnv(t, func(_ *env, cfg *Config, _ *Deps) {
		cfg.Routes = map[string]RouteConfig{"/v1/key/create/": {Timeout: 200 * time.Millisecond}}
	})
	e.fc.set(func(f *fakeCluster) {
		f.applyHook = func(ctx context.Context, _ fsm.Command) error {
			<-ctx.Done()
			return ctx.Err()
		}
	})
	start := time.Now()
	e.do(e.client(&e.admin, false), "PUT", "/v1/key/create/slow", nil).expectError(t, "slow create", 503, "request timed out")
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

// A panic in a handler is a logged 500, never a crash.
func TestPanicRecovery(t *testing.T) {
	e := newEnv(t)
	e.fc.set(func(f *fakeCluster) { f.getHook = func(string) { panic("unexpected") } })
	e.do(e.client(&e.admin, false), "GET", "/v1/key/describe/k", nil).expectError(t, "panic", 500, "internal server error")
	if !strings.Contains(e.logs.String(), "panic serving request") {
		t.Errorf("panic not logged: %s", e.logs.String())
	}
}

// §16 item 4 and §1.1: skip_auth downgrades the TLS mode; a client
// without a certificate reaches the skip_auth route only.
func TestSkipAuth(t *testing.T) {
	mode, err := ClientAuth("", true)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, withClientAuth(mode), func(_ *env, cfg *Config, _ *Deps) {
		cfg.Routes = map[string]RouteConfig{"/v1/status": {SkipAuth: true}, "/no/such/route": {SkipAuth: true}}
	})
	anon := e.client(nil, false)
	if r := e.do(anon, "GET", "/v1/status", nil); r.code != 200 {
		t.Errorf("skip_auth without a certificate: %d %s", r.code, r.body)
	}
	e.do(anon, "GET", "/v1/ready", nil).expectError(t, "ready without cert", 400, "tls: client certificate is required")
	e.do(anon, "PUT", "/v1/key/create/k", nil).expectError(t, "create without cert", 400, "tls: client certificate is required")
	e.do(anon, "GET", "/v1/identity/self/describe", nil).expectError(t, "self without cert", 400, "tls: client certificate is required")
	if r := e.do(e.client(&e.stranger, false), "GET", "/v1/status", nil); r.code != 200 {
		t.Errorf("skip_auth with an unknown identity: %d", r.code)
	}
	e.do(e.client(&e.stranger, false), "GET", "/v1/ready", nil).expectError(t, "stranger ready", 403, "not authorized: insufficient permissions")
}

func TestClientAuth(t *testing.T) {
	for _, tc := range []struct {
		mode string
		skip bool
		want tls.ClientAuthType
		err  bool
	}{
		{"", false, tls.RequireAnyClientCert, false},
		{"off", false, tls.RequireAnyClientCert, false},
		{"on", false, tls.RequireAndVerifyClientCert, false},
		{"", true, tls.RequestClientCert, false},
		{"off", true, tls.RequestClientCert, false},
		{"on", true, tls.VerifyClientCertIfGiven, false},
		{"maybe", false, 0, true},
	} {
		got, err := ClientAuth(tc.mode, tc.skip)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ClientAuth(%q, %v) = %v, %v", tc.mode, tc.skip, got, err)
		}
	}
	c := Config{Routes: map[string]RouteConfig{"/v1/unknown": {SkipAuth: true}, "/v1/status": {Timeout: time.Second}}}
	if c.AnySkipAuth() {
		t.Error("AnySkipAuth counted an unknown route")
	}
	c.Routes["/v1/key/list/"] = RouteConfig{SkipAuth: true}
	if !c.AnySkipAuth() {
		t.Error("AnySkipAuth missed /v1/key/list/")
	}
}
