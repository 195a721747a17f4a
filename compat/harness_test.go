package compat

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/kms-go/kes"
	"gopkg.in/yaml.v3"
)

const (
	hsmModule = "/usr/lib/softhsm/libsofthsm2.so"
	hsmPIN    = "1234"
	pinEnv    = "KMSD_HSM_PIN"

	// API-key / identity vectors from spec/kes-api.md §4.3 (also in testdata/kes-vectors.json).
	adminAPIKey   = "kes:v1:AD9E7FSYWrMD+VjhI6q545cYT9YOyFxZb7UnjEepYDRc"
	adminIdentity = "3ecfcdf38fcbe141ae26a1030f81e96b753365a46760ae6b578698a97c59fd22"
	appAPIKey     = "kes:v1:AGaV6VXHasF0FnaB60WdCOeTZ8eTIDikL4zlN16c8NAs"
	appIdentity   = "ea9826089311fe44d7590408ede9150f7c637b6cab0a91ee6fe1aa5d9fb366f6"

	presetKey = "preset-key"

	// Bounds for every wait in the suite.
	startTimeout   = 60 * time.Second
	stopTimeout    = 20 * time.Second
	requestTimeout = 20 * time.Second
	pollInterval   = 100 * time.Millisecond
)

var (
	buildOnce sync.Once
	kmsdBin   string
	buildErr  error
	binDir    string

	pkiOnce sync.Once
	thePKI  *testPKI
	pkiErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// repoRoot is the main module's root, the parent of compat/.
func repoRoot() (string, error) {
	root, err := filepath.Abs("..")
	if err != nil {
		return "", err
	}
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return "", err
	}
	if !bytes.Contains(gomod, []byte("module github.com/kmsd/kmsd\n")) {
		return "", fmt.Errorf("%s/go.mod is not the kmsd main module", root)
	}
	return root, nil
}

// binary returns the kmsd binary, building ../cmd/kmsd once per test run.
func binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if p := os.Getenv("KMSD_BIN"); p != "" {
			kmsdBin, buildErr = filepath.Abs(p)
			return
		}
		root, err := repoRoot()
		if err != nil {
			buildErr = err
			return
		}
		binDir, err = os.MkdirTemp("", "kmsd-compat-bin-")
		if err != nil {
			buildErr = err
			return
		}
		bin := filepath.Join(binDir, "kmsd")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/kmsd")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/kmsd: %v\n%s", err, out)
			return
		}
		kmsdBin = bin
	})
	if buildErr != nil {
		t.Fatalf("kmsd binary unavailable: %v", buildErr)
	}
	return kmsdBin
}

// requireSoftHSM skips the test when SoftHSM is not installed, unless
// KMSD_REQUIRE_SOFTHSM=1 (CI), in which case it fails.
func requireSoftHSM(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(hsmModule); err == nil {
		return
	}
	if os.Getenv("KMSD_REQUIRE_SOFTHSM") == "1" {
		t.Fatalf("SoftHSM module %s missing and KMSD_REQUIRE_SOFTHSM=1", hsmModule)
	}
	t.Skipf("SoftHSM module %s not installed (set KMSD_REQUIRE_SOFTHSM=1 to fail instead)", hsmModule)
}

// ---------------------------------------------------------------------------
// PKI: one CA and one server certificate per test run.

type testPKI struct {
	caCert *x509.Certificate
	caKey  crypto.Signer
	caPEM  []byte
	caDER  []byte
	pool   *x509.CertPool

	serverCertPEM []byte
	serverKeyPEM  []byte

	// cluster is the node-channel CA (cluster.tls.ca), distinct from the
	// API CA above: the only CA a node trusts on its cluster port.
	cluster *certAuthority
}

// certAuthority is a CA for the node channel. Node certificates carry the
// IP SAN 127.0.0.1 (the advertise host) and both serverAuth and clientAuth.
type certAuthority struct {
	name string
	cert *x509.Certificate
	key  crypto.Signer
	pem  []byte
	pool *x509.CertPool
}

func newCA(cn string) (*certAuthority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	ca := &certAuthority{
		name: cn,
		cert: cert,
		key:  key,
		pem:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pool: x509.NewCertPool(),
	}
	ca.pool.AddCert(cert)
	return ca, nil
}

// nodeCert issues a node-channel certificate for node cn.
func (ca *certAuthority) nodeCert(t testing.TB, cn string) (certPEM, keyPEM []byte, cert tls.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatalf("issue node certificate: %v", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	cert, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, keyPEM, cert
}

func getPKI(t testing.TB) *testPKI {
	t.Helper()
	pkiOnce.Do(func() { thePKI, pkiErr = newPKI() })
	if pkiErr != nil {
		t.Fatalf("PKI: %v", pkiErr)
	}
	return thePKI
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err)
	}
	return n
}

func newPKI() (*testPKI, error) {
	ca, err := newCA("kmsd compat test CA")
	if err != nil {
		return nil, err
	}
	caCert, caKey := ca.cert, ca.key
	p := &testPKI{
		caCert: caCert,
		caKey:  caKey,
		caDER:  caCert.Raw,
		caPEM:  ca.pem,
		pool:   ca.pool,
	}
	now := time.Now()

	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	srvTmpl := &x509.Certificate{
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
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, srvKey.Public(), caKey)
	if err != nil {
		return nil, err
	}
	srvKeyDER, err := x509.MarshalPKCS8PrivateKey(srvKey)
	if err != nil {
		return nil, err
	}
	p.serverCertPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER})
	p.serverKeyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: srvKeyDER})
	if p.cluster, err = newCA("kmsd compat cluster CA"); err != nil {
		return nil, err
	}
	return p, nil
}

// issueLeaf signs a client (leaf, non-CA) certificate for pub with the test CA.
func (p *testPKI) issueLeaf(t testing.TB, pub crypto.PublicKey, cn string) []byte {
	t.Helper()
	return signClientLeaf(t, p.caCert, p.caKey, pub, cn)
}

// signClientLeaf signs a one-day clientAuth leaf certificate for pub
// with the CA certificate parent and its key.
func signClientLeaf(t testing.TB, parent *x509.Certificate, parentKey any, pub crypto.PublicKey, cn string) []byte {
	t.Helper()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
	if err != nil {
		t.Fatalf("issue client certificate: %v", err)
	}
	return der
}

// caSignedClient returns a fresh ECDSA client certificate signed by the test CA
// and its identity (hex SHA-256 of the leaf's SubjectPublicKeyInfo).
func (p *testPKI) caSignedClient(t testing.TB, cn string) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der := p.issueLeaf(t, key.Public(), cn)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, certIdentity(t, der)
}

func certIdentity(t testing.TB, der []byte) string {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

func apiKeyCert(t testing.TB, key kes.APIKey) tls.Certificate {
	t.Helper()
	cert, err := kes.GenerateCertificate(key)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func mustAPIKey(t testing.TB, s string) kes.APIKey {
	t.Helper()
	k, err := kes.ParseAPIKey(s)
	if err != nil {
		t.Fatalf("ParseAPIKey(%q): %v", s, err)
	}
	return k
}

func newAPIKey(t testing.TB) kes.APIKey {
	t.Helper()
	k, err := kes.GenerateAPIKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// ---------------------------------------------------------------------------
// Node configuration (a superset of the KES server config, see the brief).

type policyConf struct {
	Allow      []string `yaml:"allow,omitempty"`
	Deny       []string `yaml:"deny,omitempty"`
	Identities []string `yaml:"identities,omitempty"`
}

type apiConf struct {
	SkipAuth bool   `yaml:"skip_auth,omitempty"`
	Timeout  string `yaml:"timeout,omitempty"`
}

type nodeOptions struct {
	Name     string
	Admin    string // admin identity; default adminIdentity
	TLSAuth  string // "" or "on"
	Policies map[string]policyConf
	API      map[string]apiConf
	Keys     []string // pre-defined keys; default [presetKey]
	NoKeys   bool

	// ProbeCert is the client certificate used by the harness to wait for the
	// node; it must authenticate as the admin. Default: the admin API key cert.
	ProbeCert *tls.Certificate

	// Cluster settings. Addr and ClusterAddr pre-assign the API and node
	// channel addresses (default: free loopback ports); Peers is
	// cluster.peers (default: the node's own cluster address, i.e. a
	// single-node cluster); Join skips `kmsd init`, so the node has no
	// bootstrap marker and joins through Peers; ClusterCA signs the node
	// certificate and is the only CA it trusts (default: the test PKI's
	// cluster CA).
	Addr, ClusterAddr string
	Peers             []string
	Join              bool
	ClusterCA         *certAuthority
}

type yamlConfig struct {
	Address string `yaml:"address"`
	Admin   struct {
		Identity string `yaml:"identity"`
	} `yaml:"admin"`
	TLS struct {
		Key  string `yaml:"key"`
		Cert string `yaml:"cert"`
		Auth string `yaml:"auth"`
		CA   string `yaml:"ca,omitempty"`
	} `yaml:"tls"`
	Cache struct {
		Expiry struct {
			Any    string `yaml:"any"`
			Unused string `yaml:"unused"`
		} `yaml:"expiry"`
	} `yaml:"cache"`
	Log struct {
		Error string `yaml:"error"`
		Audit string `yaml:"audit"`
	} `yaml:"log"`
	API    map[string]apiConf    `yaml:"api,omitempty"`
	Policy map[string]policyConf `yaml:"policy,omitempty"`
	Keys   []struct {
		Name string `yaml:"name"`
	} `yaml:"keys,omitempty"`
	HSM struct {
		Module  string `yaml:"module"`
		Token   string `yaml:"token"`
		Key     string `yaml:"key"`
		PinEnv  string `yaml:"pin_env"`
		PinFile string `yaml:"pin_file,omitempty"`
	} `yaml:"hsm"`
	DataDir string `yaml:"data_dir"`
	Cluster struct {
		NodeID    string   `yaml:"node_id"`
		Address   string   `yaml:"address"`
		Advertise string   `yaml:"advertise,omitempty"`
		Peers     []string `yaml:"peers,omitempty"`
		TLS       struct {
			Cert string `yaml:"cert"`
			Key  string `yaml:"key"`
			CA   string `yaml:"ca"`
		} `yaml:"tls"`
	} `yaml:"cluster"`
}

// ---------------------------------------------------------------------------
// Node: one kmsd process with its own SoftHSM token and data dir.

type node struct {
	t    testing.TB
	opts nodeOptions
	bin  string

	dir       string
	dataDir   string
	hsmDir    string
	hsmConf   string
	cfgPath   string
	logPath   string
	token     string
	keyLabel  string
	addr      string
	clusAddr  string
	probeCert tls.Certificate
	clusterCA *certAuthority
	nodeTLS   tls.Certificate // node-channel certificate (cluster.tls)

	httpOnce sync.Once
	httpc    *http.Client // admin client for metrics and probes

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	logFile *os.File
	starts  int
}

func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// newNode prepares (but does not start) a node: SoftHSM token, certificates,
// config and `kmsd init`.
func newNode(t testing.TB, opts nodeOptions) *node {
	t.Helper()
	requireSoftHSM(t)
	bin := binary(t)
	p := getPKI(t)

	if opts.Name == "" {
		opts.Name = "node1"
	}
	if opts.Admin == "" {
		opts.Admin = adminIdentity
	}
	if opts.Keys == nil && !opts.NoKeys {
		opts.Keys = []string{presetKey}
	}
	dir := t.TempDir()
	n := &node{
		t:        t,
		opts:     opts,
		bin:      bin,
		dir:      dir,
		dataDir:  filepath.Join(dir, "data"),
		hsmDir:   filepath.Join(dir, "hsm"),
		cfgPath:  filepath.Join(dir, "kmsd.yaml"),
		logPath:  filepath.Join(dir, "kmsd.log"),
		token:    "kmsd-" + opts.Name,
		keyLabel: "kmsd-wrap",
		addr:     opts.Addr,
		clusAddr: opts.ClusterAddr,
	}
	if n.addr == "" {
		n.addr = freePort(t)
	}
	if n.clusAddr == "" {
		n.clusAddr = freePort(t)
	}
	n.clusterCA = opts.ClusterCA
	if n.clusterCA == nil {
		n.clusterCA = p.cluster
	}
	n.hsmConf = filepath.Join(n.hsmDir, "softhsm2.conf")
	if opts.ProbeCert != nil {
		n.probeCert = *opts.ProbeCert
	} else {
		n.probeCert = apiKeyCert(t, mustAPIKey(t, adminAPIKey))
	}
	if err := os.MkdirAll(n.hsmDir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.cleanup)

	// SoftHSM token via the project's script.
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(root, "scripts", "softhsm-init.sh")
	var out []byte
	if _, err := os.Stat(script); err == nil {
		out, err = n.run(context.Background(), n.env(hsmPIN), "bash", script, n.hsmDir, n.token, n.keyLabel)
		if err != nil {
			t.Fatalf("%s: %v\n%s", script, err, out)
		}
	} else if os.Getenv("KMSD_REQUIRE_SOFTHSM") == "1" {
		t.Fatalf("SoftHSM init script: %v", err)
	} else {
		t.Logf("NOTE %s missing; creating the token with softhsm2-util + pkcs11-tool instead", script)
		out = n.builtinSoftHSMInit(t)
	}
	if _, err := os.Stat(n.hsmConf); err != nil {
		t.Fatalf("%s did not create %s: %v\n%s", script, n.hsmConf, err, out)
	}

	// Certificates and config.
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	var cfg yamlConfig
	cfg.Address = n.addr
	cfg.Admin.Identity = opts.Admin
	cfg.TLS.Key = write("server.key", p.serverKeyPEM)
	cfg.TLS.Cert = write("server.crt", p.serverCertPEM)
	cfg.TLS.Auth = opts.TLSAuth
	if opts.TLSAuth == "on" {
		// Only with auth on: a server that advertises ClientCAs in its
		// CertificateRequest makes Go clients (kms-go included) withhold
		// self-signed API-key certificates that do not chain to those CAs.
		cfg.TLS.CA = write("ca.pem", p.caPEM)
	}
	cfg.Cache.Expiry.Any = "5m"
	cfg.Cache.Expiry.Unused = "30s"
	cfg.Log.Error = "INFO"
	cfg.Log.Audit = "off"
	cfg.API = opts.API
	cfg.Policy = opts.Policies
	for _, k := range opts.Keys {
		cfg.Keys = append(cfg.Keys, struct {
			Name string `yaml:"name"`
		}{k})
	}
	cfg.HSM.Module = hsmModule
	cfg.HSM.Token = n.token
	cfg.HSM.Key = n.keyLabel
	cfg.HSM.PinEnv = pinEnv
	cfg.DataDir = n.dataDir
	cfg.Cluster.NodeID = opts.Name
	cfg.Cluster.Address = n.clusAddr
	cfg.Cluster.Peers = opts.Peers
	if len(cfg.Cluster.Peers) == 0 {
		cfg.Cluster.Peers = []string{n.clusAddr}
	}
	nodeCertPEM, nodeKeyPEM, nodeTLS := n.clusterCA.nodeCert(t, opts.Name)
	n.nodeTLS = nodeTLS
	cfg.Cluster.TLS.Cert = write("node.crt", nodeCertPEM)
	cfg.Cluster.TLS.Key = write("node.key", nodeKeyPEM)
	cfg.Cluster.TLS.CA = write("cluster-ca.crt", n.clusterCA.pem)
	data, err := yaml.Marshal(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	write("kmsd.yaml", data)
	if opts.Join {
		return n // no init: no seal stanza and no bootstrap marker; the node joins
	}

	// kmsd init (writes the seal stanza and the bootstrap marker)
	out, err = n.kmsd(n.env(hsmPIN), "init", "--config", n.cfgPath)
	if err != nil {
		t.Fatalf("kmsd init: %v\n%s", err, out)
	}
	if len(bytes.TrimSpace(out)) == 0 {
		t.Errorf("kmsd init printed nothing; the contract says it prints the REK id")
	}
	return n
}

// builtinSoftHSMInit does what scripts/softhsm-init.sh is specified to do:
// a token in n.hsmDir with a sensitive, non-extractable AES-256 key.
func (n *node) builtinSoftHSMInit(t testing.TB) []byte {
	t.Helper()
	tokens := filepath.Join(n.hsmDir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := "directories.tokendir = " + tokens + "\nobjectstore.backend = file\nlog.level = ERROR\n"
	if err := os.WriteFile(n.hsmConf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	var all []byte
	for _, args := range [][]string{
		{"softhsm2-util", "--init-token", "--free", "--label", n.token, "--pin", hsmPIN, "--so-pin", "12345678"},
		{"pkcs11-tool", "--module", hsmModule, "--token-label", n.token, "--login", "--pin", hsmPIN,
			"--keygen", "--key-type", "AES:32", "--label", n.keyLabel, "--sensitive", "--usage-decrypt"},
	} {
		out, err := n.run(context.Background(), n.env(hsmPIN), args[0], args[1:]...)
		all = append(all, out...)
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return all
}

// env returns the process environment for kmsd with the given HSM PIN.
func (n *node) env(pin string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "SOFTHSM2_CONF=") || strings.HasPrefix(kv, pinEnv+"=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "SOFTHSM2_CONF="+n.hsmConf, pinEnv+"="+pin)
}

func (n *node) run(ctx context.Context, env []string, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	cmd.Dir = n.dir
	cmd.WaitDelay = 5 * time.Second
	return cmd.CombinedOutput()
}

// kmsd runs a short-lived kmsd sub-command (init, identity ...).
func (n *node) kmsd(env []string, args ...string) ([]byte, error) {
	return n.run(context.Background(), env, n.bin, args...)
}

func (n *node) url(path string) string { return "https://" + n.addr + path }

// start starts `kmsd server` with the given environment (nil: correct PIN) and
// waits until GET /version answers 200.
func (n *node) start(t testing.TB, env []string) {
	t.Helper()
	if env == nil {
		env = n.env(hsmPIN)
	}
	n.mu.Lock()
	if n.cmd != nil {
		n.mu.Unlock()
		t.Fatalf("node %s already running", n.opts.Name)
	}
	f, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		n.mu.Unlock()
		t.Fatal(err)
	}
	n.starts++
	fmt.Fprintf(f, "\n===== compat harness: start #%d at %s =====\n", n.starts, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(n.bin, "server", "--config", n.cfgPath)
	cmd.Env = env
	cmd.Dir = n.dir
	cmd.Stdout = f
	cmd.Stderr = f
	if err := cmd.Start(); err != nil {
		f.Close()
		n.mu.Unlock()
		t.Fatalf("start kmsd server: %v", err)
	}
	done := make(chan struct{})
	n.cmd, n.done, n.logFile, n.waitErr = cmd, done, f, nil
	n.mu.Unlock()
	go func() {
		err := cmd.Wait()
		n.mu.Lock()
		n.waitErr = err
		n.mu.Unlock()
		close(done)
	}()
	n.waitVersion(t)
}

// waitVersion polls GET /version until it answers 200.
func (n *node) waitVersion(t testing.TB) {
	t.Helper()
	hc := newHTTPClient([]tls.Certificate{n.probeCert}, true, false)
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(startTimeout)
	var last string
	for i := 0; time.Now().Before(deadline) && i < int(startTimeout/pollInterval)+1; i++ {
		select {
		case <-n.done:
			n.mu.Lock()
			err := n.waitErr
			n.mu.Unlock()
			t.Fatalf("kmsd server exited during start-up: %v\n%s", err, n.logTail())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, n.url("/version"), nil)
		resp, err := hc.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			cancel()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = resp.Status
		} else {
			cancel()
			last = err.Error()
		}
		time.Sleep(pollInterval)
	}
	t.Fatalf("kmsd server did not answer GET /version with 200 within %v (last: %s)", startTimeout, last)
}

// waitServing waits until the node serves keys: GET /v1/ready answers 200
// and the pre-defined key describes (which proves the key store and, for a
// fresh cluster, the Raft leader work).
func (n *node) waitServing(t testing.TB) {
	t.Helper()
	hc := newHTTPClient([]tls.Certificate{n.probeCert}, true, false)
	defer hc.CloseIdleConnections()
	paths := []string{"/v1/ready"}
	if len(n.opts.Keys) > 0 {
		paths = append(paths, "/v1/key/describe/"+n.opts.Keys[0])
	}
	deadline := time.Now().Add(startTimeout)
	for _, p := range paths {
		var last string
		for i := 0; ; i++ {
			if time.Now().After(deadline) || i > int(startTimeout/pollInterval) {
				t.Fatalf("node not serving: GET %s did not answer 200 within %v (last: %s)", p, startTimeout, last)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, n.url(p), nil)
			resp, err := hc.Do(req)
			if err == nil {
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
				resp.Body.Close()
				cancel()
				if resp.StatusCode == http.StatusOK {
					break
				}
				last = fmt.Sprintf("%d %q", resp.StatusCode, b)
			} else {
				cancel()
				last = err.Error()
			}
			time.Sleep(pollInterval)
		}
	}
}

// stop sends sig and waits for the process to exit. With SIGTERM it expects a
// clean exit (status 0).
func (n *node) stop(t testing.TB, sig syscall.Signal) {
	t.Helper()
	n.mu.Lock()
	cmd, done, f := n.cmd, n.done, n.logFile
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("signal %v: %v", sig, err)
	}
	select {
	case <-done:
	case <-time.After(stopTimeout):
		t.Errorf("kmsd did not exit within %v after %v; killing it", stopTimeout, sig)
		cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(stopTimeout):
			t.Errorf("kmsd pid %d did not exit after SIGKILL", cmd.Process.Pid)
		}
	}
	n.mu.Lock()
	err := n.waitErr
	n.cmd, n.done, n.logFile = nil, nil, nil
	n.mu.Unlock()
	f.Close()
	if sig == syscall.SIGTERM && err != nil {
		t.Errorf("kmsd did not exit cleanly after SIGTERM: %v", err)
	}
}

func (n *node) running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil
}

func (n *node) cleanup() {
	if n.running() {
		n.mu.Lock()
		cmd, done := n.cmd, n.done
		n.mu.Unlock()
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(stopTimeout):
			cmd.Process.Kill()
			select {
			case <-done:
			case <-time.After(stopTimeout):
			}
		}
		n.mu.Lock()
		if n.logFile != nil {
			n.logFile.Close()
		}
		n.cmd, n.done, n.logFile = nil, nil, nil
		n.mu.Unlock()
	}
	if n.t.Failed() {
		n.t.Logf("----- kmsd log of %s (%s) -----\n%s", n.opts.Name, n.logPath, n.logTail())
	}
}

func (n *node) logTail() string {
	const max = 48 << 10
	b, err := os.ReadFile(n.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(b) > max {
		b = append([]byte("...[truncated]...\n"), b[len(b)-max:]...)
	}
	return string(b)
}

// client returns an official KES client authenticating with the API key.
func (n *node) client(key kes.APIKey) *kes.Client {
	return n.clientWithCert(apiKeyCert(n.t, key))
}

func (n *node) clientWithCert(cert tls.Certificate) *kes.Client {
	c := kes.NewClientWithConfig("https://"+n.addr, &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		RootCAs:      getPKI(n.t).pool,
	})
	n.t.Cleanup(c.HTTPClient.CloseIdleConnections)
	return c
}

// ---------------------------------------------------------------------------
// Raw HTTP.

// newHTTPClient returns an HTTP client trusting the test CA. h2 selects
// HTTP/2 (ALPN h2,http/1.1) or HTTP/1.1 only; follow selects whether
// redirects are followed.
func newHTTPClient(certs []tls.Certificate, h2, follow bool) *http.Client {
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: certs,
		RootCAs:      thePKI.pool,
	}
	tr := &http.Transport{
		TLSClientConfig:     cfg,
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
	if h2 {
		tr.ForceAttemptHTTP2 = true
	} else {
		cfg.NextProtos = []string{"http/1.1"}
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	hc := &http.Client{Transport: tr, Timeout: requestTimeout}
	if !follow {
		hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}
	return hc
}

type rawClient struct {
	t    testing.TB
	n    *node
	hc   *http.Client
	name string
}

type rawResp struct {
	Status int
	Header http.Header
	Body   []byte
	Proto  string
	CL     int64 // resp.ContentLength
	TLS    *tls.ConnectionState
	Req    string
}

func (r *rawResp) String() string {
	return fmt.Sprintf("%s -> %d %s body=%q", r.Req, r.Status, r.Header.Get("Content-Type"), trunc(r.Body))
}

func trunc(b []byte) []byte {
	if len(b) > 300 {
		return append(append([]byte{}, b[:300]...), "..."...)
	}
	return b
}

// raw returns a raw HTTP client presenting the given certificates.
func (n *node) raw(name string, certs ...tls.Certificate) *rawClient {
	getPKI(n.t)
	hc := newHTTPClient(certs, true, false)
	n.t.Cleanup(hc.CloseIdleConnections)
	return &rawClient{t: n.t, n: n, hc: hc, name: name}
}

func (n *node) rawH1(name string, certs ...tls.Certificate) *rawClient {
	getPKI(n.t)
	hc := newHTTPClient(certs, false, false)
	n.t.Cleanup(hc.CloseIdleConnections)
	return &rawClient{t: n.t, n: n, hc: hc, name: name}
}

// do sends one request. body==nil sends no body at all. It fails the test on
// transport errors; use try for requests that may legitimately fail.
func (c *rawClient) do(t testing.TB, method, path string, body []byte, hdr ...string) *rawResp {
	t.Helper()
	r, err := c.try(method, path, body, hdr...)
	if err != nil {
		t.Fatalf("%s %s %s: %v", c.name, method, path, err)
	}
	return r
}

func (c *rawClient) try(method, path string, body []byte, hdr ...string) (*rawResp, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	return c.send(method, path, rd, int64(len(body)), hdr...)
}

// chunked sends body without a Content-Length (chunked on HTTP/1.1).
func (c *rawClient) chunked(t testing.TB, method, path string, body []byte, hdr ...string) *rawResp {
	t.Helper()
	r, err := c.send(method, path, io.NopCloser(bytes.NewReader(body)), -1, hdr...)
	if err != nil {
		t.Fatalf("%s %s %s (chunked): %v", c.name, method, path, err)
	}
	return r
}

func (c *rawClient) send(method, path string, body io.Reader, cl int64, hdr ...string) (*rawResp, error) {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.n.url(path), body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.ContentLength = cl
		if cl < 0 {
			req.Body = io.NopCloser(body)
		}
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	return &rawResp{
		Status: resp.StatusCode,
		Header: resp.Header,
		Body:   b,
		Proto:  resp.Proto,
		CL:     resp.ContentLength,
		TLS:    resp.TLS,
		Req:    method + " " + path,
	}, nil
}

// ---------------------------------------------------------------------------
// Assertions.

// errMessage parses a KES error body.
func errMessage(body []byte) (string, error) {
	var v struct {
		Message *string `json:"message"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return "", err
	}
	if v.Message == nil {
		return "", errors.New(`no "message" field`)
	}
	return *v.Message, nil
}

// wantError asserts a KES error response: status, application/json and
// {"message": msg}. An empty msg only checks status and shape.
func wantError(t testing.TB, r *rawResp, status int, msg string) {
	t.Helper()
	if r.Status != status {
		t.Errorf("%s: status %d, want %d (body %q)", r.Req, r.Status, status, trunc(r.Body))
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: error Content-Type %q, want application/json (body %q)", r.Req, ct, trunc(r.Body))
	}
	got, err := errMessage(r.Body)
	if err != nil {
		t.Errorf("%s: error body %q is not {\"message\":...}: %v", r.Req, trunc(r.Body), err)
		return
	}
	if msg != "" && got != msg {
		t.Errorf("%s: message %q, want %q (raw body %q)", r.Req, got, msg, trunc(r.Body))
	}
}

func wantStatus(t testing.TB, r *rawResp, status int) {
	t.Helper()
	if r.Status != status {
		t.Errorf("%s: status %d, want %d (Content-Type %q, body %q)", r.Req, r.Status, status, r.Header.Get("Content-Type"), trunc(r.Body))
	}
}

// wantEmpty200 asserts KES's mutation response: 200, empty body, Content-Length 0.
func wantEmpty200(t testing.TB, r *rawResp) {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Errorf("%s: status %d, want 200 (body %q)", r.Req, r.Status, trunc(r.Body))
		return
	}
	if len(r.Body) != 0 {
		t.Errorf("%s: body %q, want empty", r.Req, trunc(r.Body))
	}
	if cl := r.Header.Get("Content-Length"); cl != "" && cl != "0" {
		t.Errorf("%s: Content-Length %q, want 0", r.Req, cl)
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		t.Logf("NOTE %s: Content-Type %q on an empty mutation response (KES sends none; clients do not care)", r.Req, ct)
	}
}

func wantKesErr(t testing.TB, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: error %v (%s), want errors.Is %v", what, err, describeErr(err), want)
	}
}

// describeErr shows the status and message of a kes.Error.
func describeErr(err error) string {
	var ke kes.Error
	if errors.As(err, &ke) {
		return fmt.Sprintf("status %d message %q", ke.Status(), ke.Error())
	}
	if err == nil {
		return "nil"
	}
	return fmt.Sprintf("%T", err)
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	t.Cleanup(cancel)
	return ctx
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
