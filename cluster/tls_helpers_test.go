package cluster

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/storage"
)

// testCA is a throwaway certificate authority (ECDSA P-256).
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

var serial atomic.Int64

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1)),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// nodeCert issues a node certificate (IP SAN 127.0.0.1, serverAuth and
// clientAuth).
func (ca *testCA) nodeCert(t testing.TB, cn string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsFn returns a Config.TLS function with a node certificate of ca.
func (ca *testCA) tlsFn(t testing.TB, cn string) func() *tls.Config {
	cert := ca.nodeCert(t, cn)
	return func() *tls.Config {
		return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: ca.pool, ClientCAs: ca.pool}
	}
}

// reservePorts returns n free loopback addresses (listen, note, close).
func reservePorts(t testing.TB, n int) []string {
	t.Helper()
	var out []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ln.Addr().String())
		ln.Close()
	}
	return out
}

// logBuffer is a concurrency-safe log sink for assertions on logs.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) contains(s string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Contains(b.buf.String(), s)
}

// line reports whether one log line contains all of subs.
func (b *logBuffer) line(subs ...string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, l := range strings.Split(b.buf.String(), "\n") {
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(l, s)
		}
		if ok {
			return true
		}
	}
	return false
}

func (b *logBuffer) logger() *slog.Logger {
	var w io.Writer = b
	if os.Getenv("KMSD_TEST_LOG") != "" {
		w = io.MultiWriter(b, os.Stderr)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fastSnapshots makes raft snapshot and compact often, so that a node
// that lags or is wiped is caught up with InstallSnapshot.
func fastSnapshots(c *Config) {
	c.SnapshotThreshold = 8
	c.TrailingLogs = 4
	c.SnapshotInterval = 100 * time.Millisecond
}

// newTLSNode starts a node on the mTLS node channel at addr.
func newTLSNode(t testing.TB, ca *testCA, id, addr string, bootstrap bool, peers []string, tune func(*Config)) *testNode {
	t.Helper()
	tlsFn := ca.tlsFn(t, id)
	tn := &testNode{t: t, id: id, dir: t.TempDir(), addr: addr, tune: func(c *Config) {
		c.TLS = tlsFn
		c.Peers = peers
		if tune != nil {
			tune(c)
		}
	}}
	tn.start(bootstrap)
	t.Cleanup(tn.stop)
	return tn
}

// newTLSCluster forms a cluster of n nodes: n1 bootstraps, the others
// join through peers (all addresses).
func newTLSCluster(t testing.TB, ca *testCA, n int, tune func(*Config)) ([]*testNode, []string) {
	t.Helper()
	addrs := reservePorts(t, n)
	var nodes []*testNode
	for i := range n {
		tn := newTLSNode(t, ca, "n"+string(rune('1'+i)), addrs[i], i == 0, addrs, tune)
		if i == 0 {
			tn.waitLeader()
		}
		nodes = append(nodes, tn)
	}
	for _, tn := range nodes {
		waitJoined(t, tn)
	}
	return nodes, addrs
}

func waitJoined(t testing.TB, tn *testNode) {
	t.Helper()
	select {
	case <-tn.node.Joined():
	case <-time.After(15 * time.Second):
		t.Fatalf("%s did not join: %+v", tn.id, tn.node.Status())
	}
}

// leaderOf returns the node that leads, waiting for one.
func leaderOf(t testing.TB, nodes ...*testNode) *testNode {
	t.Helper()
	var l *testNode
	waitFor(t, 10*time.Second, "a leader", func() bool {
		for _, tn := range nodes {
			if tn.node != nil && tn.node.IsLeader() {
				l = tn
				return true
			}
		}
		return false
	})
	return l
}

// sameKeys waits until every node lists exactly want.
func sameKeys(t testing.TB, want []string, nodes ...*testNode) {
	t.Helper()
	for _, tn := range nodes {
		waitFor(t, 10*time.Second, tn.id+" to hold "+strings.Join(want, ","), func() bool {
			got, err := tn.fsm.ListKeys("")
			return err == nil && strings.Join(got, ",") == strings.Join(want, ",")
		})
	}
}

// openFSM opens a stopped test node's storage and FSM (for Recover).
func (tn *testNode) openFSM() (*storage.DB, *fsm.FSM) {
	tn.t.Helper()
	db, err := storage.Open(storage.Options{Dir: filepath.Join(tn.dir, "state"), Logger: quiet})
	if err != nil {
		tn.t.Fatal(err)
	}
	f, err := fsm.New(db, fsm.Config{Logger: quiet, TempDir: tn.dir})
	if err != nil {
		tn.t.Fatal(err)
	}
	return db, f
}

// wipe stops the node and deletes its whole data directory.
func (tn *testNode) wipe() {
	tn.t.Helper()
	tn.stop()
	entries, err := os.ReadDir(tn.dir)
	if err != nil {
		tn.t.Fatal(err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(tn.dir, e.Name())); err != nil {
			tn.t.Fatal(err)
		}
	}
}

func ctxT(t testing.TB) context.Context { return testContext(t, 10*time.Second) }

// snapshotsOf counts the raft snapshots in a node's snapshot store.
func snapshotsOf(t testing.TB, tn *testNode) int {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(tn.dir, "raft", "snapshots"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return len(entries)
}
