package compat

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/kms-go/kes"
	"gopkg.in/yaml.v3"
)

// SIGHUP reload against the real binary (spec/kes-api.md §1.1, §5, §7.1
// "Reload behaviour", §16 item 53): policies, admin and TLS are re-read;
// established connections survive; a broken file is rejected as a whole and
// the running configuration stays.
//
// Each test owns its node. Configs are rewritten in place (same path, the
// harness's yamlConfig shape), then the process gets SIGHUP, then the test
// polls, bounded in count and time, for the new behaviour.

const (
	reloadWait = 5 * time.Second       // bound for a reload to become visible
	reloadPoll = 50 * time.Millisecond // poll interval while waiting for it
	attemptMax = 3 * time.Second       // bound for one request inside a poll
	rejectLine = "reload rejected"     // what the log must say for a rejected reload
)

// ---------------------------------------------------------------------------
// Config, files and signals.

// readConfig decodes the node's config file into the harness's yamlConfig.
func (n *node) readConfig(t testing.TB) yamlConfig {
	t.Helper()
	b, err := os.ReadFile(n.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var cfg yamlConfig
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatalf("decode %s: %v", n.cfgPath, err)
	}
	return cfg
}

func marshalConfig(t testing.TB, cfg yamlConfig) []byte {
	t.Helper()
	b, err := yaml.Marshal(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeConfig rewrites the config file in place.
func (n *node) writeConfig(t testing.TB, cfg yamlConfig) {
	t.Helper()
	overwrite(t, n.cfgPath, marshalConfig(t, cfg))
}

// overwrite replaces a file's content in place (same path and inode).
func overwrite(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func (n *node) proc(t testing.TB) (*os.Process, chan struct{}) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		t.Fatalf("node %s is not running", n.opts.Name)
	}
	return n.cmd.Process, n.done
}

// sighup sends SIGHUP to the running kmsd process.
func (n *node) sighup(t testing.TB) {
	t.Helper()
	p, _ := n.proc(t)
	if err := p.Signal(syscall.SIGHUP); err != nil {
		t.Fatalf("SIGHUP pid %d: %v", p.Pid, err)
	}
}

// requireAlive fails the test if the kmsd process has exited.
func (n *node) requireAlive(t testing.TB, after string) {
	t.Helper()
	p, done := n.proc(t)
	select {
	case <-done:
		n.mu.Lock()
		err := n.waitErr
		n.mu.Unlock()
		t.Fatalf("kmsd (pid %d) exited after %s: %v", p.Pid, after, err)
	default:
	}
	if err := p.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("kmsd (pid %d) is gone after %s: %v", p.Pid, after, err)
	}
}

// rejections counts "reload rejected" in the node's captured stderr.
func (n *node) rejections(t testing.TB) int {
	t.Helper()
	b, err := os.ReadFile(n.logPath)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte(rejectLine))
}

// waitRejected waits until the log reports more than before rejected reloads.
func (n *node) waitRejected(t testing.TB, before int) {
	t.Helper()
	poll(t, "the log to report \""+rejectLine+"\"", func() (bool, string) {
		c := n.rejections(t)
		return c > before, fmt.Sprintf("%d occurrences, had %d", c, before)
	})
}

// poll calls f until it reports success, at most reloadWait long and
// reloadWait/reloadPoll+1 times; it fails the test with f's last note.
func poll(t testing.TB, what string, f func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(reloadWait)
	var last string
	for i := 0; i <= int(reloadWait/reloadPoll); i++ {
		ok, note := f()
		if ok {
			return
		}
		last = note
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(reloadPoll)
	}
	t.Fatalf("waited %v for %s (last: %s)", reloadWait, what, last)
}

// ctxA is a context bounded for a single request.
func ctxA(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), attemptMax)
	t.Cleanup(cancel)
	return ctx
}

// ---------------------------------------------------------------------------
// Connection and certificate observation.

// connTrace records which connection a request used.
type connTrace struct {
	mu     sync.Mutex
	got    bool
	reused bool
	local  string
	proto  string
	serial *big.Int
}

func (c *connTrace) ctx(parent context.Context) context.Context {
	return httptrace.WithClientTrace(parent, &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.got, c.reused = true, i.Reused
			c.local = i.Conn.LocalAddr().String()
			if tc, ok := i.Conn.(*tls.Conn); ok {
				cs := tc.ConnectionState()
				c.proto = cs.NegotiatedProtocol
				if len(cs.PeerCertificates) > 0 {
					c.serial = cs.PeerCertificates[0].SerialNumber
				}
			}
		},
	})
}

func (c *connTrace) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprintf("conn{got:%v reused:%v local:%s alpn:%q serial:%v}", c.got, c.reused, c.local, c.proto, c.serial)
}

// tracedGet sends GET path on hc and reports the status and the connection.
func tracedGet(t testing.TB, n *node, hc *http.Client, path string) (int, *connTrace) {
	t.Helper()
	tr := &connTrace{}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(tr.ctx(ctx), http.MethodGet, n.url(path), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v (%v)", path, err, tr)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	return resp.StatusCode, tr
}

// requireSameConn asserts that after reused before's connection.
func requireSameConn(t testing.TB, what string, before, after *connTrace) {
	t.Helper()
	before.mu.Lock()
	after.mu.Lock()
	defer before.mu.Unlock()
	defer after.mu.Unlock()
	if !before.got || !after.got {
		t.Errorf("%s: no connection traced (before got=%v, after got=%v)", what, before.got, after.got)
		return
	}
	if !after.reused || after.local != before.local {
		t.Errorf("%s: the connection opened before SIGHUP (%s) was not reused after it (reused=%v, local %s): kmsd dropped an established connection",
			what, before.local, after.reused, after.local)
	}
	if after.proto != "h2" {
		t.Errorf("%s: negotiated protocol %q, want h2", what, after.proto)
	}
}

// servedCert opens a new TLS connection and returns the server's leaf.
func (n *node) servedCert(t testing.TB) *x509.Certificate {
	t.Helper()
	d := &tls.Dialer{
		NetDialer: &net.Dialer{Timeout: attemptMax},
		Config: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			RootCAs:      getPKI(t).pool,
			Certificates: []tls.Certificate{n.probeCert},
			NextProtos:   []string{"h2", "http/1.1"},
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), attemptMax)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", n.addr)
	if err != nil {
		t.Fatalf("TLS dial %s: %v", n.addr, err)
	}
	defer conn.Close()
	cs := conn.(*tls.Conn).ConnectionState()
	if len(cs.PeerCertificates) == 0 {
		t.Fatalf("TLS dial %s: no server certificate", n.addr)
	}
	return cs.PeerCertificates[0]
}

func pemSerial(t testing.TB, certPEM []byte) *big.Int {
	t.Helper()
	b, _ := pem.Decode(certPEM)
	if b == nil {
		t.Fatal("no PEM block")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber
}

// newServerCert issues another server certificate like the harness's one:
// a new key, the same SANs (localhost, 127.0.0.1), the same CA.
func (p *testPKI) newServerCert(t testing.TB) (certPEM, keyPEM []byte, sn *big.Int) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "localhost"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, key.Public(), p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		tmpl.SerialNumber
}

// createErr tries CreateKey with a per-attempt deadline.
func createErr(t testing.TB, c *kes.Client, name string) error {
	t.Helper()
	return c.CreateKey(ctxA(t), name)
}

// ---------------------------------------------------------------------------
// Tests.

// reloadPolicyNode starts a node where identity B is in policy "p", which
// only allows creating keys named a*.
func reloadPolicyNode(t *testing.T, name string) (n *node, bKey kes.APIKey) {
	t.Helper()
	bKey = newAPIKey(t)
	n = newNode(t, nodeOptions{Name: name, Policies: map[string]policyConf{
		"p": {Allow: []string{"/v1/key/create/a*"}, Identities: []string{bKey.Identity().String()}},
	}})
	n.start(t, nil)
	n.waitServing(t)
	return n, bKey
}

// TestReloadPolicy: a policy rewritten on disk applies after SIGHUP, and the
// admin's HTTP/2 connections (kes.Client and a raw http.Client, one of them
// carrying an audit stream opened before the signal) survive the reload.
func TestReloadPolicy(t *testing.T) {
	t.Parallel()
	n, bKey := reloadPolicyNode(t, "reload-policy")
	adminKey := mustAPIKey(t, adminAPIKey)
	b := n.client(bKey)
	admin := n.client(adminKey)
	rawAdmin := n.raw("admin", apiKeyCert(t, adminKey))

	wantKesErr(t, "B creates b1 before the reload", createErr(t, b, "b1"), kes.ErrNotAllowed)
	if err := createErr(t, b, "a1"); err != nil {
		t.Fatalf("B creates a1 (allowed by /v1/key/create/a*): %v", err)
	}

	// Connections opened before SIGHUP.
	kesBefore := &connTrace{}
	if _, err := admin.Status(kesBefore.ctx(ctxT(t))); err != nil {
		t.Fatalf("admin Status: %v", err)
	}
	st, rawBefore := tracedGet(t, n, rawAdmin.hc, "/v1/status")
	if st != http.StatusOK {
		t.Fatalf("raw admin GET /v1/status: %d", st)
	}
	// A request in flight across the reload: the admin's audit stream.
	streamCtx, stopCtx := context.WithTimeout(context.Background(), 15*time.Second)
	defer stopCtx()
	audit, err := admin.AuditLog(streamCtx)
	if err != nil {
		t.Fatalf("admin AuditLog: %v", err)
	}
	events := streamEvents(streamCtx, audit.Next, audit.Event)
	defer stopStream(stopCtx, events, audit.Close)

	cfg := n.readConfig(t)
	p := cfg.Policy["p"]
	p.Allow = []string{"/v1/key/create/*"}
	cfg.Policy["p"] = p
	n.writeConfig(t, cfg)
	n.sighup(t)

	var last error
	poll(t, "B to be allowed to create b1 after SIGHUP", func() (bool, string) {
		last = createErr(t, b, "b1")
		return last == nil, fmt.Sprintf("%v (%s)", last, describeErr(last))
	})
	n.requireAlive(t, "SIGHUP (policy reload)")
	if err := createErr(t, b, "zz-b2"); err != nil {
		t.Errorf("B creates zz-b2 with /v1/key/create/*: %v", err)
	}

	// The connections from before the reload are still the ones in use.
	kesAfter := &connTrace{}
	if _, err := admin.Status(kesAfter.ctx(ctxT(t))); err != nil {
		t.Errorf("admin Status on the pre-reload kes.Client: %v", err)
	}
	requireSameConn(t, "kes.Client", kesBefore, kesAfter)
	st, rawAfter := tracedGet(t, n, rawAdmin.hc, "/v1/status")
	if st != http.StatusOK {
		t.Errorf("raw admin GET /v1/status after SIGHUP: %d", st)
	}
	requireSameConn(t, "raw http.Client", rawBefore, rawAfter)

	// The audit stream opened before SIGHUP still delivers, and it shows
	// B's successful create of b1 under the new policy.
	timeout := time.After(reloadWait)
	for seen := 0; ; seen++ {
		if seen > 1000 {
			t.Fatal("no audit event for B's create of b1 among 1000 events")
		}
		select {
		case e, ok := <-events:
			if !ok {
				t.Fatalf("the audit stream opened before SIGHUP ended: %v", audit.Close())
			}
			if e.APIPath == "/v1/key/create/b1" && e.StatusCode == http.StatusOK {
				if e.ClientIdentity != bKey.Identity() {
					t.Errorf("audit event %+v: identity %s, want B %s", e, e.ClientIdentity, bKey.Identity())
				}
				n.requireAlive(t, "SIGHUP (policy reload)")
				return
			}
		case <-timeout:
			t.Fatalf("the audit stream opened before SIGHUP delivered no 200 event for /v1/key/create/b1 within %v", reloadWait)
		}
	}
}

// TestReloadAdmin: admin.identity changes from A to C on SIGHUP; A loses
// every privilege (it is in no policy), C gains them. A key added to keys:
// in the same rewrite is created.
func TestReloadAdmin(t *testing.T) {
	t.Parallel()
	n := newNode(t, nodeOptions{Name: "reload-admin"})
	n.start(t, nil)
	n.waitServing(t)
	aKey := mustAPIKey(t, adminAPIKey)
	cKey := newAPIKey(t)
	a, c := n.client(aKey), n.client(cKey)

	if err := createErr(t, a, "a-before"); err != nil {
		t.Fatalf("admin A creates a key: %v", err)
	}
	wantKesErr(t, "C creates x before the reload", createErr(t, c, "x"), kes.ErrNotAllowed)

	cfg := n.readConfig(t)
	for name, p := range cfg.Policy {
		for _, id := range p.Identities {
			if id == cKey.Identity().String() {
				t.Fatalf("C is in policy %q", name)
			}
		}
	}
	cfg.Admin.Identity = cKey.Identity().String()
	// §7.1: pre-defined keys are also created on SIGHUP if missing.
	cfg.Keys = append(cfg.Keys, struct {
		Name string `yaml:"name"`
	}{"reload-preset"})
	n.writeConfig(t, cfg)
	n.sighup(t)

	poll(t, "C to be the admin after SIGHUP", func() (bool, string) {
		info, _, err := c.DescribeSelf(ctxA(t))
		return err == nil && info.IsAdmin, fmt.Sprintf("%+v %v", info, err)
	})
	n.requireAlive(t, "SIGHUP (admin reload)")
	// A's kes.Client keeps its connection; the answer is the new decision.
	wantKesErr(t, "old admin A creates x after the reload", createErr(t, a, "x"), kes.ErrNotAllowed)
	// A is now an identity in no policy: unknown (§16 item 36).
	_, _, err := a.DescribeSelf(ctxA(t))
	wantKesErr(t, "A DescribeSelf after the reload", err, kes.ErrIdentityNotFound)
	if _, err := a.Status(ctxA(t)); !errors.Is(err, kes.ErrNotAllowed) {
		t.Errorf("A Status after the reload: %v (%s), want ErrNotAllowed", err, describeErr(err))
	}
	if err := createErr(t, c, "x"); err != nil {
		t.Errorf("new admin C creates x: %v", err)
	}
	if _, err := c.DescribeKey(ctxA(t), "a-before"); err != nil {
		t.Errorf("new admin C describes A's key: %v", err)
	}
	poll(t, "the pre-defined key added to keys: to be created after SIGHUP", func() (bool, string) {
		_, err := c.DescribeKey(ctxA(t), "reload-preset")
		return err == nil, fmt.Sprintf("%v (%s)", err, describeErr(err))
	})
	n.requireAlive(t, "SIGHUP (admin reload)")
}

// TestReloadTLS: a new server certificate (new key, same SANs and CA) is
// presented to new connections after SIGHUP; a connection established
// before keeps working, still on the old certificate.
func TestReloadTLS(t *testing.T) {
	t.Parallel()
	n := newNode(t, nodeOptions{Name: "reload-tls"})
	n.start(t, nil)
	n.waitServing(t)
	p := getPKI(t)
	adminKey := mustAPIKey(t, adminAPIKey)
	oldSerial := pemSerial(t, p.serverCertPEM)
	if got := n.servedCert(t).SerialNumber; got.Cmp(oldSerial) != 0 {
		t.Fatalf("served certificate serial %v, want the harness's %v", got, oldSerial)
	}
	rawAdmin := n.raw("admin", apiKeyCert(t, adminKey))
	st, before := tracedGet(t, n, rawAdmin.hc, "/v1/status")
	if st != http.StatusOK {
		t.Fatalf("raw admin GET /v1/status: %d", st)
	}
	admin := n.client(adminKey)
	if err := createErr(t, admin, "tls-before"); err != nil {
		t.Fatal(err)
	}

	certPEM, keyPEM, newSerial := p.newServerCert(t)
	overwrite(t, filepath.Join(n.dir, "server.key"), keyPEM)
	overwrite(t, filepath.Join(n.dir, "server.crt"), certPEM)
	n.sighup(t)

	poll(t, "a new TLS connection to present the new certificate", func() (bool, string) {
		got := n.servedCert(t).SerialNumber
		return got.Cmp(newSerial) == 0, fmt.Sprintf("serial %v (old %v, new %v)", got, oldSerial, newSerial)
	})
	n.requireAlive(t, "SIGHUP (TLS reload)")

	// The pre-reload connection: reused, still the old certificate, working.
	st, after := tracedGet(t, n, rawAdmin.hc, "/v1/status")
	if st != http.StatusOK {
		t.Errorf("raw admin GET /v1/status on the pre-reload connection: %d", st)
	}
	requireSameConn(t, "raw http.Client", before, after)
	if after.serial == nil || after.serial.Cmp(oldSerial) != 0 {
		t.Errorf("pre-reload connection reports server serial %v, want the old %v", after.serial, oldSerial)
	}
	if err := createErr(t, admin, "tls-after"); err != nil {
		t.Errorf("pre-reload kes.Client creates a key: %v", err)
	}
	// A fresh client verifies the new chain and works.
	fresh := n.client(adminKey)
	tr := &connTrace{}
	if _, err := fresh.DescribeKey(tr.ctx(ctxT(t)), "tls-before"); err != nil {
		t.Errorf("fresh kes.Client after the TLS reload: %v", err)
	}
	if tr.serial == nil || tr.serial.Cmp(newSerial) != 0 {
		t.Errorf("fresh kes.Client saw %v, want the new serial %v", tr, newSerial)
	}
	n.requireAlive(t, "SIGHUP (TLS reload)")
}

// TestReloadRejected: a reload that fails anywhere is rejected as a whole:
// the server keeps serving with the old policies and the old certificate,
// logs "reload rejected", and still accepts a later valid reload.
func TestReloadRejected(t *testing.T) {
	t.Parallel()
	n, bKey := reloadPolicyNode(t, "reload-reject")
	p := getPKI(t)
	adminKey := mustAPIKey(t, adminAPIKey)
	b := n.client(bKey)
	admin := n.client(adminKey)
	rawAdmin := n.raw("admin", apiKeyCert(t, adminKey))
	oldSerial := pemSerial(t, p.serverCertPEM)
	certPath, keyPath := filepath.Join(n.dir, "server.crt"), filepath.Join(n.dir, "server.key")
	st, before := tracedGet(t, n, rawAdmin.hc, "/v1/status")
	if st != http.StatusOK {
		t.Fatalf("raw admin GET /v1/status: %d", st)
	}

	// widened is the good config with B allowed to create any key: if a
	// rejected reload leaked it, B could create b1.
	widened := n.readConfig(t)
	wp := widened.Policy["p"]
	wp.Allow = []string{"/v1/key/create/*"}
	widened.Policy["p"] = wp

	unchanged := func(t *testing.T, after string) {
		t.Helper()
		n.requireAlive(t, after)
		wantKesErr(t, "B creates b1 after "+after, createErr(t, b, "b1"), kes.ErrNotAllowed)
		name := fmt.Sprintf("a-%d", time.Now().UnixNano())
		if err := createErr(t, b, name); err != nil {
			t.Errorf("B creates %s after %s: %v", name, after, err)
		}
		if info, _, err := admin.DescribeSelf(ctxA(t)); err != nil || !info.IsAdmin {
			t.Errorf("admin DescribeSelf after %s: %+v %v", after, info, err)
		}
		if got := n.servedCert(t).SerialNumber; got.Cmp(oldSerial) != 0 {
			t.Errorf("after %s a new connection is served certificate %v, want the old %v", after, got, oldSerial)
		}
		st, tr := tracedGet(t, n, rawAdmin.hc, "/v1/status")
		if st != http.StatusOK {
			t.Errorf("raw admin GET /v1/status after %s: %d", after, st)
		}
		requireSameConn(t, "raw http.Client after "+after, before, tr)
	}

	t.Run("invalid_yaml", func(t *testing.T) {
		// The widened policy followed by a line that is not YAML.
		broken := append(marshalConfig(t, widened), "\tbroken: [unclosed\n"...)
		if err := yaml.Unmarshal(broken, new(yamlConfig)); err == nil {
			t.Fatal("test bug: the broken config parses")
		}
		r0 := n.rejections(t)
		overwrite(t, n.cfgPath, broken)
		n.sighup(t)
		n.waitRejected(t, r0)
		unchanged(t, "SIGHUP with invalid YAML")
	})

	t.Run("unparsable_cert", func(t *testing.T) {
		// A valid config (with the widened policy) but a certificate file
		// that does not parse: nothing of the file may apply.
		n.writeConfig(t, widened)
		overwrite(t, certPath, []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"))
		defer overwrite(t, certPath, p.serverCertPEM)
		r0 := n.rejections(t)
		n.sighup(t)
		n.waitRejected(t, r0)
		unchanged(t, "SIGHUP with an unparsable certificate")
	})

	t.Run("new_cert_with_invalid_policy", func(t *testing.T) {
		// A config naming a valid new certificate that passes YAML
		// decoding but is invalid (the admin is assigned to a policy,
		// §7.1): the certificate must not be installed either. (Fails
		// against cmd/kmsd as of 8955c44: reload stores the new TLS state
		// before api.Reload validates the policies.) The new pair sits at
		// new paths: rewriting the running files would install it without
		// any SIGHUP (certificate files are reloaded when they change).
		certPEM, keyPEM, _ := p.newServerCert(t)
		bad := n.readConfig(t)
		bad.TLS.Key, bad.TLS.Cert = filepath.Join(n.dir, "server-next.key"), filepath.Join(n.dir, "server-next.crt")
		overwrite(t, bad.TLS.Key, keyPEM)
		overwrite(t, bad.TLS.Cert, certPEM)
		bp := widened.Policy["p"]
		bp.Identities = append([]string{adminIdentity}, bp.Identities...)
		bad.Policy = map[string]policyConf{"p": bp}
		n.writeConfig(t, bad)
		r0 := n.rejections(t)
		n.sighup(t)
		n.waitRejected(t, r0)
		unchanged(t, "SIGHUP with a new certificate and the admin in a policy")
	})

	t.Run("valid_reload_after_rejections", func(t *testing.T) {
		// The original files plus the widened policy: this one applies.
		overwrite(t, keyPath, p.serverKeyPEM)
		overwrite(t, certPath, p.serverCertPEM)
		n.writeConfig(t, widened)
		r0 := n.rejections(t)
		n.sighup(t)
		poll(t, "B to be allowed to create b1 after a valid SIGHUP", func() (bool, string) {
			err := createErr(t, b, "b1")
			return err == nil, fmt.Sprintf("%v (%s)", err, describeErr(err))
		})
		n.requireAlive(t, "a valid SIGHUP after rejected ones")
		if r := n.rejections(t); r != r0 {
			t.Errorf("the valid reload logged %q (%d -> %d)", rejectLine, r0, r)
		}
		if got := n.servedCert(t).SerialNumber; got.Cmp(oldSerial) != 0 {
			t.Errorf("served certificate %v, want %v", got, oldSerial)
		}
		st, tr := tracedGet(t, n, rawAdmin.hc, "/v1/status")
		if st != http.StatusOK {
			t.Errorf("raw admin GET /v1/status: %d", st)
		}
		requireSameConn(t, "raw http.Client after all reloads", before, tr)
	})
}
