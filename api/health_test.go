package api

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/kmsd/kmsd/cluster"
	"github.com/kmsd/kmsd/health"
)

// check is a fake health check.
type check struct {
	name   string
	kind   health.Kind
	status health.Status
	msg    string
}

func withChecks(checks ...check) envOption {
	return func(_ *env, _ *Config, deps *Deps) {
		reg := health.NewRegistry(func() time.Time { return time.Date(2026, 11, 22, 18, 0, 0, 0, time.UTC) })
		for _, c := range checks {
			reg.Register(c.name, c.kind, func(context.Context) (health.Status, string) { return c.status, c.msg })
		}
		deps.Health = reg
	}
}

var healthTests = []struct {
	name    string
	checks  []check
	sealed  bool
	storeKO bool

	ready, live  int    // status of /v1/ready and /v1/health/live
	readyMsg     string // error message of /v1/ready (non-200)
	liveMsg      string // error message of /v1/health/live (non-200)
	status       health.Status
	failing      []string // names of the non-OK checks in /v1/health
	reportLive   bool
	statusHealth string // "health" on /v1/status
}{
	{
		name:   "ok",
		checks: []check{{"raft", health.Readiness, health.OK, "leader, term 2"}, {"audit", health.Readiness, health.OK, ""}},
		ready:  200, live: 200, status: health.OK, reportLive: true, statusHealth: "ok",
	},
	{
		name:   "degraded is still ready",
		checks: []check{{"raft", health.Readiness, health.Degraded, "no leader known"}, {"audit", health.Readiness, health.OK, ""}},
		ready:  200, live: 200, status: health.Degraded, failing: []string{"raft"}, reportLive: true, statusHealth: "degraded",
	},
	{
		name: "readiness fail",
		checks: []check{
			{"raft", health.Readiness, health.Fail, "node3 is not in the raft configuration"},
			{"certificates", health.Readiness, health.Degraded, "expires in 3 days"},
			{"audit", health.Readiness, health.Fail, ""},
		},
		ready: 503, readyMsg: "not ready: failing checks: audit; raft (node3 is not in the raft configuration)",
		live: 200, status: health.Fail, failing: []string{"audit", "certificates", "raft"}, reportLive: true, statusHealth: "fail",
	},
	{
		name:   "liveness fail",
		checks: []check{{"raft", health.Readiness, health.OK, ""}, {"store", health.Liveness, health.Fail, "read failed"}},
		ready:  503, readyMsg: "not ready: failing checks: store (read failed)",
		live: 503, liveMsg: "not live: failing checks: store (read failed)",
		status: health.Fail, failing: []string{"store"}, statusHealth: "fail",
	},
	{
		name:   "sealed: the KES 504 wins, the API's own seal check fails",
		checks: []check{{"raft", health.Readiness, health.Fail, "not joined"}},
		sealed: true,
		ready:  504, readyMsg: "key store is not reachable",
		live: 200, status: health.Fail, failing: []string{"raft", "seal"}, reportLive: true, statusHealth: "fail",
	},
	{
		name:   "sealed: the registry's seal check replaces the API's",
		checks: []check{{"seal", health.Readiness, health.Fail, "node is sealed: PIN incorrect"}},
		sealed: true,
		ready:  504, readyMsg: "key store is not reachable",
		live: 200, status: health.Fail, failing: []string{"seal"}, reportLive: true, statusHealth: "fail",
	},
	{
		name:    "store down: the KES 502 wins, the API's own store check is liveness",
		storeKO: true,
		ready:   502, readyMsg: "key store is unavailable",
		live: 503, liveMsg: "not live: failing checks: store (local key store read failed)",
		status: health.Fail, failing: []string{"store"}, statusHealth: "fail",
	},
}

// TestHealthEndpoints: /v1/ready, /v1/health, /v1/health/live and the
// health fields of /v1/status over a registry of fake checks.
func TestHealthEndpoints(t *testing.T) {
	for _, tc := range healthTests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withChecks(tc.checks...))
			if tc.sealed {
				e.kr.Store(nil)
			}
			if tc.storeKO {
				e.fc.set(func(f *fakeCluster) { f.getErr = errBoom })
			}
			c := e.client(&e.admin, false)

			if r := e.do(c, "GET", "/v1/ready", nil); tc.ready == 200 {
				r.expectEmpty(t, "ready")
			} else {
				r.expectError(t, "ready", tc.ready, tc.readyMsg)
			}
			if r := e.do(c, "GET", "/v1/health/live", nil); tc.live == 200 {
				r.expectEmpty(t, "live")
			} else {
				r.expectError(t, "live", tc.live, tc.liveMsg)
			}

			r := e.do(c, "GET", "/v1/health", nil)
			var rep health.Report
			if err := json.Unmarshal([]byte(r.body), &rep); err != nil || r.hdr.Get("Content-Type") != "application/json" {
				t.Fatalf("/v1/health: %d %q: %v", r.code, r.body, err)
			}
			wantCode := 200
			if tc.ready != 200 {
				wantCode = 503
			}
			var failing, names []string
			for _, ch := range rep.Failing() {
				failing = append(failing, ch.Name)
			}
			for _, ch := range rep.Checks {
				names = append(names, ch.Name)
			}
			switch {
			case r.code != wantCode:
				t.Errorf("/v1/health: %d, want %d: %s", r.code, wantCode, r.body)
			case rep.Ready != (tc.ready == 200) || rep.Live != tc.reportLive || rep.Status != tc.status:
				t.Errorf("/v1/health: ready %v live %v status %v: %s", rep.Ready, rep.Live, rep.Status, r.body)
			case !slices.Equal(failing, tc.failing):
				t.Errorf("/v1/health failing checks %v, want %v", failing, tc.failing)
			case !slices.IsSorted(names) || !slices.Contains(names, "seal") || !slices.Contains(names, "store"):
				t.Errorf("/v1/health checks %v: want sorted, with seal and store", names)
			case !rep.Time.Equal(time.Date(2026, 11, 22, 18, 0, 0, 0, time.UTC)):
				t.Errorf("/v1/health time %v", rep.Time)
			}

			var st struct {
				Ready  bool   `json:"ready"`
				Health string `json:"health"`
			}
			r = e.do(c, "GET", "/v1/status", nil)
			if err := json.Unmarshal([]byte(r.body), &st); err != nil || r.code != 200 {
				t.Fatalf("/v1/status: %d %s", r.code, r.body)
			}
			if st.Ready != (tc.ready == 200) || st.Health != tc.statusHealth {
				t.Errorf("/v1/status ready %v health %q, want %v %q", st.Ready, st.Health, tc.ready == 200, tc.statusHealth)
			}
		})
	}
}

// TestHealthRoutesAuth: the extensions follow the policy rules of the
// other routes, honour skip_auth, and are not listed by /v1/api.
func TestHealthRoutesAuth(t *testing.T) {
	mode, err := ClientAuth("", true)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, withClientAuth(mode), func(_ *env, cfg *Config, _ *Deps) {
		cfg.Routes = map[string]RouteConfig{"/v1/health/live": {SkipAuth: true}}
		p := cfg.Policies["app"]
		p.Allow = append(p.Allow, "/v1/health")
		cfg.Policies["app"] = p
	})
	anon, stranger, user := e.client(nil, false), e.client(&e.stranger, false), e.client(&e.user, false)
	e.do(anon, "GET", "/v1/health/live", nil).expectEmpty(t, "anonymous live (skip_auth)")
	e.do(anon, "GET", "/v1/health", nil).expectError(t, "anonymous health", 400, "tls: client certificate is required")
	e.do(stranger, "GET", "/v1/health", nil).expectError(t, "stranger health", 403, "not authorized: insufficient permissions")
	if r := e.do(user, "GET", "/v1/health", nil); r.code != 200 {
		t.Errorf("user allowed /v1/health: %d %s", r.code, r.body)
	}
	e.do(e.client(&e.admin, false), "POST", "/v1/health", nil).expectError(t, "POST health", 405, "received method 'POST' expected 'GET'")
	if r := e.do(e.client(&e.admin, false), "GET", "/v1/health/", nil); r.code != 404 {
		t.Errorf("/v1/health/: %d, want 404", r.code)
	}
	var apis []apiResponse
	r := e.do(e.client(&e.admin, false), "GET", "/v1/api", nil)
	if err := json.Unmarshal([]byte(r.body), &apis); err != nil {
		t.Fatal(err)
	}
	for _, a := range apis {
		if a.Path == "/v1/health" || a.Path == "/v1/health/live" {
			t.Errorf("/v1/api lists the extension %s", a.Path)
		}
	}
	if len(apis) != 22 {
		t.Errorf("/v1/api lists %d routes, want 22", len(apis))
	}
}

// TestStatusExtensions: the certificate expiry and raft summary on
// /v1/status, and the fields kms-go decodes still there.
func TestStatusExtensions(t *testing.T) {
	notAfter := time.Date(2027, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600))
	e := newEnv(t, func(_ *env, _ *Config, deps *Deps) {
		deps.CertExpiry = func() (string, string, time.Time, bool) { return "api server", "CN=kmsd-1", notAfter, true }
		deps.Raft = func() cluster.Status {
			return cluster.Status{NodeID: "n1", State: "Follower", Leader: "n2", Term: 7, CommitIndex: 40, AppliedIndex: 39,
				Members: []cluster.Member{{ID: "n1"}, {ID: "n2"}, {ID: "n3"}}}
		}
	})
	r := e.do(e.client(&e.admin, false), "GET", "/v1/status", nil)
	var st map[string]any
	if err := json.Unmarshal([]byte(r.body), &st); err != nil || r.code != 200 {
		t.Fatalf("/v1/status: %d %s", r.code, r.body)
	}
	raft, _ := st["raft"].(map[string]any)
	switch {
	case st["cert_expiry"] != "2027-01-02T02:04:05Z" || st["cert_expiry_name"] != "api server" || st["cert_expiry_subject"] != "CN=kmsd-1":
		t.Errorf("cert expiry fields: %s", r.body)
	case raft == nil || raft["node_id"] != "n1" || raft["state"] != "Follower" || raft["leader"] != "n2" ||
		raft["term"] != 7.0 || raft["commit_index"] != 40.0 || raft["applied_index"] != 39.0 || raft["members"] != 3.0:
		t.Errorf("raft summary: %s", r.body)
	case st["ready"] != true || st["health"] != "ok" || st["keystore_latency"] == nil:
		t.Errorf("status: %s", r.body)
	}

	// Without the optional deps, the fields are omitted.
	e = newEnv(t, func(_ *env, _ *Config, deps *Deps) {
		deps.CertExpiry = func() (string, string, time.Time, bool) { return "", "", time.Time{}, false }
	})
	r = e.do(e.client(&e.admin, false), "GET", "/v1/status", nil)
	clear(st)
	if err := json.Unmarshal([]byte(r.body), &st); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"cert_expiry", "cert_expiry_name", "raft"} {
		if _, ok := st[f]; ok {
			t.Errorf("%s present without a source: %s", f, r.body)
		}
	}
}
