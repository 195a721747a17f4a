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
// only trust anchor in both directions. A reload (SIGHUP or a
// certificate file change) swaps it atomically; connections already
// established keep theirs.
type clusterTLS struct{ cur atomic.Pointer[clusterState] }

// clusterState is one built cluster.tls: the tls.Config handed out per
// connection plus what the certificate monitor and the file watcher
// need.
type clusterState struct {
	cfg   *tls.Config
	chain []*x509.Certificate // the node certificate chain, leaf first
	cas   []*x509.Certificate // every cluster CA
	files []string            // cert, key, ca
	sum   [32]byte            // content hash of files, taken before reading them
}

// load builds the node-channel TLS from c and installs it.
func (r *clusterTLS) load(c *fileConfig) error {
	st, err := buildClusterState(c)
	if err != nil {
		return err
	}
	r.cur.Store(st)
	return nil
}

// config is what cluster.Config.TLS wants: a fresh copy of the current
// configuration, read on every new connection.
func (r *clusterTLS) config() *tls.Config {
	s := r.cur.Load()
	if s == nil {
		return nil
	}
	return s.cfg.Clone()
}

// buildClusterTLS reads and checks cluster.tls without installing
// anything; see buildClusterState.
func buildClusterTLS(c *fileConfig) (*tls.Config, error) {
	st, err := buildClusterState(c)
	if err != nil {
		return nil, err
	}
	return st.cfg, nil
}

// buildClusterState reads and checks cluster.tls without installing
// anything. The certificate must chain to the cluster CA for both
// serverAuth and clientAuth (so every peer accepts it in either role)
// and must name the advertise host as an IP or DNS SAN (peers verify the
// host they dial).
func buildClusterState(c *fileConfig) (*clusterState, error) {
	t := c.Cluster.TLS
	st := &clusterState{files: []string{t.Cert, t.Key, t.CA}}
	st.sum = fingerprint(st.files...)
	cert, err := loadKeyPair(t.Cert, t.Key, "")
	if err != nil {
		return nil, fmt.Errorf("cluster.%w", err)
	}
	pool, cas, err := loadCAs(t.CA)
	if err != nil {
		return nil, fmt.Errorf("cluster.%w", err)
	}
	if st.chain, err = parseChain(cert, t.Cert); err != nil {
		return nil, fmt.Errorf("cluster.%w", err)
	}
	st.cas = cas
	inter := x509.NewCertPool()
	for _, ic := range st.chain[1:] {
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
	st.cfg = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{*cert},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
	return st, nil
}
