package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsd/kmsd/health"
)

// Expiry policy (DESIGN.md, "Certificates").
var (
	// certWarnThresholds: a WARN line once per certificate when its time
	// left first drops below each of these (largest first).
	certWarnThresholds = []time.Duration{30 * day, 14 * day, 7 * day, 1 * day}
	// certDegradedWithin: the "certificates" check is degraded while a
	// certificate expires within this window.
	certDegradedWithin = 30 * day
	// certCheckEvery is how often the monitor re-checks expiry between
	// reloads.
	certCheckEvery = 10 * time.Minute
)

const day = 24 * time.Hour

// Certificate roles: which part of the node's TLS a certificate is.
const (
	roleAPIServer   = "api server certificate"
	roleAPIChain    = "api server chain certificate"
	roleAPIClientCA = "api client CA"
	roleNode        = "node certificate"
	roleNodeChain   = "node chain certificate"
	roleClusterCA   = "cluster CA"
)

// heldCert is one certificate the node holds.
type heldCert struct {
	role string
	file string
	cert *x509.Certificate
	id   [32]byte // sha256 of the DER: the key of the warn-once state
}

func (h heldCert) describe() string {
	return fmt.Sprintf("%s %q (%s, serial %s)", h.role, h.cert.Subject.String(), h.file, serialHex(h.cert))
}

// certMonitor tracks every certificate the node holds (API server chain,
// API client CAs, node certificate chain, cluster CAs): expiry metrics,
// warnings before expiry, the soonest expiry for /v1/status and the
// "certificates" health check. It is also the prometheus.Collector of
// the kmsd_tls_* families. The zero value works (time.Now, slog.Default)
// until start sets the logger.
type certMonitor struct {
	mu   sync.Mutex
	now  func() time.Time // nil: time.Now
	log  *slog.Logger     // nil: slog.Default()
	api  []heldCert
	clus []heldCert
	// warned is, per certificate, the tightest expiry level already
	// reported: an index into certWarnThresholds, or
	// len(certWarnThresholds) once "expired" was logged.
	warned   map[[32]byte]int
	reloads  uint64
	failures uint64
}

func (m *certMonitor) clock() time.Time {
	if m.now != nil {
		return m.now()
	}
	return time.Now()
}

func (m *certMonitor) logger() *slog.Logger {
	if m.log != nil {
		return m.log
	}
	return slog.Default()
}

// start sets the logger and runs the periodic expiry check until ctx
// ends (every certCheckEvery).
func (m *certMonitor) start(ctx context.Context, log *slog.Logger) {
	m.mu.Lock()
	m.log = log
	m.mu.Unlock()
	go func() {
		t := time.NewTicker(certCheckEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				m.check()
			}
		}
	}()
}

// setAPI records the API listener's certificates (leaf, chain, client
// CAs) and checks them.
func (m *certMonitor) setAPI(st *tlsState) {
	if st == nil {
		return
	}
	hs := heldSet(st.chain, st.cas, roleAPIServer, roleAPIChain, roleAPIClientCA, st.files[0], st.files[len(st.files)-1])
	m.mu.Lock()
	m.api = hs
	m.mu.Unlock()
	m.check()
}

// setCluster records the node-channel certificates and checks them.
func (m *certMonitor) setCluster(st *clusterState) {
	if st == nil {
		return
	}
	hs := heldSet(st.chain, st.cas, roleNode, roleNodeChain, roleClusterCA, st.files[0], st.files[2])
	m.mu.Lock()
	m.clus = hs
	m.mu.Unlock()
	m.check()
}

// heldSet lists a TLS group's certificates: the leaf (leafRole), the rest
// of its chain (chainRole), both from certFile, and the CAs (caRole) from
// caFile.
func heldSet(chain, cas []*x509.Certificate, leafRole, chainRole, caRole, certFile, caFile string) []heldCert {
	var hs []heldCert
	for i, c := range chain {
		role := leafRole
		if i > 0 {
			role = chainRole
		}
		hs = append(hs, held(role, certFile, c))
	}
	for _, c := range cas {
		hs = append(hs, held(caRole, caFile, c))
	}
	return hs
}

func held(role, file string, c *x509.Certificate) heldCert {
	return heldCert{role: role, file: file, cert: c, id: sha256.Sum256(c.Raw)}
}

// reloaded and rejected count certificate reloads for the metrics.
func (m *certMonitor) reloaded() { m.mu.Lock(); m.reloads++; m.mu.Unlock() }
func (m *certMonitor) rejected() { m.mu.Lock(); m.failures++; m.mu.Unlock() }

// all returns every held certificate (callers hold mu).
func (m *certMonitor) all() []heldCert {
	return append(append([]heldCert(nil), m.api...), m.clus...)
}

// expiryLevel is -1 while more than the first threshold is left, i for
// the tightest threshold crossed, len(certWarnThresholds) once expired.
func expiryLevel(left time.Duration) int {
	if left < 0 {
		return len(certWarnThresholds)
	}
	lvl := -1
	for i, th := range certWarnThresholds {
		if left <= th {
			lvl = i
		}
	}
	return lvl
}

// check logs, once per certificate and level, a WARN when a certificate
// crosses a threshold and an ERROR when it has expired. A certificate
// first seen past several thresholds is reported once, at the tightest.
func (m *certMonitor) check() {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock()
	if m.warned == nil {
		m.warned = map[[32]byte]int{}
	}
	held := m.all()
	keep := map[[32]byte]bool{}
	for _, h := range held {
		keep[h.id] = true
		left := h.cert.NotAfter.Sub(now)
		lvl := expiryLevel(left)
		prev, seen := m.warned[h.id]
		if seen && lvl <= prev {
			continue
		}
		m.warned[h.id] = lvl
		if lvl < 0 {
			continue
		}
		attrs := []any{"cert", h.role, "file", h.file, "subject", h.cert.Subject.String(),
			"serial", serialHex(h.cert), "not_after", h.cert.NotAfter.UTC()}
		if lvl == len(certWarnThresholds) {
			m.logger().Error("kmsd: certificate has expired", append(attrs, "expired_for", fmtLeft(-left))...)
			continue
		}
		m.logger().Warn("kmsd: certificate expires soon", append(attrs, "left", fmtLeft(left), "threshold", fmtLeft(certWarnThresholds[lvl]))...)
	}
	for id := range m.warned {
		if !keep[id] {
			delete(m.warned, id)
		}
	}
}

// soonest returns the held certificate that expires first (callers hold mu).
func (m *certMonitor) soonest() (heldCert, bool) {
	held := m.all()
	if len(held) == 0 {
		return heldCert{}, false
	}
	return slices.MinFunc(held, func(a, b heldCert) int { return a.cert.NotAfter.Compare(b.cert.NotAfter) }), true
}

// Soonest returns the certificate that expires first: a human name
// ("api server certificate", "cluster CA", ...), its subject and its
// NotAfter. ok is false when no certificate is loaded yet.
func (m *certMonitor) Soonest() (name, subject string, notAfter time.Time, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h, ok := m.soonest()
	if !ok {
		return "", "", time.Time{}, false
	}
	return h.role, h.cert.Subject.String(), h.cert.NotAfter, true
}

// health is the "certificates" readiness check: Fail when a certificate
// (CAs included) has expired or expires within margin, Degraded within
// certDegradedWithin, OK otherwise.
func (m *certMonitor) health(margin time.Duration) (health.Status, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h, ok := m.soonest()
	if !ok {
		return health.OK, "no certificates loaded yet"
	}
	now := m.clock()
	left := h.cert.NotAfter.Sub(now)
	at := h.cert.NotAfter.UTC().Format(time.RFC3339)
	switch {
	case left < 0:
		return health.Fail, fmt.Sprintf("%s expired %s ago (%s)", h.describe(), fmtLeft(-left), at)
	case left <= margin:
		return health.Fail, fmt.Sprintf("%s expires in %s (%s), within the readiness margin %s", h.describe(), fmtLeft(left), at, fmtLeft(margin))
	case left <= certDegradedWithin:
		return health.Degraded, fmt.Sprintf("%s expires in %s (%s)", h.describe(), fmtLeft(left), at)
	}
	return health.OK, fmt.Sprintf("soonest: %s expires in %s", h.role, fmtLeft(left))
}

// Metric families: single unlabelled samples (kms-go's Metrics() rejects
// anything else), unix seconds for expiry times.
var (
	descAPICertExpiry = prometheus.NewDesc("kmsd_tls_api_cert_expiry_timestamp_seconds",
		"NotAfter of the API server certificate chain (the soonest of leaf and intermediates), unix seconds.", nil, nil)
	descAPIClientCAExpiry = prometheus.NewDesc("kmsd_tls_api_client_ca_expiry_timestamp_seconds",
		"NotAfter of the API client CA (tls.ca, only with tls.auth on) that expires first, unix seconds.", nil, nil)
	descClusterCertExpiry = prometheus.NewDesc("kmsd_tls_cluster_cert_expiry_timestamp_seconds",
		"NotAfter of the node certificate chain (cluster.tls.cert; soonest of leaf and intermediates), unix seconds.", nil, nil)
	descClusterCAExpiry = prometheus.NewDesc("kmsd_tls_cluster_ca_expiry_timestamp_seconds",
		"NotAfter of the cluster CA (cluster.tls.ca) that expires first, unix seconds.", nil, nil)
	descSoonestExpiry = prometheus.NewDesc("kmsd_tls_cert_soonest_expiry_timestamp_seconds",
		"NotAfter of the certificate (CAs included) that expires first, unix seconds.", nil, nil)
	descTLSReloads = prometheus.NewDesc("kmsd_tls_reloads_total",
		"Certificate reloads installed (file change, poll or SIGHUP, when the files differ from the running ones).", nil, nil)
	descTLSReloadFailures = prometheus.NewDesc("kmsd_tls_reload_failures_total",
		"Certificate reloads rejected (the running certificates stayed in use).", nil, nil)
)

// Describe implements prometheus.Collector.
func (m *certMonitor) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAPICertExpiry, descAPIClientCAExpiry, descClusterCertExpiry,
		descClusterCAExpiry, descSoonestExpiry, descTLSReloads, descTLSReloadFailures} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. An expiry family without a
// certificate (no client CA with tls.auth off) is left out.
func (m *certMonitor) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	defer m.mu.Unlock()
	first := map[*prometheus.Desc]time.Time{}
	note := func(d *prometheus.Desc, t time.Time) {
		if cur, ok := first[d]; !ok || t.Before(cur) {
			first[d] = t
		}
	}
	for _, h := range m.all() {
		switch h.role {
		case roleAPIServer, roleAPIChain:
			note(descAPICertExpiry, h.cert.NotAfter)
		case roleAPIClientCA:
			note(descAPIClientCAExpiry, h.cert.NotAfter)
		case roleNode, roleNodeChain:
			note(descClusterCertExpiry, h.cert.NotAfter)
		case roleClusterCA:
			note(descClusterCAExpiry, h.cert.NotAfter)
		}
		note(descSoonestExpiry, h.cert.NotAfter)
	}
	for d, t := range first {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(t.Unix()))
	}
	ch <- prometheus.MustNewConstMetric(descTLSReloads, prometheus.CounterValue, float64(m.reloads))
	ch <- prometheus.MustNewConstMetric(descTLSReloadFailures, prometheus.CounterValue, float64(m.failures))
}

// serialHex is a certificate's serial number in lowercase hex.
func serialHex(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

// fmtLeft prints a duration in days and hours ("12d4h"), or h/m/s below
// a day.
func fmtLeft(d time.Duration) string {
	if d >= day {
		days := d / day
		if h := (d % day) / time.Hour; h > 0 {
			return fmt.Sprintf("%dd%dh", days, h)
		}
		return fmt.Sprintf("%dd", days)
	}
	return d.Round(time.Second).String()
}
