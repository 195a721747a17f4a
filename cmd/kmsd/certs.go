package main

import "time"

// certMonitor tracks every certificate the node holds (API server chain,
// API client CAs, node certificate chain, cluster CAs): expiry metrics,
// warnings before expiry, the soonest expiry for /v1/status and the
// "certificates" health check. (Issue 4, certificates helper: fill in.)
type certMonitor struct{}

// Soonest returns the certificate that expires first: a human name
// ("api server", "cluster ca", ...), its subject and its NotAfter. ok is
// false when no certificate is loaded yet.
func (m *certMonitor) Soonest() (name, subject string, notAfter time.Time, ok bool) {
	return "", "", time.Time{}, false
}
