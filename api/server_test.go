package api

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsd/kmsd/fsm"
)

func TestNewValidation(t *testing.T) {
	const id1 = "3ecfcdf38fcbe141ae26a1030f81e96b753365a46760ae6b578698a97c59fd22"
	const id2 = "ea9826089311fe44d7590408ede9150f7c637b6cab0a91ee6fe1aa5d9fb366f6"
	fc := newFakeCluster()
	deps := Deps{Store: fc, Cluster: fc}
	for _, tc := range []struct {
		name string
		cfg  Config
		deps Deps
		err  string // substring; "" = success
	}{
		{"ok", Config{Admin: id1, Policies: map[string]Policy{"p": {Identities: []string{id2}}}}, deps, ""},
		{"disabled admin", Config{Admin: "disabled"}, deps, ""},
		{"no admin", Config{}, deps, "admin identity is empty"},
		{"bad policy name", Config{Admin: id1, Policies: map[string]Policy{"my.policy": {}}}, deps, "invalid policy name"},
		{"bad identity", Config{Admin: id1, Policies: map[string]Policy{"p": {Identities: []string{"not valid!"}}}}, deps, "invalid identity"},
		{"identity twice", Config{Admin: id1, Policies: map[string]Policy{"a": {Identities: []string{id2}}, "b": {Identities: []string{id2}}}}, deps, "identity already has a policy"},
		{"admin in policy", Config{Admin: id1, Policies: map[string]Policy{"a": {Identities: []string{id1}}}}, deps, "admin identity cannot be assigned"},
		{"negative timeout", Config{Admin: id1, Routes: map[string]RouteConfig{"/v1/status": {Timeout: -time.Second}}}, deps, "timeout must not be negative"},
		{"unknown route", Config{Admin: id1, Routes: map[string]RouteConfig{"/nope": {Timeout: time.Second}}}, deps, ""},
		{"no store", Config{Admin: id1}, Deps{Cluster: fc}, "required"},
	} {
		_, err := New(tc.cfg, tc.deps)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.err)
		}
	}
	reg := prometheus.NewRegistry()
	if _, err := New(Config{Admin: id1, Registry: reg}, deps); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Admin: id1, Registry: reg}, deps); err == nil {
		t.Error("registering the metrics twice succeeded")
	}
}

// §16 item 53 (the API part): Reload swaps admin, policies and routes for
// new requests; in-flight requests keep their configuration; an invalid
// config changes nothing.
func TestReload(t *testing.T) {
	e := newEnv(t)
	user := e.client(&e.user, false)

	// A create by the user blocks in Apply while the reload removes its
	// policy; it still completes under the old policy.
	entered, release := make(chan struct{}), make(chan struct{})
	e.fc.set(func(f *fakeCluster) {
		f.applyHook = func(ctx context.Context, _ fsm.Command) error {
			close(entered)
			<-release
			return nil
		}
	})
	result := make(chan response, 1)
	go func() { result <- e.do(user, "PUT", "/v1/key/create/app-inflight", nil) }()
	<-entered

	next := e.cfg
	next.Policies = map[string]Policy{"ops": {Allow: []string{"/v1/api"}, Identities: []string{e.user.Identity()}}}
	next.Routes = map[string]RouteConfig{"/v1/api": {Timeout: 3 * time.Second}}
	if err := e.srv.Reload(next); err != nil {
		t.Fatal(err)
	}
	close(release)
	(<-result).expectEmpty(t, "in-flight create")
	e.fc.set(func(f *fakeCluster) { f.applyHook = nil })

	e.do(user, "PUT", "/v1/key/create/app-2", nil).expectError(t, "create after reload", 403, "not authorized: insufficient permissions")
	if r := e.do(user, "GET", "/v1/api", nil); r.code != 200 || !strings.Contains(r.body, `"path":"/v1/api","max_body":0,"timeout":3}`) {
		t.Errorf("api after reload: %d %s", r.code, r.body)
	}
	e.do(user, "GET", "/v1/identity/self/describe", nil).expect(t, "self after reload", 200,
		`{"identity":"`+e.user.Identity()+`","admin":false,"created_at":`+startTime+`,"created_by":"`+e.admin.Identity()+`","policy":"ops","allow":{"/v1/api":{}}}`+"\n")

	// Make the user the admin.
	next.Admin, next.Policies = e.user.Identity(), nil
	if err := e.srv.Reload(next); err != nil {
		t.Fatal(err)
	}
	e.do(user, "PUT", "/v1/key/create/anything", nil).expectEmpty(t, "new admin")
	e.do(e.client(&e.admin, false), "GET", "/v1/status", nil).expectError(t, "old admin", 403, "not authorized: insufficient permissions")

	bad := next
	bad.Admin = ""
	if err := e.srv.Reload(bad); err == nil {
		t.Fatal("invalid reload accepted")
	}
	e.do(user, "PUT", "/v1/key/create/still-admin", nil).expectEmpty(t, "after rejected reload")
}

// The real replica satisfies the API's consumer-side interface.
var _ KeyStore = (*fsm.FSM)(nil)
