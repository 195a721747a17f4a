package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsd/kmsd/health"
)

// tcert is a generated certificate with its key and PEM encodings.
type tcert struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
	keyPEM  []byte
}

// mkCert issues a certificate valid until notAfter: a self-signed CA
// when parent is nil and isCA, otherwise a leaf (serverAuth+clientAuth,
// SANs 127.0.0.1 and cn) or an intermediate CA signed by parent.
func mkCert(t testing.TB, cn string, parent *tcert, isCA bool, notAfter time.Time) *tcert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 100))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    notAfter.Add(-400 * day),
		NotAfter:     notAfter,
	}
	if isCA {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		tmpl.DNSNames = []string{cn}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &tcert{cert: c, key: key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk})}
}

// logRec is one captured log record.
type logRec struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

// capture is a slog.Handler that keeps every record.
type capture struct {
	mu   *sync.Mutex
	recs *[]logRec
}

func newCapture() capture { return capture{mu: new(sync.Mutex), recs: new([]logRec)} }

func (c capture) Enabled(context.Context, slog.Level) bool { return true }
func (c capture) WithAttrs([]slog.Attr) slog.Handler       { return c }
func (c capture) WithGroup(string) slog.Handler            { return c }
func (c capture) Handle(_ context.Context, r slog.Record) error {
	rec := logRec{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	c.mu.Lock()
	*c.recs = append(*c.recs, rec)
	c.mu.Unlock()
	return nil
}

// take returns the records at level since the last take and forgets them.
func (c capture) take(level slog.Level) []logRec {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out, rest []logRec
	for _, r := range *c.recs {
		if r.level == level {
			out = append(out, r)
		} else {
			rest = append(rest, r)
		}
	}
	*c.recs = rest
	return out
}

func (c capture) count(level slog.Level, substr string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, r := range *c.recs {
		if r.level == level && strings.Contains(fmt.Sprint(r.msg, r.attrs), substr) {
			n++
		}
	}
	return n
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeClock) now() time.Time  { f.mu.Lock(); defer f.mu.Unlock(); return f.t }
func (f *fakeClock) set(t time.Time) { f.mu.Lock(); f.t = t; f.mu.Unlock() }

func apiState(chain []*tcert, cas ...*tcert) *tlsState {
	st := &tlsState{files: []string{"/etc/kmsd/server.crt", "/etc/kmsd/server.key"}}
	for _, c := range chain {
		st.chain = append(st.chain, c.cert)
	}
	for _, c := range cas {
		st.cas = append(st.cas, c.cert)
	}
	if len(cas) > 0 {
		st.files = append(st.files, "/etc/kmsd/client-ca.pem")
	}
	return st
}

func clusterStateOf(chain []*tcert, cas ...*tcert) *clusterState {
	st := &clusterState{files: []string{"/etc/kmsd/node.crt", "/etc/kmsd/node.key", "/etc/kmsd/cluster-ca.pem"}}
	for _, c := range chain {
		st.chain = append(st.chain, c.cert)
	}
	for _, c := range cas {
		st.cas = append(st.cas, c.cert)
	}
	return st
}

// TestCertMonitorThresholds walks a fake clock past every threshold: one
// WARN per threshold, never repeated on later checks, one ERROR at
// expiry; a certificate first seen past several thresholds is reported
// once, at the tightest; a replaced certificate starts afresh.
func TestCertMonitorThresholds(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := &fakeClock{t: t0}
	logs := newCapture()
	m := &certMonitor{now: clk.now, log: slog.New(logs)}
	ca := mkCert(t, "api-ca", nil, true, t0.Add(3650*day))
	leaf := mkCert(t, "server", ca, false, t0.Add(40*day))
	m.setAPI(apiState([]*tcert{leaf}))

	steps := []struct {
		left      time.Duration // time left at this check
		threshold string        // the WARN expected ("" none)
		expired   bool          // the ERROR expected
	}{
		{40 * day, "", false},
		{35 * day, "", false},
		{30 * day, "30d", false},
		{29 * day, "", false},
		{20 * day, "", false},
		{14*day - time.Hour, "14d", false},
		{13 * day, "", false},
		{8 * day, "", false},
		{6 * day, "7d", false},
		{6*day - time.Minute, "", false},
		{2 * day, "", false},
		{23 * time.Hour, "1d", false},
		{time.Hour, "", false},
		{time.Second, "", false},
		{-time.Minute, "", true},
		{-time.Hour, "", false},
		{-30 * day, "", false},
	}
	warns, errs := 0, 0
	for _, s := range steps {
		clk.set(leaf.cert.NotAfter.Add(-s.left))
		for range 3 { // the ticker may fire any number of times
			m.check()
		}
		w, e := logs.take(slog.LevelWarn), logs.take(slog.LevelError)
		warns, errs = warns+len(w), errs+len(e)
		switch {
		case s.threshold != "" && (len(w) != 1 || w[0].attrs["threshold"] != s.threshold):
			t.Errorf("%v left: warnings %+v, want exactly one at threshold %s", s.left, w, s.threshold)
		case s.threshold == "" && len(w) != 0:
			t.Errorf("%v left: unexpected warnings %+v", s.left, w)
		}
		if s.expired != (len(e) == 1) || len(e) > 1 {
			t.Errorf("%v left: errors %+v, want expired=%v", s.left, e, s.expired)
		}
		for _, r := range append(w, e...) {
			if r.attrs["cert"] != roleAPIServer || r.attrs["serial"] != serialHex(leaf.cert) || r.attrs["subject"] != "CN=server" {
				t.Errorf("record %+v does not name the certificate", r)
			}
		}
	}
	if warns != 4 || errs != 1 {
		t.Errorf("%d warnings and %d errors over the certificate's life, want 4 and 1", warns, errs)
	}

	// A certificate first seen with 5 days left: only the 7d warning,
	// later the 1d one.
	short := mkCert(t, "short", ca, false, clk.now().Add(5*day))
	m.setCluster(clusterStateOf([]*tcert{short}, ca))
	if w := logs.take(slog.LevelWarn); len(w) != 1 || w[0].attrs["threshold"] != "7d" || w[0].attrs["cert"] != roleNode {
		t.Errorf("new certificate with 5d left: warnings %+v, want one at 7d", w)
	}
	clk.set(short.cert.NotAfter.Add(-12 * time.Hour))
	m.check()
	m.check()
	if w := logs.take(slog.LevelWarn); len(w) != 1 || w[0].attrs["threshold"] != "1d" {
		t.Errorf("12h left: warnings %+v, want one at 1d", w)
	}

	// Rotation: fresh certificates; the old ones' state is dropped.
	fresh := mkCert(t, "fresh", ca, false, clk.now().Add(90*day))
	m.setAPI(apiState([]*tcert{fresh}))
	m.setCluster(clusterStateOf([]*tcert{fresh}, ca))
	if w, e := logs.take(slog.LevelWarn), logs.take(slog.LevelError); len(w)+len(e) != 0 {
		t.Errorf("fresh certificates: %+v %+v", w, e)
	}
	m.mu.Lock()
	if len(m.warned) != 2 { // fresh + ca
		t.Errorf("warn-once state holds %d certificates, want 2", len(m.warned))
	}
	m.mu.Unlock()
}

// TestCertMonitorHealth: the "certificates" check for CAs and leaves at
// various distances from expiry.
func TestCertMonitorHealth(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	far := t0.Add(365 * day)
	for _, tt := range []struct {
		name                         string
		leaf, clientCA, node, nodeCA time.Time
		margin                       time.Duration
		want                         health.Status
		msg                          string
	}{
		{"all far", far, far, far, far, time.Hour, health.OK, "soonest: "},
		{"leaf in 20 days", t0.Add(20 * day), far, far, far, time.Hour, health.Degraded, `api server certificate "CN=leaf"`},
		{"degraded message has time left", t0.Add(20*day + 3*time.Hour), far, far, far, time.Hour, health.Degraded, "expires in 20d3h"},
		{"30 days exactly", t0.Add(30 * day), far, far, far, time.Hour, health.Degraded, "30d"},
		{"31 days", t0.Add(31 * day), far, far, far, time.Hour, health.OK, ""},
		{"leaf within the margin", t0.Add(30 * time.Minute), far, far, far, time.Hour, health.Fail, "within the readiness margin 1h0m0s"},
		{"leaf expired", t0.Add(-2 * time.Hour), far, far, far, time.Hour, health.Fail, "expired 2h0m0s ago"},
		{"client CA within the margin", far, t0.Add(45 * time.Minute), far, far, time.Hour, health.Fail, "api client CA"},
		{"cluster CA in 10 days", far, far, far, t0.Add(10 * day), time.Hour, health.Degraded, "cluster CA"},
		{"node cert within a 2d margin", far, far, t0.Add(36 * time.Hour), far, 48 * time.Hour, health.Fail, "node certificate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := &certMonitor{now: func() time.Time { return t0 }, log: slog.New(newCapture())}
			ca := mkCert(t, "client-ca", nil, true, tt.clientCA)
			root := mkCert(t, "root", nil, true, far.Add(day))
			m.setAPI(apiState([]*tcert{mkCert(t, "leaf", root, false, tt.leaf)}, ca))
			m.setCluster(clusterStateOf([]*tcert{mkCert(t, "node", root, false, tt.node)}, mkCert(t, "cluster-ca", nil, true, tt.nodeCA), root))
			st, msg := m.health(tt.margin)
			if st != tt.want || !strings.Contains(msg, tt.msg) {
				t.Errorf("health = %v %q, want %v containing %q", st, msg, tt.want, tt.msg)
			}
		})
	}
	var empty certMonitor
	if st, _ := empty.health(time.Hour); st != health.OK {
		t.Errorf("no certificates: %v", st)
	}
	if _, _, _, ok := empty.Soonest(); ok {
		t.Error("Soonest on an empty monitor: ok")
	}
}

// TestCertMonitorMetrics: every kmsd_tls_* family is one unlabelled
// sample with the expected value; the client CA family is absent
// without client CAs; Soonest names the right certificate.
func TestCertMonitorMetrics(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	m := &certMonitor{now: func() time.Time { return t0 }, log: slog.New(newCapture())}
	root := mkCert(t, "root", nil, true, t0.Add(900*day))
	inter := mkCert(t, "inter", root, true, t0.Add(200*day))
	leaf := mkCert(t, "leaf", inter, false, t0.Add(300*day)) // the intermediate expires first
	clientCA1 := mkCert(t, "client-ca-1", nil, true, t0.Add(500*day))
	clientCA2 := mkCert(t, "client-ca-2", nil, true, t0.Add(120*day))
	node := mkCert(t, "node", root, false, t0.Add(100*day))
	clusterCA := mkCert(t, "cluster-ca", nil, true, t0.Add(80*day))
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)

	gather := func() map[string]float64 {
		t.Helper()
		fams, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, f := range fams {
			if len(f.Metric) != 1 || len(f.Metric[0].Label) != 0 {
				t.Errorf("%s: %d samples (labels %v), want one unlabelled", f.GetName(), len(f.Metric), f.Metric[0].Label)
			}
			mm := f.Metric[0]
			if mm.Gauge != nil {
				out[f.GetName()] = mm.Gauge.GetValue()
			} else {
				out[f.GetName()] = mm.Counter.GetValue()
			}
		}
		return out
	}

	m.setAPI(apiState([]*tcert{leaf, inter}))
	m.setCluster(clusterStateOf([]*tcert{node}, clusterCA))
	got := gather()
	if _, ok := got["kmsd_tls_api_client_ca_expiry_timestamp_seconds"]; ok {
		t.Error("client CA family present without client CAs")
	}
	m.setAPI(apiState([]*tcert{leaf, inter}, clientCA1, clientCA2))
	m.reloaded()
	m.reloaded()
	m.rejected()
	got = gather()
	for name, want := range map[string]float64{
		"kmsd_tls_api_cert_expiry_timestamp_seconds":      float64(inter.cert.NotAfter.Unix()),
		"kmsd_tls_api_client_ca_expiry_timestamp_seconds": float64(clientCA2.cert.NotAfter.Unix()),
		"kmsd_tls_cluster_cert_expiry_timestamp_seconds":  float64(node.cert.NotAfter.Unix()),
		"kmsd_tls_cluster_ca_expiry_timestamp_seconds":    float64(clusterCA.cert.NotAfter.Unix()),
		"kmsd_tls_cert_soonest_expiry_timestamp_seconds":  float64(clusterCA.cert.NotAfter.Unix()),
		"kmsd_tls_reloads_total":                          2,
		"kmsd_tls_reload_failures_total":                  1,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
	if len(got) != 7 {
		t.Errorf("families %v, want 7", got)
	}
	name, subject, notAfter, ok := m.Soonest()
	if !ok || name != roleClusterCA || subject != "CN=cluster-ca" || !notAfter.Equal(clusterCA.cert.NotAfter) {
		t.Errorf("Soonest = %q %q %v %v", name, subject, notAfter, ok)
	}
}

func TestFmtLeft(t *testing.T) {
	for d, want := range map[time.Duration]string{
		30 * day:                   "30d",
		20*day + 3*time.Hour:       "20d3h",
		23*time.Hour + time.Minute: "23h1m0s",
		90 * time.Second:           "1m30s",
	} {
		if got := fmtLeft(d); got != want {
			t.Errorf("fmtLeft(%v) = %q, want %q", d, got, want)
		}
	}
}
