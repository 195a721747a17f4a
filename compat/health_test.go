package compat

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Health on a real three-node cluster (issue 4): every node ready with
// its checks OK; a node that cannot unseal is unready with the "seal"
// check failing, and the other nodes' `kmsd cluster status --json` shows
// it; a node that lost quorum reports "raft" degraded but stays ready and
// keeps serving crypto from its replica.

// healthReport is the JSON of GET /v1/health.
type healthReport struct {
	Live   bool   `json:"live"`
	Ready  bool   `json:"ready"`
	Status string `json:"status"`
	Checks []struct {
		Name     string `json:"name"`
		Status   string `json:"status"`
		Message  string `json:"message"`
		Liveness bool   `json:"liveness"`
	} `json:"checks"`
}

func (r healthReport) check(name string) (status, message string) {
	for _, c := range r.Checks {
		if c.Name == name {
			return c.Status, c.Message
		}
	}
	return "", ""
}

func (r healthReport) String() string { b, _ := json.Marshal(r); return string(b) }

// health fetches /v1/health as the admin.
func (n *node) health(t testing.TB) (int, healthReport, error) {
	r, err := n.raw("admin-health", apiKeyCert(t, mustAPIKey(t, adminAPIKey))).try("GET", "/v1/health", nil)
	if err != nil {
		return 0, healthReport{}, err
	}
	var rep healthReport
	if err := json.Unmarshal(r.Body, &rep); err != nil {
		return r.Status, rep, fmt.Errorf("/v1/health body %q: %v", trunc(r.Body), err)
	}
	return r.Status, rep, nil
}

// cliHealth is the health part of `kmsd cluster status --json`.
type cliHealth struct {
	Members []struct {
		ID        string `json:"id"`
		Reachable bool   `json:"reachable"`
		Health    string `json:"health"`
		Ready     *bool  `json:"ready"`
		Live      *bool  `json:"live"`
		Status    string `json:"status"`
		Checks    []struct {
			Name, Status, Message string
		} `json:"checks"`
	} `json:"members"`
}

func (n *node) cliHealth(t testing.TB) (cliHealth, string) {
	t.Helper()
	st, err := n.clusterStatus()
	if err != nil {
		t.Fatal(err)
	}
	var h cliHealth
	if err := json.Unmarshal([]byte(st.Raw), &h); err != nil {
		t.Fatalf("cluster status --json: %v: %s", err, st.Raw)
	}
	return h, st.Raw
}

func TestClusterHealth(t *testing.T) {
	c := startCluster(t, 3)
	for _, tc := range []struct {
		name string
		f    func(*testing.T, *testCluster)
	}{
		{"AllReady", healthAllReady},
		{"SealedMember", healthSealedMember},
		{"QuorumLoss", healthQuorumLoss},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t0 := time.Now()
			c.ensureHealthy(t)
			tc.f(t, c)
			t.Logf("%s took %v", tc.name, time.Since(t0).Round(time.Millisecond))
		})
	}
}

func healthAllReady(t *testing.T, c *testCluster) {
	for _, n := range c.nodes {
		// Right after formation a follower may not have heard of the
		// leader for a moment: wait until raft reports OK.
		var rep healthReport
		var code int
		waitFor(t, clusterWait, n.opts.Name+" to report raft ok", func() (bool, string) {
			var err error
			code, rep, err = n.health(t)
			if err != nil {
				return false, err.Error()
			}
			st, _ := rep.check("raft")
			return st == "ok", rep.String()
		})
		if code != http.StatusOK || !rep.Ready || !rep.Live || rep.Status == "fail" {
			t.Errorf("%s: /v1/health %d %s", n.opts.Name, code, rep)
		}
		for _, name := range []string{"seal", "raft", "store"} {
			if st, msg := rep.check(name); st != "ok" {
				t.Errorf("%s: check %s = %q %q, want ok", n.opts.Name, name, st, msg)
			}
		}
		for _, ch := range rep.Checks {
			if ch.Status == "fail" {
				t.Errorf("%s: check %s fails: %s", n.opts.Name, ch.Name, ch.Message)
			}
		}
		raw := n.raw("admin", apiKeyCert(t, c.admin))
		wantEmpty200(t, raw.do(t, "GET", "/v1/ready", nil))
		wantEmpty200(t, raw.do(t, "GET", "/v1/health/live", nil))
		r := raw.do(t, "GET", "/v1/status", nil)
		var st map[string]any
		if err := json.Unmarshal(r.Body, &st); err != nil {
			t.Fatal(err)
		}
		rs, _ := st["raft"].(map[string]any)
		if st["ready"] != true || st["health"] == "fail" || rs == nil || rs["node_id"] != n.opts.Name || rs["members"] != 3.0 {
			t.Errorf("%s: /v1/status %s", n.opts.Name, r.Body)
		}
		if ok, err := n.client(c.admin).IsReady(ctxT(t)); !ok || err != nil {
			t.Errorf("%s: kes IsReady %v %v", n.opts.Name, ok, err)
		}
	}
	h, raw := c.nodes[1].cliHealth(t)
	if len(h.Members) != 3 {
		t.Fatalf("cluster status members: %s", raw)
	}
	for _, m := range h.Members {
		if !m.Reachable || (m.Health != "ready" && m.Health != "degraded") || m.Ready == nil || !*m.Ready || m.Live == nil || !*m.Live {
			t.Errorf("cluster status: member %s: %s", m.ID, raw)
		}
	}
}

func healthSealedMember(t *testing.T, c *testCluster) {
	s := c.nodes[2]
	s.stop(t, syscall.SIGTERM)
	s.start(t, s.env("0000")) // wrong PIN: the node runs raft, but stays sealed
	defer func() {
		s.stop(t, syscall.SIGTERM)
		s.start(t, nil)
		s.waitServing(t)
	}()

	var rep healthReport
	var code int
	waitFor(t, clusterWait, "the sealed node to report why", func() (bool, string) {
		var err error
		code, rep, err = s.health(t)
		if err != nil {
			return false, err.Error()
		}
		_, msg := rep.check("seal")
		return strings.Contains(msg, "PIN"), rep.String()
	})
	st, msg := rep.check("seal")
	if code != http.StatusServiceUnavailable || rep.Ready || !rep.Live || st != "fail" || !strings.Contains(msg, "not retrying") {
		t.Errorf("sealed node: /v1/health %d %s", code, rep)
	}
	t.Logf("sealed node's seal check: %s", msg)
	raw := s.raw("admin", apiKeyCert(t, c.admin))
	wantError(t, raw.do(t, "GET", "/v1/ready", nil), http.StatusGatewayTimeout, "key store is not reachable")
	wantEmpty200(t, raw.do(t, "GET", "/v1/health/live", nil)) // a restart would not help

	// Another node's CLI shows the member unready with the failing check.
	var h cliHealth
	var out string
	waitFor(t, clusterWait, "cluster status to show node2 unready", func() (bool, string) {
		h, out = c.nodes[0].cliHealth(t)
		for _, m := range h.Members {
			if m.ID == s.opts.Name && m.Health == "unready" {
				return true, out
			}
		}
		return false, out
	})
	for _, m := range h.Members {
		if m.ID != s.opts.Name {
			if m.Health != "ready" && m.Health != "degraded" {
				t.Errorf("member %s: %s", m.ID, out)
			}
			continue
		}
		found := false
		for _, ch := range m.Checks {
			found = found || (ch.Name == "seal" && ch.Status == "fail" && strings.Contains(ch.Message, "PIN"))
		}
		if !m.Reachable || m.Ready == nil || *m.Ready || m.Status != "fail" || !found {
			t.Errorf("sealed member in cluster status --json: %s", out)
		}
	}
	text, err := c.nodes[0].cli("cluster", "status", "--config", c.nodes[0].cfgPath)
	if err != nil || !bytes.Contains(text, []byte("unready")) || !bytes.Contains(text, []byte("node is sealed")) {
		t.Errorf("cluster status text: %v\n%s", err, text)
	}
	t.Logf("cluster status:\n%s", text)
}

func healthQuorumLoss(t *testing.T, c *testCluster) {
	ctx := ctxT(t)
	s := c.leader(t)
	sc := s.client(c.admin)
	if err := sc.CreateKey(ctx, "h-key"); err != nil {
		t.Fatal(err)
	}
	dek, err := sc.GenerateKey(ctx, "h-key", []byte("h"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes {
		if n != s {
			n.stop(t, syscall.SIGTERM)
		}
	}
	t0 := time.Now()
	var rep healthReport
	var code int
	waitFor(t, clusterWait, "the survivor to report no leader", func() (bool, string) {
		code, rep, err = s.health(t)
		if err != nil {
			return false, err.Error()
		}
		st, msg := rep.check("raft")
		return st == "degraded" && strings.Contains(msg, "no leader"), rep.String()
	})
	t.Logf("raft degraded %v after losing quorum: %s", time.Since(t0).Round(time.Millisecond), rep)
	if code != http.StatusOK || !rep.Ready || rep.Status != "degraded" {
		t.Errorf("survivor: /v1/health %d %s", code, rep)
	}
	raw := s.raw("admin", apiKeyCert(t, c.admin))
	wantEmpty200(t, raw.do(t, "GET", "/v1/ready", nil))
	r := raw.do(t, "GET", "/v1/status", nil)
	var st map[string]any
	if err := json.Unmarshal(r.Body, &st); err != nil {
		t.Fatal(err)
	}
	if rs, _ := st["raft"].(map[string]any); st["ready"] != true || st["health"] != "degraded" || rs == nil || rs["leader"] != "" {
		t.Errorf("survivor: /v1/status %s", r.Body)
	}
	cl := s.client(c.admin)
	if _, err := cl.GenerateKey(ctx, "h-key", nil); err != nil {
		t.Errorf("survivor: GenerateKey: %v", err)
	}
	if pt, err := cl.Decrypt(ctx, "h-key", dek.Ciphertext, []byte("h")); err != nil || !bytes.Equal(pt, dek.Plaintext) {
		t.Errorf("survivor: Decrypt: %v", err)
	}
	// The survivor's CLI: its own row is degraded, the others unreachable.
	h, out := s.cliHealth(t)
	for _, m := range h.Members {
		want := "unreachable"
		if m.ID == s.opts.Name {
			want = "degraded"
		}
		if m.Health != want {
			t.Errorf("member %s health %q, want %q: %s", m.ID, m.Health, want, out)
		}
	}
}
