package compat

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minio/kms-go/kes"
	"github.com/prometheus/common/expfmt"
)

// Certificate rotation on a live three-node cluster (issue 4, item 7):
// every certificate a node holds is replaced on disk, atomically and
// without SIGHUP, while kms-go clients keep generating, decrypting and
// creating keys through all three nodes. Not one request may fail.
//
// The cluster runs with tls.auth on, so the API client CA bundle matters;
// identities are the hash of the client's public key, so re-issuing a
// client certificate for the same key from a new CA keeps the identity
// (admin, or the app in its policy). Node 0 gets its API certificate from
// a Kubernetes-style ..data volume (the rotation swaps the symlink), node 1
// has tls.ca as a directory (the rotation adds and removes files), the
// rest are plain files replaced by rename.

// rotCertSwitch hands out the current client certificate to every new
// TLS handshake of the clients that use it.
type rotCertSwitch struct {
	cur atomic.Pointer[tls.Certificate]
}

func (s *rotCertSwitch) set(c tls.Certificate) { s.cur.Store(&c) }
func (s *rotCertSwitch) get(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return s.cur.Load(), nil
}

// rotClientCert issues a client certificate for an API key's public key
// (so its identity is the key's) from ca.
func rotClientCert(t testing.TB, ca *certAuthority, key kes.APIKey, cn string) tls.Certificate {
	t.Helper()
	der := signClientLeaf(t, ca.cert, ca.key, key.Public(), cn)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key.Private()}
}

// rotReplace replaces path atomically: a temp file beside it, renamed over it.
func rotReplace(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".new")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// rotK8sSwap writes files into vol/<ts> and swaps vol/..data to it with
// an atomic rename of a fresh symlink, as the kubelet does.
func rotK8sSwap(t testing.TB, vol string, files map[string][]byte) {
	t.Helper()
	ts := fmt.Sprintf("..%d", time.Now().UnixNano())
	if err := os.MkdirAll(filepath.Join(vol, ts), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(vol, ts, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(vol, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(vol, "..data")); err != nil {
		t.Fatal(err)
	}
}

// rotEnv is the rotation test's cluster and PKI.
type rotEnv struct {
	c     *testCluster
	roots *x509.CertPool // both API CAs: what every client trusts throughout

	apiCA1, apiCA2         *certAuthority // issue API server certificates
	clientCA1, clientCA2   *certAuthority // the API client CA bundle
	clusterCA1, clusterCA2 *certAuthority

	admin, app       kes.APIKey
	adminSW, appSW   rotCertSwitch // the admin's and the app's current client certificates
	apiVol           string        // node 0's ..data volume for tls.crt/tls.key
	clientCADir      string        // node 1's tls.ca directory
	creates          int
	nodeChannelRoots *x509.CertPool // both cluster CAs
}

func (e *rotEnv) tlsConfig(sw *rotCertSwitch) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: e.roots, GetClientCertificate: sw.get}
}

// kesClient is a kms-go client over all endpoints (rotated by rot), its
// client certificate taken from sw at every handshake.
func (e *rotEnv) kesClient(t testing.TB, sw *rotCertSwitch, rot int) *kes.Client {
	eps := e.c.endpoints()
	rot %= len(eps)
	eps = append(eps[rot:], eps[:rot]...)
	cl := kes.NewClientWithConfig(eps[0], e.tlsConfig(sw))
	cl.Endpoints = eps
	t.Cleanup(cl.HTTPClient.CloseIdleConnections)
	return cl
}

// startRotationCluster starts three nodes with tls.auth on, admin and
// probes authenticating with certificates from the client CA.
func startRotationCluster(t *testing.T) *rotEnv {
	t.Helper()
	requireSoftHSM(t)
	p := getPKI(t)
	e := &rotEnv{
		apiCA1:     &certAuthority{name: "api-1", cert: p.caCert, key: p.caKey, pem: p.caPEM, pool: p.pool},
		clusterCA1: p.cluster,
		admin:      mustAPIKey(t, adminAPIKey),
		app:        mustAPIKey(t, appAPIKey),
	}
	e.clientCA1 = e.apiCA1 // the harness's tls.ca is the API CA
	var err error
	for _, x := range []struct {
		ca **certAuthority
		cn string
	}{{&e.apiCA2, "rotation API CA 2"}, {&e.clientCA2, "rotation client CA 2"}, {&e.clusterCA2, "rotation cluster CA 2"}} {
		if *x.ca, err = newCA(x.cn); err != nil {
			t.Fatal(err)
		}
	}
	e.roots = x509.NewCertPool()
	e.roots.AddCert(e.apiCA1.cert)
	e.roots.AddCert(e.apiCA2.cert)
	e.nodeChannelRoots = x509.NewCertPool()
	e.nodeChannelRoots.AddCert(e.clusterCA1.cert)
	e.nodeChannelRoots.AddCert(e.clusterCA2.cert)
	e.adminSW.set(rotClientCert(t, e.clientCA1, e.admin, "admin"))
	e.appSW.set(rotClientCert(t, e.clientCA1, e.app, "app"))

	c := &testCluster{t: t, admin: e.admin}
	e.c = c
	addrs := make([]string, 3)
	for i := range addrs {
		addrs[i] = freePort(t)
		c.peers = append(c.peers, freePort(t))
	}
	probe := *e.adminSW.cur.Load()
	for i := range addrs {
		n := newNode(t, nodeOptions{
			Name:        fmt.Sprintf("rot%d", i),
			Addr:        addrs[i],
			ClusterAddr: c.peers[i],
			Peers:       c.peers,
			Join:        i > 0,
			TLSAuth:     "on",
			ProbeCert:   &probe,
			Policies: map[string]policyConf{"rot-app": {
				Allow:      []string{"/v1/key/generate/rot-*", "/v1/key/decrypt/rot-*"},
				Identities: []string{appIdentity},
			}},
			API: map[string]apiConf{
				"/v1/key/create/":   {Timeout: shortRouteTimeout},
				"/v1/key/describe/": {Timeout: shortRouteTimeout},
			},
		})
		// The harness's metrics client (n.raft()) with the switchable admin certificate.
		n.httpOnce.Do(func() {
			n.httpc = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: e.tlsConfig(&e.adminSW)}}
			t.Cleanup(n.httpc.CloseIdleConnections)
		})
		cfg := n.readConfig(t)
		switch i {
		case 0: // API certificate through a Kubernetes-style volume
			e.apiVol = filepath.Join(n.dir, "api-tls")
			rotK8sSwap(t, e.apiVol, map[string][]byte{"tls.crt": p.serverCertPEM, "tls.key": p.serverKeyPEM})
			for _, f := range []string{"tls.crt", "tls.key"} {
				if err := os.Symlink(filepath.Join("..data", f), filepath.Join(e.apiVol, f)); err != nil {
					t.Fatal(err)
				}
			}
			cfg.TLS.Cert, cfg.TLS.Key = filepath.Join(e.apiVol, "tls.crt"), filepath.Join(e.apiVol, "tls.key")
		case 1: // the client CA bundle as a directory
			e.clientCADir = filepath.Join(n.dir, "client-cas")
			if err := os.Mkdir(e.clientCADir, 0o700); err != nil {
				t.Fatal(err)
			}
			rotReplace(t, filepath.Join(e.clientCADir, "ca1.pem"), e.clientCA1.pem)
			cfg.TLS.CA = e.clientCADir
		}
		n.writeConfig(t, cfg)
		c.nodes = append(c.nodes, n)
	}
	t0 := time.Now()
	c.nodes[0].start(t, nil)
	c.nodes[0].waitServing(t)
	for _, n := range c.nodes[1:] {
		n.start(t, nil)
	}
	for _, n := range c.nodes[1:] {
		n.waitServing(t)
	}
	waitFor(t, clusterWait, "every node to count 3 voters", func() (bool, string) {
		var notes []string
		for _, n := range c.nodes {
			r, err := n.raft()
			if err != nil || r.Voters != 3 || r.Members != 3 {
				notes = append(notes, fmt.Sprintf("%s: %v %v", n.opts.Name, r, err))
			}
		}
		return len(notes) == 0, strings.Join(notes, "; ")
	})
	t.Logf("rotation cluster formed in %v", time.Since(t0).Round(time.Millisecond))
	return e
}

// create creates a key through node i (forwarded to the leader unless it
// leads) with the admin's current certificate, then waits until every
// running node has applied the same index.
func (e *rotEnv) create(t testing.TB, i int, what string) string {
	t.Helper()
	e.creates++
	name := fmt.Sprintf("rot-step-%02d", e.creates)
	n := e.c.nodes[i%len(e.c.nodes)]
	cl := kes.NewClientWithConfig("https://"+n.addr, e.tlsConfig(&e.adminSW))
	defer cl.HTTPClient.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	if err := cl.CreateKey(ctx, name); err != nil {
		t.Fatalf("after %s: create %s through %s: %v", what, name, n.opts.Name, err)
	}
	l := e.c.leader(t)
	lr, err := l.raft()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, clusterWait, "every node to apply "+name, func() (bool, string) {
		var notes []string
		ok := true
		for _, m := range e.c.running() {
			r, err := m.raft()
			if err != nil || r.Applied < lr.Applied {
				ok = false
			}
			notes = append(notes, fmt.Sprintf("%s applied=%d %v", m.opts.Name, r.Applied, err))
		}
		return ok, strings.Join(notes, ", ") + fmt.Sprintf(" (leader %d)", lr.Applied)
	})
	return name
}

// apiPeer opens a new TLS connection to n's API with client and returns
// the server's leaf; an error if the handshake or the first request
// fails (TLS 1.3 reports a refused client certificate on the first read).
func (e *rotEnv) apiPeer(n *node, client tls.Certificate) (*x509.Certificate, error) {
	sw := &rotCertSwitch{}
	sw.set(client)
	tr := &http.Transport{TLSClientConfig: e.tlsConfig(sw), DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := hc.Get(n.url("/version"))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /version: %s", resp.Status)
	}
	return resp.TLS.PeerCertificates[0], nil
}

// nodeChannel handshakes with n's node channel presenting client and
// reports the certificate n presents and whether n accepted the client
// (an HTTP answer on the connection).
func (e *rotEnv) nodeChannel(n *node, client tls.Certificate) (*x509.Certificate, tlsProbe) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: e.nodeChannelRoots, Certificates: []tls.Certificate{client},
		ServerName: "127.0.0.1", NextProtos: []string{"kmsd-rpc/1"}}
	var peer *x509.Certificate
	if c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", n.clusAddr, cfg); err == nil {
		peer = c.ConnectionState().PeerCertificates[0]
		c.Close()
	}
	return peer, probeNodeChannel(n.clusAddr, cfg, http.MethodGet, "/", nil)
}

// rotRT counts what kms-go's endpoint retries would hide: transport
// errors and 5xx answers of single attempts.
type rotRT struct {
	base *http.Transport
	l    *rotLoad
}

func (r rotRT) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.base.RoundTrip(req)
	switch {
	case err != nil:
		r.l.hiccup(req, err)
	case resp.StatusCode >= 500:
		r.l.hiccup(req, errors.New(resp.Status))
	}
	return resp, err
}

func (r rotRT) CloseIdleConnections() { r.base.CloseIdleConnections() }

// rotLoad is the continuous client load.
type rotLoad struct {
	// hiccups are failed attempts (a transport error or a 5xx) that
	// kms-go retried on another endpoint; restartHiccups those while a
	// follower restarts (expected there).
	hiccups, restartHiccups atomic.Int64
	restarting              atomic.Bool
	down                    atomic.Pointer[node] // the node being restarted: its pinned workers pause
	workers                 []*rotWorker
	// handshakes by the load's clients, and the API server certificate
	// issuers they saw.
	handshakes atomic.Int64
	issuers    sync.Map // issuer CN → *atomic.Int64

	ops, fails          atomic.Int64
	generates, decrypts atomic.Int64
	loadCreates         atomic.Int64
	mu                  sync.Mutex
	errs                []string
	stop                chan struct{}
	wg                  sync.WaitGroup
}

func (l *rotLoad) hiccup(req *http.Request, err error) {
	if l.restarting.Load() {
		l.restartHiccups.Add(1)
		return
	}
	l.hiccups.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) < 20 {
		l.errs = append(l.errs, fmt.Sprintf("%s attempt %s %s%s: %v", time.Now().Format("15:04:05.000"), req.Method, req.URL.Host, req.URL.Path, err))
	}
}

// instrument makes w's client count hiccups and handshakes.
func (l *rotLoad) instrument(w *rotWorker) {
	tr := w.cl.HTTPClient.Transport.(*http.Transport)
	tr.TLSClientConfig.VerifyConnection = func(cs tls.ConnectionState) error {
		l.handshakes.Add(1)
		w.handshakes.Add(1)
		cn := cs.PeerCertificates[0].Issuer.CommonName
		v, _ := l.issuers.LoadOrStore(cn, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
		return nil
	}
	w.cl.HTTPClient.Transport = rotRT{base: tr, l: l}
}

func (l *rotLoad) fail(what string, err error) {
	l.fails.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) < 20 {
		l.errs = append(l.errs, fmt.Sprintf("%s %s: %v (%s)", time.Now().Format("15:04:05.000"), what, err, describeErr(err)))
	}
}

// rotWorker is one load goroutine's client.
type rotWorker struct {
	id         int
	cl         *kes.Client
	pinned     *node // nil: every endpoint (kms-go's load balancing and retries)
	admin      bool  // admin: also creates keys; else the app identity
	keepAlive  bool  // keeps its connection for the whole test
	handshakes atomic.Int64
	paused     atomic.Bool // a pinned worker waiting out its node's restart
}

// run starts the load's workers: one pinned to each node (a single
// endpoint, so kms-go cannot retry elsewhere: every failure shows), and
// three over all endpoints. Even workers are the admin (generate,
// decrypt, and every 8th round a create), odd ones the app (generate and
// decrypt under its policy). Workers 0 and 1 keep their one connection
// throughout; the others drop idle connections every 16 rounds, so new
// handshakes happen during every rotation step.
func (l *rotLoad) run(t *testing.T, e *rotEnv, keys []string) {
	l.stop = make(chan struct{})
	for id := range 6 {
		w := &rotWorker{id: id, admin: id%2 == 0, keepAlive: id < 2}
		sw := &e.appSW
		if w.admin {
			sw = &e.adminSW
		}
		w.cl = e.kesClient(t, sw, id)
		if id < 3 {
			w.pinned = e.c.nodes[id]
			w.cl.Endpoints = []string{"https://" + w.pinned.addr}
		}
		l.instrument(w)
		l.workers = append(l.workers, w)
		l.wg.Go(func() { l.work(w, keys) })
	}
}

func (l *rotLoad) work(w *rotWorker, keys []string) {
	assoc := []byte(fmt.Sprintf("worker %d", w.id))
	for i := 0; i < 1_000_000; i++ {
		select {
		case <-l.stop:
			return
		default:
		}
		if w.pinned != nil && l.down.Load() == w.pinned {
			w.paused.Store(true)
			time.Sleep(20 * time.Millisecond)
			continue
		}
		w.paused.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		l.round(ctx, w, i, keys[(w.id+i)%len(keys)], assoc)
		cancel()
		if !w.keepAlive && i%16 == 15 {
			w.cl.HTTPClient.CloseIdleConnections()
		}
	}
}

// round is one generate + decrypt (+ create) of a worker.
func (l *rotLoad) round(ctx context.Context, w *rotWorker, i int, key string, assoc []byte) {
	l.ops.Add(1)
	dek, err := w.cl.GenerateKey(ctx, key, assoc)
	if err != nil {
		l.fail(fmt.Sprintf("worker %d generate %s", w.id, key), err)
		return
	}
	l.generates.Add(1)
	l.ops.Add(1)
	plain, err := w.cl.Decrypt(ctx, key, dek.Ciphertext, assoc)
	switch {
	case err != nil:
		l.fail(fmt.Sprintf("worker %d decrypt %s", w.id, key), err)
	case !bytes.Equal(plain, dek.Plaintext):
		l.fail(fmt.Sprintf("worker %d decrypt %s", w.id, key), errors.New("plaintext differs from the generated one"))
	default:
		l.decrypts.Add(1)
	}
	if w.admin && i%8 == 7 {
		l.ops.Add(1)
		name := fmt.Sprintf("rot-load-%d-%d", w.id, i)
		if err := w.cl.CreateKey(ctx, name); err != nil {
			l.fail(fmt.Sprintf("worker %d create %s", w.id, name), err)
		} else {
			l.loadCreates.Add(1)
		}
	}
}

func (l *rotLoad) halt() { close(l.stop); l.wg.Wait() }

// metricSum scrapes n's /v1/metrics and sums family name's samples.
func metricSum(n *node, name string) (float64, error) {
	resp, err := n.adminHTTP().Get(n.url("/v1/metrics"))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return 0, err
	}
	f, ok := fams[name]
	if !ok {
		return 0, fmt.Errorf("no %s", name)
	}
	var sum float64
	for _, m := range f.Metric {
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		}
	}
	return sum, nil
}

// TestCertRotationUnderLoad rotates every certificate of a live
// three-node cluster by replacing files (no SIGHUP) under continuous
// kms-go load and requires zero failed requests, the new certificates on
// new handshakes, and working writes and replication afterwards.
func TestCertRotationUnderLoad(t *testing.T) {
	start := time.Now()
	e := startRotationCluster(t)
	c := e.c
	keys := []string{"rot-k0", "rot-k1", "rot-k2"}
	setup := kes.NewClientWithConfig("https://"+c.nodes[0].addr, e.tlsConfig(&e.adminSW))
	for _, k := range keys {
		if err := setup.CreateKey(ctxT(t), k); err != nil {
			t.Fatalf("create %s: %v", k, err)
		}
	}
	setup.HTTPClient.CloseIdleConnections()
	e.create(t, 0, "setup") // every node has the keys

	load := &rotLoad{}
	load.run(t, e, keys)
	stopped := false
	defer func() {
		if !stopped {
			load.halt()
		}
	}()
	var steps []string
	lastOps := load.ops.Load()
	step := func(name string) {
		t.Helper()
		// The load kept running through the step.
		deadline := time.Now().Add(10 * time.Second)
		for load.ops.Load() <= lastOps+10 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		now := load.ops.Load()
		if now <= lastOps {
			t.Fatalf("%s: the load made no progress (%d requests)", name, now)
		}
		steps = append(steps, fmt.Sprintf("%s (+%d requests)", name, now-lastOps))
		lastOps = now
		t.Logf("step %d: %s done at %v; %d requests, %d failures", len(steps), name, time.Since(start).Round(time.Millisecond), now, load.fails.Load())
	}
	waitAPI := func(what string, n *node, client tls.Certificate, ok func(*x509.Certificate, error) (bool, string)) {
		t.Helper()
		waitFor(t, 15*time.Second, what+" on "+n.opts.Name, func() (bool, string) { return ok(e.apiPeer(n, client)) })
	}
	time.Sleep(500 * time.Millisecond)
	step("load running")

	// 1+2. API server certificates: a new serial from the same CA, then
	// one issued by the second API CA (which clients already trust).
	for round, ca := range []*certAuthority{e.apiCA1, e.apiCA2} {
		for i, n := range c.nodes {
			certPEM, keyPEM, cert := ca.nodeCert(t, "localhost")
			want := cert.Leaf
			if want == nil {
				want, _ = x509.ParseCertificate(cert.Certificate[0])
			}
			if i == 0 {
				rotK8sSwap(t, e.apiVol, map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM})
			} else {
				rotReplace(t, filepath.Join(n.dir, "server.key"), keyPEM)
				rotReplace(t, filepath.Join(n.dir, "server.crt"), certPEM)
			}
			waitAPI("the new API certificate", n, *e.adminSW.cur.Load(), func(peer *x509.Certificate, err error) (bool, string) {
				if err != nil {
					return false, err.Error()
				}
				return peer.SerialNumber.Cmp(want.SerialNumber) == 0 && peer.Issuer.CommonName == ca.cert.Subject.CommonName,
					fmt.Sprintf("serial %x issuer %q, want %x from %q", peer.SerialNumber, peer.Issuer.CommonName, want.SerialNumber, ca.cert.Subject.CommonName)
			})
		}
		e.create(t, round, "API server certificates")
		step(fmt.Sprintf("API server certificates from %q", ca.cert.Subject.CommonName))
	}

	// 3. Add the second client CA to every node's bundle.
	newAdmin := rotClientCert(t, e.clientCA2, e.admin, "admin")
	newApp := rotClientCert(t, e.clientCA2, e.app, "app")
	oldAdmin := *e.adminSW.cur.Load()
	both := append(append([]byte{}, e.clientCA1.pem...), e.clientCA2.pem...)
	for i, n := range c.nodes {
		if i == 1 {
			rotReplace(t, filepath.Join(e.clientCADir, "ca2.pem"), e.clientCA2.pem)
		} else {
			rotReplace(t, filepath.Join(n.dir, "ca.pem"), both)
		}
	}
	for _, n := range c.nodes {
		waitAPI("a client of the second client CA to be admitted", n, newAdmin, func(_ *x509.Certificate, err error) (bool, string) {
			return err == nil, fmt.Sprint(err)
		})
	}
	e.create(t, 2, "adding a client CA")
	step("client CA 2 added to every bundle")

	// 4. Move every client to certificates from the new client CA (same
	// keys: same identities) and make them open new connections.
	e.adminSW.set(newAdmin)
	e.appSW.set(newApp)
	for _, w := range load.workers {
		if !w.keepAlive { // the others keep theirs, made with the old client certificates
			w.cl.HTTPClient.CloseIdleConnections()
		}
	}
	e.create(t, 0, "switching client certificates")
	step("clients on certificates from client CA 2")

	// 5. Remove the old client CA: its certificates no longer get in.
	for i, n := range c.nodes {
		if i == 1 {
			if err := os.Remove(filepath.Join(e.clientCADir, "ca1.pem")); err != nil {
				t.Fatal(err)
			}
		} else {
			rotReplace(t, filepath.Join(n.dir, "ca.pem"), e.clientCA2.pem)
		}
	}
	for _, n := range c.nodes {
		waitAPI("a client of the removed client CA to be refused", n, oldAdmin, func(_ *x509.Certificate, err error) (bool, string) {
			return err != nil, "still admitted"
		})
		if _, err := e.apiPeer(n, newAdmin); err != nil {
			t.Fatalf("%s refuses the new client certificate: %v", n.opts.Name, err)
		}
	}
	e.create(t, 1, "removing the old client CA")
	step("client CA 1 removed from every bundle")

	// 6. Add the second cluster CA to every node's cluster CA bundle.
	_, _, probe2 := e.clusterCA2.nodeCert(t, "probe")
	_, _, probe1 := e.clusterCA1.nodeCert(t, "probe")
	bothCluster := append(append([]byte{}, e.clusterCA1.pem...), e.clusterCA2.pem...)
	for _, n := range c.nodes {
		rotReplace(t, filepath.Join(n.dir, "cluster-ca.crt"), bothCluster)
	}
	for _, n := range c.nodes {
		waitFor(t, 15*time.Second, n.opts.Name+" to accept a node certificate of cluster CA 2", func() (bool, string) {
			_, pr := e.nodeChannel(n, probe2)
			return pr.accepted(), pr.String()
		})
	}
	e.create(t, 2, "adding a cluster CA")
	step("cluster CA 2 added to every node")

	// 7. New node certificates from the second cluster CA, node by node,
	// a write after each.
	for i, n := range c.nodes {
		certPEM, keyPEM, cert := e.clusterCA2.nodeCert(t, n.opts.Name)
		want, _ := x509.ParseCertificate(cert.Certificate[0])
		rotReplace(t, filepath.Join(n.dir, "node.key"), keyPEM)
		rotReplace(t, filepath.Join(n.dir, "node.crt"), certPEM)
		waitFor(t, 15*time.Second, n.opts.Name+" to present its new node certificate", func() (bool, string) {
			peer, pr := e.nodeChannel(n, probe2)
			if peer == nil {
				return false, pr.String()
			}
			return peer.SerialNumber.Cmp(want.SerialNumber) == 0, fmt.Sprintf("serial %x, want %x", peer.SerialNumber, want.SerialNumber)
		})
		e.create(t, i, "a new node certificate on "+n.opts.Name)
	}
	step("node certificates from cluster CA 2 on every node")

	// 8. Remove the old cluster CA.
	for _, n := range c.nodes {
		rotReplace(t, filepath.Join(n.dir, "cluster-ca.crt"), e.clusterCA2.pem)
	}
	for _, n := range c.nodes {
		waitFor(t, 15*time.Second, n.opts.Name+" to refuse a node certificate of the removed cluster CA", func() (bool, string) {
			_, pr := e.nodeChannel(n, probe1)
			return !pr.accepted(), pr.String()
		})
		if _, pr := e.nodeChannel(n, probe2); !pr.accepted() {
			t.Fatalf("%s refuses a cluster CA 2 certificate: %s", n.opts.Name, pr)
		}
	}
	e.create(t, 0, "removing the old cluster CA")
	step("cluster CA 1 removed from every node")

	// 9. Restart a follower: all its raft and RPC connections are new ones,
	// made with the rotated certificates only. It must rejoin and catch up.
	// The highest-numbered follower: workers 0 and 1 keep their
	// connections to nodes 0 and 1 if they can.
	l := c.leader(t)
	var f *node
	for _, n := range c.nodes {
		if n != l {
			f = n
		}
	}
	load.restarting.Store(true)
	load.down.Store(f)
	for _, w := range load.workers {
		if w.pinned == f {
			waitFor(t, 10*time.Second, fmt.Sprintf("worker %d to pause", w.id), func() (bool, string) { return w.paused.Load(), "busy" })
		}
	}
	f.stop(t, syscall.SIGTERM)
	f.probeCert = newAdmin
	f.startProcess(t)
	waitFor(t, clusterWait, f.opts.Name+" to serve again", func() (bool, string) {
		sw := &rotCertSwitch{}
		sw.set(newAdmin)
		hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: e.tlsConfig(sw), DisableKeepAlives: true}}
		resp, err := hc.Get(f.url("/v1/ready"))
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	c.waitCaughtUp(t, f)
	// kms-go keeps a failed endpoint out for 30 s; the hiccups of the
	// restart are counted apart until then.
	load.restarting.Store(false)
	load.down.Store(nil)
	last := e.create(t, indexOf(c.nodes, f), "restarting "+f.opts.Name)
	step("follower " + f.opts.Name + " restarted on the rotated certificates")

	load.halt()
	stopped = true
	elapsed := time.Since(start)

	// Every node has every step's key (replication), and each served load.
	for _, n := range c.nodes {
		cl := kes.NewClientWithConfig("https://"+n.addr, e.tlsConfig(&e.adminSW))
		if _, err := cl.DescribeKey(ctxT(t), last); err != nil {
			t.Errorf("%s: describe %s: %v", n.opts.Name, last, err)
		}
		cl.HTTPClient.CloseIdleConnections()
	}
	for _, n := range c.nodes {
		e.checkExpiryReport(t, n)
	}
	var perNode, reloads, rejects []string
	for _, n := range c.nodes {
		ok, err := metricSum(n, "kes_http_request_success")
		r, _ := metricSum(n, "kmsd_tls_reloads_total")
		rf, _ := metricSum(n, "kmsd_tls_reload_failures_total")
		perNode = append(perNode, fmt.Sprintf("%s=%.0f", n.opts.Name, ok))
		reloads = append(reloads, fmt.Sprintf("%s=%.0f", n.opts.Name, r))
		rejects = append(rejects, fmt.Sprintf("%s=%.0f", n.opts.Name, rf))
		if err != nil || ok == 0 {
			t.Errorf("%s answered no request successfully (%v)", n.opts.Name, err)
		}
		if n != f && r < 6 {
			t.Errorf("%s counted %.0f certificate reloads, want at least 6 (2 API certificates, 2 client CA changes, 3 cluster changes)", n.opts.Name, r)
		}
	}
	t.Logf("rotation under load: %d requests (%d generates, %d decrypts, %d creates by the load, %d step creates), failures=%d, %d steps in %v",
		load.ops.Load(), load.generates.Load(), load.decrypts.Load(), load.loadCreates.Load(), e.creates, load.fails.Load(), len(steps), elapsed.Round(time.Millisecond))
	t.Logf("steps: %s", strings.Join(steps, "; "))
	t.Logf("successful requests per node (since start; the restarted one since its restart): %s; certificate reloads %s; rejected reloads %s",
		strings.Join(perNode, ", "), strings.Join(reloads, ", "), strings.Join(rejects, ", "))
	var issuers []string
	load.issuers.Range(func(k, v any) bool {
		issuers = append(issuers, fmt.Sprintf("%q=%d", k, v.(*atomic.Int64).Load()))
		return true
	})
	t.Logf("load handshakes: %d (server certificate issuers seen: %s); retried attempts: %d during the rotation, %d while %s restarted",
		load.handshakes.Load(), strings.Join(issuers, ", "), load.hiccups.Load(), load.restartHiccups.Load(), f.opts.Name)
	for _, ca := range []*certAuthority{e.apiCA1, e.apiCA2} {
		if v, ok := load.issuers.Load(ca.cert.Subject.CommonName); !ok || v.(*atomic.Int64).Load() == 0 {
			t.Errorf("no load handshake saw a server certificate from %q", ca.cert.Subject.CommonName)
		}
	}
	for _, w := range load.workers {
		if w.keepAlive && w.pinned != f {
			if h := w.handshakes.Load(); h != 1 {
				t.Errorf("worker %d (keeps its connection to %s) made %d handshakes, want 1: a connection was dropped", w.id, w.pinned.opts.Name, h)
			} else {
				t.Logf("worker %d used one connection to %s through every rotation (its client certificate's CA was removed on the way)", w.id, w.pinned.opts.Name)
			}
		}
	}
	if n := load.hiccups.Load(); n != 0 {
		t.Errorf("%d request attempts failed at the transport or with a 5xx during the rotation (kms-go retried them elsewhere)", n)
	}
	if n := load.fails.Load(); n != 0 {
		load.mu.Lock()
		t.Errorf("%d of %d requests failed during the rotation", n, load.ops.Load())
	}
	if len(load.errs) > 0 {
		t.Errorf("first errors:\n%s", strings.Join(load.errs, "\n"))
		load.mu.Unlock()
	}
	if load.generates.Load() == 0 || load.loadCreates.Load() == 0 {
		t.Errorf("the load did not generate (%d) or create (%d)", load.generates.Load(), load.loadCreates.Load())
	}
}

// checkExpiryReport: the test certificates expire in a day, so the
// "certificates" check is degraded (still ready) and names the soonest
// certificate; /v1/status reports the same NotAfter as
// kmsd_tls_cert_soonest_expiry_timestamp_seconds, and that is no later
// than the API certificate a new handshake sees.
func (e *rotEnv) checkExpiryReport(t *testing.T, n *node) {
	t.Helper()
	get := func(path string, v any) {
		t.Helper()
		resp, err := n.adminHTTP().Get(n.url(path))
		if err != nil {
			t.Fatalf("%s GET %s: %v", n.opts.Name, path, err)
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(v); err != nil {
			t.Fatalf("%s GET %s: %s: %v", n.opts.Name, path, resp.Status, err)
		}
	}
	var rep struct {
		Ready  bool
		Checks []struct{ Name, Status, Message string }
	}
	get("/v1/health", &rep)
	found := false
	for _, ch := range rep.Checks {
		if ch.Name == "certificates" {
			found = true
			if ch.Status != "degraded" || !strings.Contains(ch.Message, "expires in") {
				t.Errorf("%s: certificates check %q %q, want degraded with the time left (certificates valid for a day)", n.opts.Name, ch.Status, ch.Message)
			}
		}
	}
	if !found || !rep.Ready {
		t.Errorf("%s: /v1/health ready=%v, certificates check present=%v: %+v", n.opts.Name, rep.Ready, found, rep.Checks)
	}
	var st struct {
		CertExpiry     *time.Time `json:"cert_expiry"`
		CertExpiryName string     `json:"cert_expiry_name"`
	}
	get("/v1/status", &st)
	soonest, err := metricSum(n, "kmsd_tls_cert_soonest_expiry_timestamp_seconds")
	if err != nil || st.CertExpiry == nil || st.CertExpiry.Unix() != int64(soonest) || st.CertExpiryName == "" {
		t.Errorf("%s: /v1/status cert_expiry %v (%q), soonest-expiry metric %.0f (%v)", n.opts.Name, st.CertExpiry, st.CertExpiryName, soonest, err)
	}
	if peer, err := e.apiPeer(n, *e.adminSW.cur.Load()); err == nil && peer.NotAfter.Unix() < int64(soonest) {
		t.Errorf("%s: served certificate expires %v, before the reported soonest expiry %.0f", n.opts.Name, peer.NotAfter, soonest)
	}
}

func indexOf(nodes []*node, n *node) int {
	for i, m := range nodes {
		if m == n {
			return i
		}
	}
	return 0
}
