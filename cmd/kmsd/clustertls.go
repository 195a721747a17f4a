package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
)

// clusterTLS is the node channel's TLS (cluster.tls): this node's
// certificate, used as server and as client, and the cluster CA as the
// only trust anchor in both directions. SIGHUP swaps it atomically;
// connections already established keep theirs.
type clusterTLS struct{ cur atomic.Pointer[tls.Config] }

// config is what cluster.Config.TLS wants: a fresh copy of the current
// configuration, read on every new connection.
func (r *clusterTLS) config() *tls.Config {
	c := r.cur.Load()
	if c == nil {
		return nil
	}
	return c.Clone()
}

// buildClusterTLS reads and checks cluster.tls without installing
// anything. The certificate must chain to the cluster CA for both
// serverAuth and clientAuth (so every peer accepts it in either role)
// and must name the advertise host as an IP or DNS SAN (peers verify the
// host they dial).
func buildClusterTLS(c *fileConfig) (*tls.Config, error) {
	t := c.Cluster.TLS
	cert, err := loadKeyPair(t.Cert, t.Key, "")
	if err != nil {
		return nil, fmt.Errorf("cluster.%w", err)
	}
	pool, err := loadCertPool(t.CA)
	if err != nil {
		return nil, fmt.Errorf("cluster.%w", err)
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		ic, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("cluster.tls: %s: %w", t.Cert, err)
		}
		inter.AddCert(ic)
	}
	for _, use := range []struct {
		name string
		eku  x509.ExtKeyUsage
	}{{"serverAuth", x509.ExtKeyUsageServerAuth}, {"clientAuth", x509.ExtKeyUsageClientAuth}} {
		opts := x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{use.eku}}
		if _, err := cert.Leaf.Verify(opts); err != nil {
			return nil, fmt.Errorf("cluster.tls: %s is not a valid %s certificate under the cluster CA %s: %w", t.Cert, use.name, t.CA, err)
		}
	}
	host, _, err := net.SplitHostPort(c.Cluster.Advertise)
	if err != nil {
		return nil, fmt.Errorf("cluster.advertise: %w", err)
	}
	if err := cert.Leaf.VerifyHostname(host); err != nil {
		var he x509.HostnameError
		if errors.As(err, &he) {
			return nil, fmt.Errorf("cluster.tls: %s does not name the advertise host %q as an IP or DNS SAN (peers verify it): %w", t.Cert, host, err)
		}
		return nil, fmt.Errorf("cluster.tls: %s: %w", t.Cert, err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{*cert},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}, nil
}
