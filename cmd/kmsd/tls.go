package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/kmsd/kmsd/api"
)

// tlsState is everything about the API listener's TLS that a reload
// (SIGHUP or a certificate file change) may change. It is swapped
// atomically; established connections keep the config they were
// handshaken with.
type tlsState struct {
	cert       *tls.Certificate
	clientCAs  *x509.CertPool
	clientAuth tls.ClientAuthType

	// chain is cert parsed, leaf first; cas are the client CAs in
	// clientCAs (none unless tls.auth verifies client certificates).
	chain []*x509.Certificate
	cas   []*x509.Certificate
	// files are the paths the state was built from and sum their
	// content hash, taken before they were read (see certwatch.go).
	files []string
	sum   [32]byte
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
	auth, err := api.ClientAuth(c.TLS.Auth, c.anySkipAuth())
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	// The CA pool is only handed to TLS when it verifies client
	// certificates (tls.auth on). In the default mode KES also advertises
	// it, which makes Go clients withhold self-signed API-key certificates
	// that match none of the advertised CAs; kmsd does not copy that.
	verifying := auth == tls.RequireAndVerifyClientCert || auth == tls.VerifyClientCertIfGiven
	st := &tlsState{clientAuth: auth, files: apiTLSFiles(c)}
	st.sum = fingerprint(st.files...)
	if st.cert, err = loadKeyPair(c.TLS.Cert, c.TLS.Key, c.TLS.Password); err != nil {
		return nil, err
	}
	if st.chain, err = parseChain(st.cert, c.TLS.Cert); err != nil {
		return nil, err
	}
	if c.TLS.CA != "" && verifying {
		if st.clientCAs, st.cas, err = loadCAs(c.TLS.CA); err != nil {
			return nil, err
		}
	}
	return st, nil
}

// apiTLSFiles lists the files buildTLS reads for c: certificate, key and,
// when it verifies client certificates, the CA file or directory.
func apiTLSFiles(c *fileConfig) []string {
	files := []string{c.TLS.Cert, c.TLS.Key}
	auth, err := api.ClientAuth(c.TLS.Auth, c.anySkipAuth())
	if err == nil && c.TLS.CA != "" && (auth == tls.RequireAndVerifyClientCert || auth == tls.VerifyClientCertIfGiven) {
		files = append(files, c.TLS.CA)
	}
	return files
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
	if err := truncatedPEM(certPEM); err != nil {
		return nil, fmt.Errorf("tls: %s: %w", certFile, err)
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

// parseChain parses every certificate of cert (leaf first).
func parseChain(cert *tls.Certificate, file string) ([]*x509.Certificate, error) {
	chain := []*x509.Certificate{cert.Leaf}
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("tls: %s: chain: %w", file, err)
		}
		chain = append(chain, c)
	}
	return chain, nil
}

// truncatedPEM reports a PEM block that starts but does not decode (a
// file caught half-written): pem.Decode would silently drop it.
func truncatedPEM(b []byte) error {
	for {
		block, rest := pem.Decode(b)
		if block == nil {
			if bytes.Contains(b, []byte("-----BEGIN")) {
				return errors.New("incomplete PEM block (file truncated or half-written?)")
			}
			return nil
		}
		b = rest
	}
}

// loadCAs reads a PEM file, or every file in a directory, into a pool
// and returns the parsed certificates too. In a directory, hidden entries
// (a Kubernetes volume's ..data and timestamped directories, editors'
// and rotation tools' temp files) and subdirectories are skipped, and
// files without any PEM certificate are ignored. A certificate block that does not parse, or a
// truncated one, fails the whole load.
func loadCAs(path string) (*x509.CertPool, []*x509.Certificate, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil, fmt.Errorf("tls: ca: %w", err)
	}
	files := []string{path}
	if fi.IsDir() {
		if files, err = caDirFiles(path); err != nil {
			return nil, nil, err
		}
	}
	pool := x509.NewCertPool()
	var cas []*x509.Certificate
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, nil, fmt.Errorf("tls: ca: %w", err)
		}
		certs, err := parsePEMCerts(b)
		if err != nil {
			return nil, nil, fmt.Errorf("tls: ca: %s: %w", f, err)
		}
		for _, c := range certs {
			pool.AddCert(c)
		}
		cas = append(cas, certs...)
	}
	if len(cas) == 0 {
		return nil, nil, errors.New("tls: ca: no PEM certificates found in " + path)
	}
	return pool, cas, nil
}

// caDirFiles lists the regular files (symlinks followed) of a CA
// directory, sorted, skipping hidden (".") entries.
func caDirFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("tls: ca: %w", err)
	}
	var files []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		fi, err := os.Stat(p)
		if err != nil || !fi.Mode().IsRegular() {
			continue // a dangling link or a directory
		}
		files = append(files, p)
	}
	sort.Strings(files)
	return files, nil
}

// parsePEMCerts parses every CERTIFICATE block of b (other blocks and
// text around them are ignored).
func parsePEMCerts(b []byte) ([]*x509.Certificate, error) {
	if err := truncatedPEM(b); err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for {
		block, rest := pem.Decode(b)
		if block == nil {
			return out, nil
		}
		b = rest
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

// fingerprint hashes the content of paths (a directory: its CA files, by
// name), read errors included, so a watcher can tell whether anything a
// TLS state was built from has changed.
func fingerprint(paths ...string) [32]byte {
	h := sha256.New()
	add := func(p string) {
		b, err := os.ReadFile(p)
		fmt.Fprintf(h, "%s\x00%d\x00", p, len(b))
		h.Write(b)
		if err != nil {
			fmt.Fprintf(h, "error\x00%v\x00", err)
		}
	}
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			files, err := caDirFiles(p)
			fmt.Fprintf(h, "dir\x00%s\x00%d\x00%v\x00", p, len(files), err)
			for _, f := range files {
				add(f)
			}
			continue
		}
		add(p)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}
