package compat

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/kms-go/kes"
	"github.com/prometheus/common/expfmt"
)

// Multi-process cluster harness: n kmsd processes on loopback, each with
// its own SoftHSM token, data dir, API port and node-channel port, all
// with the same cluster.peers list. `kmsd init` runs on node 0 only (it
// writes the seal stanza and the bootstrap marker); the others join
// through the peers and receive the REK over the node channel.

const (
	// clusterWait bounds every cluster-level wait (formation, leader,
	// convergence, catch-up).
	clusterWait = 60 * time.Second
	// clusterPoll is the polling interval of those waits.
	clusterPoll = 50 * time.Millisecond
	// shortRouteTimeout is the API timeout of create and describe on
	// cluster nodes: without a leader they answer 503 after it, which
	// bounds the quorum-loss test (the default 15 s would not). An
	// election takes well under a second, so creates during a failover
	// are not affected.
	shortRouteTimeout = "5s"
)

type testCluster struct {
	t     *testing.T
	nodes []*node
	peers []string // cluster.peers of every node
	admin kes.APIKey

	barriers int // write-barrier keys created so far
}

// startCluster starts an n-node cluster and waits until every node is
// ready, unsealed, a voter, and has applied the same index.
func startCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	t0 := time.Now()
	c := newTestCluster(t, n, func(i int, o *nodeOptions) {
		o.Join = i > 0
		o.API = map[string]apiConf{
			"/v1/key/create/":   {Timeout: shortRouteTimeout},
			"/v1/key/describe/": {Timeout: shortRouteTimeout},
		}
	})
	c.startAll(t)
	t.Logf("cluster of %d nodes formed in %v (peers %v)", n, time.Since(t0).Round(time.Millisecond), c.peers)
	return c
}

// newTestCluster prepares n nodes (tokens, certificates, configs) on free
// loopback ports, each with every node's cluster address as its peers,
// without starting them; opt adjusts node i's options.
func newTestCluster(t *testing.T, n int, opt func(i int, o *nodeOptions)) *testCluster {
	t.Helper()
	requireSoftHSM(t)
	c := &testCluster{t: t, admin: mustAPIKey(t, adminAPIKey)}
	addrs := make([]string, n)
	for i := range n {
		addrs[i] = freePort(t)
		c.peers = append(c.peers, freePort(t))
	}
	for i := range n {
		o := nodeOptions{
			Name:        fmt.Sprintf("node%d", i),
			Addr:        addrs[i],
			ClusterAddr: c.peers[i],
			Peers:       c.peers,
		}
		opt(i, &o)
		c.nodes = append(c.nodes, newNode(t, o))
	}
	return c
}

// startAll starts node0, then the others, and waits until all serve and
// have converged.
func (c *testCluster) startAll(t *testing.T) {
	t.Helper()
	c.nodes[0].start(t, nil)
	c.nodes[0].waitServing(t)
	for _, nd := range c.nodes[1:] {
		nd.start(t, nil)
	}
	for _, nd := range c.nodes[1:] {
		nd.waitServing(t)
	}
	c.waitConverged(t)
}

func (c *testCluster) endpoints() []string {
	var eps []string
	for _, n := range c.nodes {
		eps = append(eps, "https://"+n.addr)
	}
	return eps
}

// client returns a kms-go client with every node's endpoint, the list
// rotated by rot (kms-go v0.3.1 sends everything to one "localhost"
// endpoint and moves on only on a transport error or a 5xx, so clients
// with different rotations spread the load).
func (c *testCluster) client(t testing.TB, key kes.APIKey, rot int) *kes.Client {
	eps := c.endpoints()
	rot %= len(eps)
	eps = append(eps[rot:], eps[:rot]...)
	cl := kes.NewClientWithConfig(eps[0], &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{apiKeyCert(t, key)},
		RootCAs:      getPKI(t).pool,
	})
	cl.Endpoints = eps
	t.Cleanup(cl.HTTPClient.CloseIdleConnections)
	return cl
}

// nodeNames maps each node's API host:port to its name.
func (c *testCluster) nodeNames() map[string]string {
	m := map[string]string{}
	for _, n := range c.nodes {
		m[n.addr] = n.opts.Name
	}
	return m
}

func (c *testCluster) running() []*node {
	var out []*node
	for _, n := range c.nodes {
		if n.running() {
			out = append(out, n)
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// Raft state from /v1/metrics (kmsd_raft_*).

type raftInfo struct {
	State   int // 0 follower, 1 candidate, 2 leader, 3 shutdown
	Term    uint64
	Commit  uint64
	Applied uint64
	Members int
	Voters  int
}

func (r raftInfo) String() string {
	return fmt.Sprintf("state=%d term=%d commit=%d applied=%d members=%d voters=%d", r.State, r.Term, r.Commit, r.Applied, r.Members, r.Voters)
}

// adminHTTP is a raw HTTP client authenticating as the admin.
func (n *node) adminHTTP() *http.Client {
	n.httpOnce.Do(func() {
		n.httpc = newHTTPClient([]tls.Certificate{apiKeyCert(n.t, mustAPIKey(n.t, adminAPIKey))}, true, false)
		n.httpc.Timeout = 5 * time.Second
		n.t.Cleanup(n.httpc.CloseIdleConnections)
	})
	return n.httpc
}

// raft scrapes the node's kmsd_raft_* metrics.
func (n *node) raft() (raftInfo, error) {
	resp, err := n.adminHTTP().Get(n.url("/v1/metrics"))
	if err != nil {
		return raftInfo{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return raftInfo{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return raftInfo{}, fmt.Errorf("GET /v1/metrics: %s %q", resp.Status, trunc(body))
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return raftInfo{}, fmt.Errorf("parse /v1/metrics: %w", err)
	}
	get := func(name string) (float64, error) {
		f, ok := fams[name]
		if !ok || len(f.Metric) != 1 {
			return 0, fmt.Errorf("/v1/metrics lacks a single-sample %s", name)
		}
		m := f.Metric[0]
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue(), nil
		case m.Counter != nil:
			return m.Counter.GetValue(), nil
		case m.Untyped != nil:
			return m.Untyped.GetValue(), nil
		}
		return 0, fmt.Errorf("%s: unexpected type %v", name, f.GetType())
	}
	var r raftInfo
	for _, x := range []struct {
		name string
		set  func(float64)
	}{
		{"kmsd_raft_state", func(v float64) { r.State = int(v) }},
		{"kmsd_raft_term", func(v float64) { r.Term = uint64(v) }},
		{"kmsd_raft_commit_index", func(v float64) { r.Commit = uint64(v) }},
		{"kmsd_raft_applied_index", func(v float64) { r.Applied = uint64(v) }},
		{"kmsd_raft_members", func(v float64) { r.Members = int(v) }},
		{"kmsd_raft_voters", func(v float64) { r.Voters = int(v) }},
	} {
		v, err := get(x.name)
		if err != nil {
			return raftInfo{}, err
		}
		if math.IsNaN(v) {
			return raftInfo{}, fmt.Errorf("%s is NaN", x.name)
		}
		x.set(v)
	}
	return r, nil
}

// waitFor polls f every clusterPoll until it reports success, at most
// limit long; it fails the test with f's last note.
func waitFor(t testing.TB, limit time.Duration, what string, f func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	var last string
	for i := 0; i <= int(limit/clusterPoll)+1; i++ {
		ok, note := f()
		if ok {
			return
		}
		last = note
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(clusterPoll)
	}
	t.Fatalf("waited %v for %s (last: %s)", limit, what, last)
}

// leaderNow polls the running nodes once and returns the one that reports
// itself leader (the highest term if a deposed leader has not noticed
// yet), or nil and what each node said.
func (c *testCluster) leaderNow() (*node, string) {
	var notes []string
	var best *node
	var bestTerm uint64
	for _, n := range c.running() {
		r, err := n.raft()
		if err != nil {
			notes = append(notes, n.opts.Name+": "+err.Error())
			continue
		}
		notes = append(notes, n.opts.Name+": "+r.String())
		if r.State == 2 && r.Term >= bestTerm {
			best, bestTerm = n, r.Term
		}
	}
	return best, strings.Join(notes, "; ")
}

// leader waits until a running node reports itself leader and returns it.
func (c *testCluster) leader(t testing.TB) *node {
	t.Helper()
	var found *node
	waitFor(t, clusterWait, "a leader among the running nodes", func() (bool, string) {
		l, notes := c.leaderNow()
		found = l
		return l != nil, notes
	})
	return found
}

// transferTo makes target the leader with `kmsd cluster transfer NODE`
// (run with target's own config) and waits until it leads.
func (c *testCluster) transferTo(t testing.TB, target *node) {
	t.Helper()
	if l := c.leader(t); l == target {
		return
	}
	if out, err := target.cli("cluster", "transfer", target.opts.Name, "--config", target.cfgPath); err != nil {
		t.Fatalf("kmsd cluster transfer %s: %v\n%s", target.opts.Name, err, out)
	}
	waitFor(t, 15*time.Second, "leadership to move to "+target.opts.Name, func() (bool, string) {
		l, notes := c.leaderNow()
		return l == target, notes
	})
}

// waitConverged waits until every node runs, serves, counts len(nodes)
// voters, and — after a write barrier — all have applied the same index.
func (c *testCluster) waitConverged(t testing.TB) {
	t.Helper()
	for _, n := range c.nodes {
		if !n.running() {
			t.Fatalf("waitConverged: %s is not running", n.opts.Name)
		}
	}
	want := len(c.nodes)
	waitFor(t, clusterWait, fmt.Sprintf("every node to count %d voters", want), func() (bool, string) {
		var notes []string
		ok := true
		for _, n := range c.nodes {
			r, err := n.raft()
			if err != nil {
				ok = false
				notes = append(notes, n.opts.Name+": "+err.Error())
				continue
			}
			notes = append(notes, n.opts.Name+": "+r.String())
			if r.Voters != want || r.Members != want {
				ok = false
			}
		}
		return ok, strings.Join(notes, "; ")
	})
	c.writeBarrier(t)
}

// writeBarrier commits one write (a key create through the leader's API)
// and waits until every running node has applied the same index, at
// least the leader's index after the write. It returns that index.
func (c *testCluster) writeBarrier(t testing.TB) uint64 {
	t.Helper()
	l := c.leader(t)
	c.barriers++
	name := fmt.Sprintf("barrier-%03d", c.barriers)
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	if err := l.client(c.admin).CreateKey(ctx, name); err != nil {
		t.Fatalf("write barrier: create %s on %s: %v", name, l.opts.Name, err)
	}
	lr, err := l.raft()
	if err != nil {
		t.Fatalf("write barrier: %v", err)
	}
	var idx uint64
	waitFor(t, clusterWait, "every running node to apply the same index after a write", func() (bool, string) {
		var notes []string
		var seen []uint64
		for _, n := range c.running() {
			r, err := n.raft()
			if err != nil {
				return false, n.opts.Name + ": " + err.Error()
			}
			notes = append(notes, fmt.Sprintf("%s applied=%d", n.opts.Name, r.Applied))
			seen = append(seen, r.Applied)
		}
		idx = seen[0]
		for _, v := range seen {
			if v != idx || v < lr.Applied {
				return false, strings.Join(notes, ", ") + fmt.Sprintf(" (leader had %d after the write)", lr.Applied)
			}
		}
		return true, ""
	})
	return idx
}

// kill SIGKILLs a node.
func (c *testCluster) kill(t testing.TB, n *node) { t.Helper(); n.stop(t, syscall.SIGKILL) }

// restart starts a stopped node, waits until it serves, then until it has
// applied at least what the leader had applied once the node was serving.
func (c *testCluster) restart(t testing.TB, n *node) {
	t.Helper()
	n.start(t, nil)
	n.waitServing(t)
	c.waitCaughtUp(t, n)
}

// waitCaughtUp waits until n has applied the leader's current applied index.
func (c *testCluster) waitCaughtUp(t testing.TB, n *node) {
	t.Helper()
	l := c.leader(t)
	lr, err := l.raft()
	if err != nil {
		t.Fatalf("leader %s: %v", l.opts.Name, err)
	}
	waitFor(t, clusterWait, fmt.Sprintf("%s to catch up with the leader's applied index %d", n.opts.Name, lr.Applied), func() (bool, string) {
		r, err := n.raft()
		if err != nil {
			return false, err.Error()
		}
		return r.Applied >= lr.Applied, r.String()
	})
}

// ensureHealthy starts any stopped node and waits for convergence: each
// subtest of a shared cluster starts from a healthy three-node cluster.
func (c *testCluster) ensureHealthy(t testing.TB) {
	t.Helper()
	for _, n := range c.nodes {
		if !n.running() {
			n.start(t, nil)
		}
	}
	for _, n := range c.nodes {
		n.waitServing(t)
	}
	c.waitConverged(t)
}

// keyNames lists every key a node holds (single-endpoint client).
func (n *node) keyNames(t testing.TB) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	cl := n.client(mustAPIKey(t, adminAPIKey))
	names, cont, err := cl.ListKeys(ctx, "", 0)
	if err != nil {
		t.Fatalf("list keys on %s: %v", n.opts.Name, err)
	}
	if cont != "" {
		t.Fatalf("list keys on %s: continue_at %q; the server lists everything at once", n.opts.Name, cont)
	}
	slices.Sort(names)
	return names
}

// ---------------------------------------------------------------------------
// kmsd cluster / snapshot CLI.

// cli runs `kmsd args...` with the node's environment, bounded.
func (n *node) cli(args ...string) ([]byte, error) {
	return n.kmsd(n.env(hsmPIN), args...)
}

type cliMember struct {
	ID, Addr, Suffrage string
	Reachable          *bool
}

// cliStatus is what the harness needs from `kmsd cluster status --json`.
// The decoder is lenient about key spelling (node_id, NodeID, nodeId).
type cliStatus struct {
	NodeID, State, Leader string
	Term, Commit, Applied uint64
	Members               []cliMember
	Raw                   string
}

func (s *cliStatus) memberIDs() []string {
	var ids []string
	for _, m := range s.Members {
		ids = append(ids, m.ID)
	}
	slices.Sort(ids)
	return ids
}

// clusterStatus runs `kmsd cluster status --json --config <n's config>`.
func (n *node) clusterStatus() (*cliStatus, error) {
	out, err := n.cli("cluster", "status", "--json", "--config", n.cfgPath)
	if err != nil {
		return nil, fmt.Errorf("kmsd cluster status --json: %v\n%s", err, out)
	}
	return parseCLIStatus(out)
}

func parseCLIStatus(out []byte) (*cliStatus, error) {
	// Tolerate log lines around the JSON document.
	start := bytes.IndexByte(out, '{')
	end := bytes.LastIndexByte(out, '}')
	if start < 0 || end < start {
		return nil, fmt.Errorf("kmsd cluster status --json printed no JSON object: %q", trunc(out))
	}
	var v any
	if err := json.Unmarshal(out[start:end+1], &v); err != nil {
		return nil, fmt.Errorf("kmsd cluster status --json: %v: %q", err, trunc(out))
	}
	m, _ := normKeys(v).(map[string]any)
	s := &cliStatus{Raw: string(out[start : end+1])}
	s.NodeID = str(m, "nodeid", "id", "node", "name")
	s.State = str(m, "state", "role")
	s.Leader = str(m, "leader", "leaderid")
	if lm, ok := m["leader"].(map[string]any); ok {
		s.Leader = str(lm, "id", "nodeid", "name")
	}
	s.Term = num(m, "term")
	s.Commit = num(m, "commitindex", "commit")
	s.Applied = num(m, "appliedindex", "applied")
	ms, _ := m["members"].([]any)
	for _, x := range ms {
		mm, ok := x.(map[string]any)
		if !ok {
			continue
		}
		cm := cliMember{
			ID:       str(mm, "id", "nodeid", "name"),
			Addr:     str(mm, "addr", "address"),
			Suffrage: str(mm, "suffrage"),
		}
		if r, ok := mm["reachable"].(bool); ok {
			cm.Reachable = &r
		} else if h, ok := mm["health"].(map[string]any); ok {
			if r, ok := h["reachable"].(bool); ok {
				cm.Reachable = &r
			}
		}
		s.Members = append(s.Members, cm)
	}
	if s.NodeID == "" && len(s.Members) == 0 {
		return nil, fmt.Errorf("kmsd cluster status --json: no node id and no members in %s", s.Raw)
	}
	return s, nil
}

// normKeys lower-cases object keys and drops '_' and '-'.
func normKeys(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			k = strings.NewReplacer("_", "", "-", "").Replace(strings.ToLower(k))
			out[k] = normKeys(e)
		}
		return out
	case []any:
		for i := range x {
			x[i] = normKeys(x[i])
		}
		return x
	}
	return v
}

func str(m map[string]any, keys ...string) string {
	for _, k := range keys {
		if s, ok := m[k].(string); ok {
			return s
		}
	}
	return ""
}

func num(m map[string]any, keys ...string) uint64 {
	for _, k := range keys {
		switch x := m[k].(type) {
		case float64:
			return uint64(x)
		case string:
			if v, err := strconv.ParseUint(x, 10, 64); err == nil {
				return v
			}
		}
	}
	return 0
}

// ---------------------------------------------------------------------------
// Direct TLS probes of a node-channel port.

// tlsProbe is the outcome of one request over a raw TLS connection.
type tlsProbe struct {
	Handshake error  // client-side handshake error
	Read      error  // error writing the request or reading the response
	Status    int    // HTTP status, if a response arrived
	Body      string // first bytes of the response body
	ALPN      string
}

func (p tlsProbe) String() string {
	switch {
	case p.Handshake != nil:
		return "handshake failed: " + p.Handshake.Error()
	case p.Read != nil:
		return "handshake ok (ALPN " + strconv.Quote(p.ALPN) + "), then: " + p.Read.Error()
	}
	return fmt.Sprintf("HTTP %d %q (ALPN %q)", p.Status, p.Body, p.ALPN)
}

// accepted reports whether the peer answered at the HTTP level.
func (p tlsProbe) accepted() bool { return p.Handshake == nil && p.Read == nil }

// probeNodeChannel dials addr with cfg (TLS 1.3, ALPN kmsd-rpc/1), sends one
// HTTP/1.1 request and reads the response. In TLS 1.3 the client finishes
// its handshake before the server has checked the client certificate, so a
// rejection by the server only shows on the first read.
func probeNodeChannel(addr string, cfg *tls.Config, method, path string, body []byte) tlsProbe {
	cfg = cfg.Clone()
	cfg.MinVersion = tls.VersionTLS13
	if cfg.ServerName == "" {
		cfg.ServerName = "127.0.0.1"
	}
	if cfg.NextProtos == nil {
		cfg.NextProtos = []string{"kmsd-rpc/1"}
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		return tlsProbe{Handshake: err}
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	conn := tls.Client(raw, cfg)
	if err := conn.Handshake(); err != nil {
		return tlsProbe{Handshake: err}
	}
	p := tlsProbe{ALPN: conn.ConnectionState().NegotiatedProtocol}
	req, _ := http.NewRequest(method, "https://"+addr+path, bytes.NewReader(body))
	req.Close = true
	if err := req.Write(conn); err != nil {
		p.Read = fmt.Errorf("write request: %w", err)
		return p
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		p.Read = fmt.Errorf("read response: %w", err)
		return p
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	p.Status, p.Body = resp.StatusCode, string(b)
	return p
}

// waitTCP waits until addr accepts TCP connections.
func waitTCP(t testing.TB, addr string, limit time.Duration) {
	t.Helper()
	waitFor(t, limit, addr+" to accept connections", func() (bool, string) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false, err.Error()
		}
		c.Close()
		return true, ""
	})
}

// startProcess starts `kmsd server` without waiting for the API (a node
// that cannot join may never serve it).
func (n *node) startProcess(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		t.Fatalf("node %s already running", n.opts.Name)
	}
	f, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	n.starts++
	fmt.Fprintf(f, "\n===== compat harness: start #%d at %s =====\n", n.starts, time.Now().Format(time.RFC3339Nano))
	cmd := execServer(n)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start kmsd server: %v", err)
	}
	done := make(chan struct{})
	n.cmd, n.done, n.logFile, n.waitErr = cmd, done, f, nil
	go func() {
		err := cmd.Wait()
		n.mu.Lock()
		n.waitErr = err
		n.mu.Unlock()
		close(done)
	}()
}

// execServer is the `kmsd server` command of n, with the correct PIN.
func execServer(n *node) *exec.Cmd {
	cmd := exec.Command(n.bin, "server", "--config", n.cfgPath)
	cmd.Env = n.env(hsmPIN)
	cmd.Dir = n.dir
	return cmd
}

// exited reports whether the node's process has ended (and how).
func (n *node) exited() (bool, error) {
	n.mu.Lock()
	done := n.done
	n.mu.Unlock()
	if done == nil {
		return true, errors.New("not started")
	}
	select {
	case <-done:
		n.mu.Lock()
		defer n.mu.Unlock()
		return true, n.waitErr
	default:
		return false, nil
	}
}

// ---------------------------------------------------------------------------
// Small helpers.

// parallel runs f(i) for i in [0,n) on workers goroutines.
func parallel(n, workers int, f func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Go(func() {
			for i := range next {
				f(i)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}
