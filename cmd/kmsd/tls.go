package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/kmsd/kmsd/api"
)

// tlsState is everything about the API listener's TLS that SIGHUP may
// change. It is swapped atomically; established connections keep the
// config they were handshaken with.
type tlsState struct {
	cert       *tls.Certificate
	clientCAs  *x509.CertPool
	clientAuth tls.ClientAuthType
}

type tlsReloader struct{ cur atomic.Pointer[tlsState] }

// load builds a new state from c and installs it; see build.
func (r *tlsReloader) load(c *fileConfig) error {
	st, err := buildTLS(c)
	if err != nil {
		return err
	}
	r.cur.Store(st)
	return nil
}

// buildTLS reads and checks everything c's tls section names, without
// installing anything: a reload installs the result only once the whole
// new configuration is accepted, so a broken file (or a rejected policy)
// never replaces a working certificate.
func buildTLS(c *fileConfig) (*tlsState, error) {
	cert, err := loadKeyPair(c.TLS.Cert, c.TLS.Key, c.TLS.Password)
	if err != nil {
		return nil, err
	}
	auth, err := api.ClientAuth(c.TLS.Auth, c.anySkipAuth())
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	// The CA pool is only handed to TLS when it verifies client
	// certificates (tls.auth on). In the default mode KES also advertises
	// it, which makes Go clients withhold self-signed API-key certificates
	// that match none of the advertised CAs; kmsd does not copy that.
	var pool *x509.CertPool
	verifying := auth == tls.RequireAndVerifyClientCert || auth == tls.VerifyClientCertIfGiven
	if c.TLS.CA != "" && verifying {
		if pool, err = loadCertPool(c.TLS.CA); err != nil {
			return nil, err
		}
	}
	return &tlsState{cert: cert, clientCAs: pool, clientAuth: auth}, nil
}

func (c *fileConfig) anySkipAuth() bool {
	for _, r := range c.API {
		if r.SkipAuth {
			return true
		}
	}
	return false
}

// config returns the listener's tls.Config. Every handshake asks for the
// current state, so reloads apply to new connections at once.
func (r *tlsReloader) config() *tls.Config {
	base := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		s := r.cur.Load()
		cfg := &tls.Config{
			MinVersion:   tls.VersionTLS12,
			NextProtos:   []string{"h2", "http/1.1"},
			Certificates: []tls.Certificate{*s.cert},
			ClientAuth:   s.clientAuth,
			ClientCAs:    s.clientCAs,
		}
		return cfg, nil
	}
	return base
}

// loadKeyPair loads a PEM certificate chain and private key (optionally
// a legacy-encrypted PEM key) and insists on at least one SAN, as KES does.
func loadKeyPair(certFile, keyFile, password string) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("tls: certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: private key: %w", err)
	}
	if password != "" {
		block, _ := pem.Decode(keyPEM)
		//lint:ignore SA1019 KES-compatible: tls.password decrypts legacy encrypted PEM keys.
		if block != nil && x509.IsEncryptedPEMBlock(block) { //nolint:staticcheck
			//lint:ignore SA1019 see above
			der, err := x509.DecryptPEMBlock(block, []byte(password)) //nolint:staticcheck
			if err != nil {
				return nil, fmt.Errorf("tls: decrypt private key %s: %w", keyFile, err)
			}
			keyPEM = pem.EncodeToMemory(&pem.Block{Type: block.Type, Bytes: der})
		}
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tls: %s / %s: %w", certFile, keyFile, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("tls: %s: %w", certFile, err)
	}
	if len(leaf.DNSNames) == 0 && len(leaf.IPAddresses) == 0 {
		return nil, fmt.Errorf("tls: %s: certificate does not contain any DNS or IP address as SAN", certFile)
	}
	cert.Leaf = leaf
	return &cert, nil
}

// loadCertPool reads a PEM file, or every file in a directory, into a pool.
func loadCertPool(path string) (*x509.CertPool, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("tls: ca: %w", err)
	}
	files := []string{path}
	if fi.IsDir() {
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, fmt.Errorf("tls: ca: %w", err)
		}
		files = files[:0]
		for _, e := range entries {
			if !e.IsDir() {
				files = append(files, filepath.Join(path, e.Name()))
			}
		}
	}
	pool := x509.NewCertPool()
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("tls: ca: %w", err)
		}
		if pool.AppendCertsFromPEM(b) {
			n++
		}
	}
	if n == 0 {
		return nil, errors.New("tls: ca: no PEM certificates found in " + path)
	}
	return pool, nil
}
