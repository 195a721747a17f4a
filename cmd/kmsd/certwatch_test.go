package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeAtomic writes data to a temp file beside path and renames it over
// path (what cert-manager sidecars, certbot hooks and editors do).
func writeAtomic(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// watchEnv is an in-process node with only TLS, the certificate monitor
// and the watcher, plus a TLS echo listener using the node's API TLS.
type watchEnv struct {
	n      *node
	logs   capture
	dir    string
	apiCA  *tcert // issues API server certificates
	cliCA  *tcert // the API client CA (tls.ca)
	client *tcert // client certificate under cliCA
	clusCA *tcert
	addr   string
}

// newWatchEnv writes server/client/cluster files into a temp dir, loads
// them like runServer does, starts the watcher (opts) and an echo
// listener. mutate may change the config before loading.
func newWatchEnv(t *testing.T, opts watchOptions, mutate func(e *watchEnv, c *fileConfig)) *watchEnv {
	t.Helper()
	far := time.Now().Add(90 * day)
	e := &watchEnv{dir: t.TempDir(), logs: newCapture()}
	e.apiCA = mkCert(t, "api-ca", nil, true, far)
	e.cliCA = mkCert(t, "client-ca", nil, true, far)
	e.client = mkCert(t, "client", e.cliCA, false, far)
	e.clusCA = mkCert(t, "cluster-ca", nil, true, far)
	srv := mkCert(t, "server", e.apiCA, false, far)
	nodeCert := mkCert(t, "node1", e.clusCA, false, far)
	c := &fileConfig{}
	c.TLS.Cert, c.TLS.Key = e.write(t, "server.crt", srv.certPEM), e.write(t, "server.key", srv.keyPEM)
	c.TLS.CA, c.TLS.Auth = e.write(t, "client-ca.pem", e.cliCA.certPEM), "on"
	c.Cluster.Advertise = "127.0.0.1:7374"
	c.Cluster.TLS.Cert, c.Cluster.TLS.Key = e.write(t, "node.crt", nodeCert.certPEM), e.write(t, "node.key", nodeCert.keyPEM)
	c.Cluster.TLS.CA = e.write(t, "cluster-ca.pem", e.clusCA.certPEM)
	c.Health.CertReadyMargin = time.Hour
	if mutate != nil {
		mutate(e, c)
	}
	e.n = &node{log: slog.New(e.logs), certs: &certMonitor{}}
	e.n.cfg.Store(c)
	if err := e.n.tls.load(c); err != nil {
		t.Fatal(err)
	}
	if err := e.n.ctls.load(c); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	e.n.certs.start(ctx, e.n.log)
	e.n.certs.setAPI(e.n.tls.cur.Load())
	e.n.certs.setCluster(e.n.ctls.cur.Load())
	go func() { defer close(done); e.n.watchCerts(ctx, opts) }()

	ln, err := tls.Listen("tcp", "127.0.0.1:0", e.n.tls.config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	e.addr = ln.Addr().String()
	go echoServe(ln)
	// The watcher adds its watches asynchronously: let it settle, then
	// prove it sees a change (the baseline files are rewritten as they
	// are, which changes nothing).
	time.Sleep(100 * time.Millisecond)
	return e
}

// echoServe echoes lines on every accepted connection until ln closes.
func echoServe(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if _, err := c.Write([]byte(line)); err != nil {
					return
				}
			}
		}()
	}
}

func (e *watchEnv) write(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(e.dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// dial handshakes with the listener presenting client and returns the
// connection (closed at cleanup) or the handshake error.
func (e *watchEnv) dial(t testing.TB, client *tcert) (*tls.Conn, error) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(e.apiCA.cert)
	cfg := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &tls.Certificate{Certificate: [][]byte{client.cert.Raw}, PrivateKey: client.key}, nil
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.addr, cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	// TLS 1.3: the server's verdict on the client certificate arrives
	// with the first read.
	if err := echo(conn); err != nil {
		return nil, err
	}
	return conn, nil
}

func echo(c *tls.Conn) error {
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "ping\n" {
		return fmt.Errorf("echo %q", line)
	}
	return nil
}

// served is the serial of the certificate a new handshake sees.
func (e *watchEnv) served(t testing.TB) *big.Int {
	t.Helper()
	c, err := e.dial(t, e.client)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return c.ConnectionState().PeerCertificates[0].SerialNumber
}

// eventually polls f every 20ms for at most 5s.
func eventually(t testing.TB, what string, f func() bool) {
	t.Helper()
	for i := 0; i < 250; i++ {
		if f() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("waited 5s for %s", what)
}

// settle waits longer than the debounce and lets the watcher act.
func settle() { time.Sleep(600 * time.Millisecond) }

func (e *watchEnv) counters() (reloads, failures uint64) {
	e.n.certs.mu.Lock()
	defer e.n.certs.mu.Unlock()
	return e.n.certs.reloads, e.n.certs.failures
}

// TestCertWatchRejectsBrokenThenInstallsFix: broken API certificate files
// (half-written, wrong key, no SAN, expired) are each rejected with one
// ERROR line naming the file, the old certificate keeps being served and
// an established connection keeps working; the fixed files are then
// installed without SIGHUP, with an INFO line naming the new serial.
func TestCertWatchRejectsBrokenThenInstallsFix(t *testing.T) {
	e := newWatchEnv(t, watchOptions{Poll: time.Hour}, nil)
	cfg := e.n.cfg.Load()
	old := e.served(t)
	est, err := e.dial(t, e.client)
	if err != nil {
		t.Fatal(err)
	}
	next := mkCert(t, "server", e.apiCA, false, time.Now().Add(60*day))
	noSAN := mkCert(t, "server", e.apiCA, false, time.Now().Add(60*day))
	{ // a certificate without SANs
		tmpl := *noSAN.cert
		tmpl.DNSNames, tmpl.IPAddresses = nil, nil
		der, err := x509.CreateCertificate(rand.Reader, &tmpl, e.apiCA.cert, &noSAN.key.PublicKey, e.apiCA.key)
		if err != nil {
			t.Fatal(err)
		}
		noSAN.certPEM = pemBlock("CERTIFICATE", der)
	}
	expired := mkCert(t, "server", e.apiCA, false, time.Now().Add(-time.Hour))

	for i, tt := range []struct {
		name      string
		cert, key []byte
		reason    string
	}{
		{"half-written", next.certPEM[:len(next.certPEM)/2], next.keyPEM, "server.crt"},
		{"wrong key", next.certPEM, e.client.keyPEM, "private key does not match public key"},
		{"no SAN", noSAN.certPEM, noSAN.keyPEM, "does not contain any DNS or IP address as SAN"},
		{"expired", expired.certPEM, expired.keyPEM, "certificate expired at"},
	} {
		writeAtomic(t, cfg.TLS.Key, tt.key)
		writeAtomic(t, cfg.TLS.Cert, tt.cert)
		eventually(t, "the rejection of the "+tt.name+" files", func() bool { _, f := e.counters(); return f == uint64(i+1) })
		settle()
		errs := e.logs.take(slog.LevelError)
		if len(errs) != 1 || !strings.Contains(errs[0].attrs["err"], tt.reason) || !strings.Contains(errs[0].attrs["files"], cfg.TLS.Cert) ||
			!strings.Contains(errs[0].msg, "rejected") {
			t.Errorf("%s: error lines %+v, want one naming %s and %q", tt.name, errs, cfg.TLS.Cert, tt.reason)
		}
		if got := e.served(t); got.Cmp(old) != 0 {
			t.Fatalf("%s: serving serial %v, want the old %v", tt.name, got, old)
		}
	}
	if r, _ := e.counters(); r != 0 {
		t.Errorf("%d reloads counted for rejected files", r)
	}

	writeAtomic(t, cfg.TLS.Key, next.keyPEM)
	writeAtomic(t, cfg.TLS.Cert, next.certPEM)
	eventually(t, "the fixed certificate to be served", func() bool { return e.served(t).Cmp(next.cert.SerialNumber) == 0 })
	settle()
	if e.logs.count(slog.LevelInfo, serialHex(next.cert)) != 1 {
		t.Errorf("no single INFO line with the new serial %s: %+v", serialHex(next.cert), e.logs.take(slog.LevelInfo))
	}
	if r, f := e.counters(); r != 1 || f != 4 {
		t.Errorf("reloads %d failures %d, want 1 and 4", r, f)
	}
	if errs := e.logs.take(slog.LevelError); len(errs) != 0 {
		t.Errorf("error lines after the fix: %+v", errs)
	}
	// The connection from before all this still works, on the old certificate.
	if err := echo(est); err != nil {
		t.Errorf("established connection: %v", err)
	}
	if got := est.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(old) != 0 {
		t.Errorf("established connection reports serial %v, want %v", got, old)
	}
	if _, _, na, _ := e.n.certs.Soonest(); na.After(next.cert.NotAfter) {
		t.Errorf("monitor soonest %v, the new leaf expires %v", na, next.cert.NotAfter)
	}
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// TestCertWatchKubernetesSwap: the API files are symlinks into a
// Kubernetes-style ..data directory; swapping ..data installs the new
// pair (no event touches server.crt itself).
func TestCertWatchKubernetesSwap(t *testing.T) {
	var vol string
	e := newWatchEnv(t, watchOptions{Poll: time.Hour}, func(e *watchEnv, c *fileConfig) {
		vol = filepath.Join(e.dir, "vol")
		k8sVolume(t, vol, "..2030_01_01", map[string][]byte{"tls.crt": mustRead(t, c.TLS.Cert), "tls.key": mustRead(t, c.TLS.Key)})
		for _, f := range []string{"tls.crt", "tls.key"} {
			if err := os.Symlink(filepath.Join("..data", f), filepath.Join(vol, f)); err != nil {
				t.Fatal(err)
			}
		}
		c.TLS.Cert, c.TLS.Key = filepath.Join(vol, "tls.crt"), filepath.Join(vol, "tls.key")
	})
	for i := range 2 {
		next := mkCert(t, "server", e.apiCA, false, time.Now().Add(60*day))
		k8sVolume(t, vol, fmt.Sprintf("..2030_01_0%d", i+2), map[string][]byte{"tls.crt": next.certPEM, "tls.key": next.keyPEM})
		eventually(t, "the swapped certificate to be served", func() bool { return e.served(t).Cmp(next.cert.SerialNumber) == 0 })
	}
	if r, f := e.counters(); r != 2 || f != 0 {
		t.Errorf("reloads %d failures %d, want 2 and 0", r, f)
	}
}

// k8sVolume writes files into vol/ts and points vol/..data at it by an
// atomic rename of a fresh symlink, as the kubelet does.
func k8sVolume(t testing.TB, vol, ts string, files map[string][]byte) {
	t.Helper()
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

func mustRead(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCertWatchClientCADirectory: tls.ca is a directory; adding a CA file
// admits its clients, removing the old one shuts the old clients out of
// new handshakes, while a connection established before stays up.
func TestCertWatchClientCADirectory(t *testing.T) {
	var caDir string
	e := newWatchEnv(t, watchOptions{Poll: time.Hour}, func(e *watchEnv, c *fileConfig) {
		caDir = filepath.Join(e.dir, "client-cas")
		if err := os.Mkdir(caDir, 0o700); err != nil {
			t.Fatal(err)
		}
		writeAtomic(t, filepath.Join(caDir, "old.pem"), e.cliCA.certPEM)
		c.TLS.CA = caDir
	})
	newCA := mkCert(t, "client-ca-2", nil, true, time.Now().Add(90*day))
	newClient := mkCert(t, "client-2", newCA, false, time.Now().Add(90*day))
	if _, err := e.dial(t, newClient); err == nil {
		t.Fatal("a client of the new CA got in before the CA was added")
	}
	est, err := e.dial(t, e.client)
	if err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, filepath.Join(caDir, "new.pem"), newCA.certPEM)
	eventually(t, "the new CA's client to be admitted", func() bool { _, err := e.dial(t, newClient); return err == nil })
	if err := os.Remove(filepath.Join(caDir, "old.pem")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the old CA's client to be refused", func() bool { _, err := e.dial(t, e.client); return err != nil })
	if _, err := e.dial(t, newClient); err != nil {
		t.Errorf("new CA's client after removing the old CA: %v", err)
	}
	if err := echo(est); err != nil {
		t.Errorf("connection established by the old CA's client: %v", err)
	}
	if st := e.n.tls.cur.Load(); len(st.cas) != 1 || st.cas[0].Subject.CommonName != "client-ca-2" {
		t.Errorf("installed client CAs %v", st.cas)
	}
}

// TestCertWatchClusterTLS: a node certificate from outside the cluster
// CA is rejected (ERROR naming the file); adding its CA to the bundle
// makes the same files valid and they are installed; the monitor follows.
func TestCertWatchClusterTLS(t *testing.T) {
	e := newWatchEnv(t, watchOptions{Poll: time.Hour}, nil)
	cfg := e.n.cfg.Load()
	oldSerial := e.n.ctls.cur.Load().chain[0].SerialNumber
	newCA := mkCert(t, "cluster-ca-2", nil, true, time.Now().Add(50*day))
	next := mkCert(t, "node1", newCA, false, time.Now().Add(40*day))
	writeAtomic(t, cfg.Cluster.TLS.Key, next.keyPEM)
	writeAtomic(t, cfg.Cluster.TLS.Cert, next.certPEM)
	eventually(t, "the rejection", func() bool { _, f := e.counters(); return f == 1 })
	if errs := e.logs.take(slog.LevelError); len(errs) != 1 || !strings.Contains(errs[0].attrs["err"], cfg.Cluster.TLS.Cert+" is not a valid serverAuth certificate under the cluster CA") ||
		!strings.Contains(errs[0].msg, "node-channel") {
		t.Errorf("error lines %+v", errs)
	}
	if got := e.n.ctls.cur.Load().chain[0].SerialNumber; got.Cmp(oldSerial) != 0 {
		t.Fatalf("node certificate %v installed despite the rejection", got)
	}
	if got := e.n.ctls.config().Certificates[0].Leaf.SerialNumber; got.Cmp(oldSerial) != 0 {
		t.Fatalf("node channel hands out %v", got)
	}
	writeAtomic(t, cfg.Cluster.TLS.CA, append(append([]byte{}, e.clusCA.certPEM...), newCA.certPEM...))
	eventually(t, "the node certificate to be installed", func() bool {
		return e.n.ctls.config().Certificates[0].Leaf.SerialNumber.Cmp(next.cert.SerialNumber) == 0
	})
	if cas := e.n.ctls.cur.Load().cas; len(cas) != 2 {
		t.Errorf("cluster CAs installed: %d, want 2", len(cas))
	}
	if name, _, na, _ := e.n.certs.Soonest(); name != roleNode || !na.Equal(next.cert.NotAfter) {
		t.Errorf("Soonest = %s %v, want the new node certificate", name, na)
	}
}

// TestCertWatchPollFallback: without file events (NoNotify) the poll
// notices the change.
func TestCertWatchPollFallback(t *testing.T) {
	e := newWatchEnv(t, watchOptions{NoNotify: true, Poll: 100 * time.Millisecond}, nil)
	cfg := e.n.cfg.Load()
	next := mkCert(t, "server", e.apiCA, false, time.Now().Add(60*day))
	writeAtomic(t, cfg.TLS.Key, next.keyPEM)
	writeAtomic(t, cfg.TLS.Cert, next.certPEM)
	eventually(t, "the poll to install the new certificate", func() bool { return e.served(t).Cmp(next.cert.SerialNumber) == 0 })
	if e.logs.count(slog.LevelInfo, "source:poll") != 1 {
		t.Errorf("no INFO line from the poll: %+v", e.logs.take(slog.LevelInfo))
	}
}

// TestCertWatchDebounce: a burst of rewrites (in place, not atomic: the
// files are briefly empty or mismatched) ends in one reload of the final
// content and no rejection; unrelated files in the directory and a
// rewrite with the same content do nothing.
func TestCertWatchDebounce(t *testing.T) {
	e := newWatchEnv(t, watchOptions{Poll: time.Hour}, nil)
	cfg := e.n.cfg.Load()
	var last *tcert
	for range 5 {
		last = mkCert(t, "server", e.apiCA, false, time.Now().Add(60*day))
	}
	for range 5 {
		e.write(t, "unrelated.log", []byte("noise"))
	}
	// Same content again: no reload.
	e.write(t, "server.crt", mustRead(t, cfg.TLS.Cert))
	settle()
	if r, f := e.counters(); r != 0 || f != 0 {
		t.Fatalf("reloads %d failures %d after unrelated writes", r, f)
	}
	for i := range 5 {
		c := mkCert(t, "server", e.apiCA, false, time.Now().Add(60*day))
		if i == 4 {
			c = last
		}
		if err := os.WriteFile(cfg.TLS.Key, c.keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cfg.TLS.Cert, c.certPEM, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the last certificate to be served", func() bool { return e.served(t).Cmp(last.cert.SerialNumber) == 0 })
	settle()
	if r, f := e.counters(); r != 1 || f != 0 {
		t.Errorf("reloads %d failures %d, want 1 and 0", r, f)
	}
}

func TestLinkChain(t *testing.T) {
	dir := t.TempDir()
	vol := filepath.Join(dir, "vol")
	k8sVolume(t, vol, "..v1", map[string][]byte{"ca.crt": []byte("x")})
	if err := os.Symlink("..data/ca.crt", filepath.Join(vol, "ca.crt")); err != nil {
		t.Fatal(err)
	}
	got := linkChain(filepath.Join(vol, "ca.crt"))
	want := []string{filepath.Join(vol, "ca.crt"), filepath.Join(vol, "ca.crt"), filepath.Join(vol, "..data", "ca.crt"),
		filepath.Join(vol, "..data"), filepath.Join(vol, "..v1", "ca.crt")}
	for _, w := range want {
		found := false
		for _, g := range got {
			found = found || g == w
		}
		if !found {
			t.Errorf("linkChain = %v, lacks %s", got, w)
		}
	}
}

// TestCertStateLogValue: a TLS state logs as files and leaf, never the key.
func TestCertStateLogValue(t *testing.T) {
	ca := mkCert(t, "ca", nil, true, time.Now().Add(day))
	leaf := mkCert(t, "leaf", ca, false, time.Now().Add(day))
	pair, err := tls.X509KeyPair(leaf.certPEM, leaf.keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	log := slog.New(slog.NewTextHandler(&b, nil))
	log.Info("x", "api", &tlsState{cert: &pair, files: []string{"/c", "/k"}, chain: []*x509.Certificate{leaf.cert}},
		"cluster", &clusterState{cfg: &tls.Config{Certificates: []tls.Certificate{pair}}, files: []string{"/n"}, chain: []*x509.Certificate{leaf.cert}})
	out := b.String()
	if !strings.Contains(out, `api.subject="CN=leaf"`) || !strings.Contains(out, "cluster.serial="+serialHex(leaf.cert)) {
		t.Errorf("log %q lacks the leaf", out)
	}
	raw, err := leaf.key.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "PrivateKey") || strings.Contains(out, new(big.Int).SetBytes(raw).String()) || strings.Contains(out, fmt.Sprintf("%x", raw)) {
		t.Errorf("log %q shows the private key", out)
	}
}
