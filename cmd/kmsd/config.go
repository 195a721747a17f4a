package main

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// fileConfig is the YAML file: the KES server config (address, admin,
// tls, cache, log, api, policy, keys) plus kmsd's own sections (hsm,
// data_dir, cluster). Unknown top-level keys are rejected so a typo in a
// security setting does not silently fall back to a default.
type fileConfig struct {
	Version string `yaml:"version"`
	Address string `yaml:"address"`
	Admin   struct {
		Identity string `yaml:"identity"`
	} `yaml:"admin"`
	TLS struct {
		Key      string    `yaml:"key"`
		Cert     string    `yaml:"cert"`
		Password string    `yaml:"password"`
		Auth     string    `yaml:"auth"`
		CA       string    `yaml:"ca"`
		Proxy    yaml.Node `yaml:"proxy"` // parsed and ignored, as in KES
	} `yaml:"tls"`
	Cache struct {
		Expiry struct {
			Any     time.Duration `yaml:"any"`
			Unused  time.Duration `yaml:"unused"`
			Offline time.Duration `yaml:"offline"`
		} `yaml:"expiry"`
	} `yaml:"cache"`
	Log struct {
		Error string `yaml:"error"`
		Audit string `yaml:"audit"`
	} `yaml:"log"`
	API    map[string]routeConfig `yaml:"api"`
	Policy map[string]policy      `yaml:"policy"`
	Keys   []struct {
		Name string `yaml:"name"`
	} `yaml:"keys"`
	Keystore yaml.Node `yaml:"keystore"`

	HSM struct {
		Module      string `yaml:"module"`
		Token       string `yaml:"token"`
		Key         string `yaml:"key"`
		PINEnv      string `yaml:"pin_env"`
		PINFile     string `yaml:"pin_file"`
		MaxSessions int    `yaml:"max_sessions"`
	} `yaml:"hsm"`
	DataDir string        `yaml:"data_dir"`
	Cluster clusterConfig `yaml:"cluster"`

	// kmsd's operations sections (issue 4).
	Audit    auditConfig    `yaml:"audit"`
	ErrorLog errorLogConfig `yaml:"error_log"`
	Snapshot snapshotConfig `yaml:"snapshot"`
	Health   healthConfig   `yaml:"health"`
}

// auditConfig is the `audit:` section: the NDJSON audit file. See
// DESIGN.md, "Audit failure policy".
type auditConfig struct {
	// File receives one NDJSON event per request. "": no file (the
	// /v1/log/audit stream works regardless).
	File string `yaml:"file"`
	// OnFailure is what happens to a request whose audit event cannot be
	// written: "continue" (default: the request is answered, the event
	// counted as lost, the node reports unready) or "reject" (the request
	// is answered 503 and nothing is changed by it).
	OnFailure string `yaml:"on_failure"`
	// MaxWait bounds how long a request waits for the audit sink to accept
	// its event (reject mode). Default 100ms.
	MaxWait time.Duration `yaml:"max_wait"`
}

// errorLogConfig is the `error_log:` section: an NDJSON copy of the
// server log records at log.error level and above.
type errorLogConfig struct {
	File string `yaml:"file"`
}

// snapshotConfig is the `snapshot:` section: scheduled local snapshots.
type snapshotConfig struct {
	// Dir receives the snapshot files. Default data_dir/snapshots.
	Dir string `yaml:"dir"`
	// Interval between snapshots; default 1h; a negative value disables
	// scheduled snapshots.
	Interval time.Duration `yaml:"interval"`
	// Retention is how many snapshot files are kept (oldest removed
	// first); default 24.
	Retention int `yaml:"retention"`
}

// healthConfig is the `health:` section.
type healthConfig struct {
	// CertReadyMargin: the node reports unready once a certificate it
	// holds expires within this margin (default 1h), so load balancers
	// move away before clients see a handshake failure.
	CertReadyMargin time.Duration `yaml:"cert_ready_margin"`
}

// clusterConfig is the `cluster:` section: this node's identity and
// node channel (raft + internal RPC over mTLS with the cluster CA). There
// is no bootstrap switch: `kmsd init` leaves a marker file instead (see
// DESIGN.md, "Cluster formation").
type clusterConfig struct {
	NodeID    string   `yaml:"node_id"`
	Address   string   `yaml:"address"`   // bind address of the node channel
	Advertise string   `yaml:"advertise"` // address peers dial; default Address
	Peers     []string `yaml:"peers"`     // join targets; the own advertise address is skipped
	TLS       struct {
		Cert string `yaml:"cert"`
		Key  string `yaml:"key"`
		CA   string `yaml:"ca"` // the cluster CA: the only CA trusted on the node channel
	} `yaml:"tls"`
}

type routeConfig struct {
	Timeout  time.Duration `yaml:"timeout"`
	SkipAuth bool          `yaml:"skip_auth"`
}

type policy struct {
	Allow      []string `yaml:"allow"`
	Deny       []string `yaml:"deny"`
	Identities []string `yaml:"identities"`
}

// loadConfig reads, interpolates, decodes, defaults and validates path.
// Relative file paths in the config are resolved against the config
// file's directory, so a config works from any working directory.
func loadConfig(path string) (*fileConfig, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(raw, &root); err != nil {
		return nil, fmt.Errorf("config: %s: %w", path, err)
	}
	if err := expandEnv(&root); err != nil {
		return nil, fmt.Errorf("config: %s: %w", path, err)
	}
	var c fileConfig
	if len(root.Content) > 0 {
		var buf bytes.Buffer
		enc := yaml.NewEncoder(&buf)
		if err := enc.Encode(&root); err != nil {
			return nil, fmt.Errorf("config: %s: %w", path, err)
		}
		dec := yaml.NewDecoder(&buf)
		dec.KnownFields(true)
		if err := dec.Decode(&c); err != nil {
			return nil, fmt.Errorf("config: %s: %w", path, err)
		}
	}
	c.resolvePaths(filepath.Dir(path))
	c.setDefaults()
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("config: %s: %w", path, err)
	}
	return &c, nil
}

var envRef = regexp.MustCompile(`^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$`)

// expandEnv replaces every scalar of the form ${NAME} with the value of
// the environment variable NAME; an unset variable is an error (KES).
func expandEnv(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		if m := envRef.FindStringSubmatch(strings.TrimSpace(n.Value)); m != nil {
			v, ok := os.LookupEnv(m[1])
			if !ok {
				return fmt.Errorf("environment variable %q referenced at line %d is not set", m[1], n.Line)
			}
			n.Value = v
			n.Tag = "" // let the decoder re-resolve the type
			n.Style = 0
		}
		return nil
	}
	for _, c := range n.Content {
		if err := expandEnv(c); err != nil {
			return err
		}
	}
	return nil
}

func (c *fileConfig) resolvePaths(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.TLS.Key)
	abs(&c.TLS.Cert)
	abs(&c.TLS.CA)
	abs(&c.HSM.PINFile)
	abs(&c.DataDir)
	abs(&c.Cluster.TLS.Cert)
	abs(&c.Cluster.TLS.Key)
	abs(&c.Cluster.TLS.CA)
	abs(&c.Audit.File)
	abs(&c.ErrorLog.File)
	abs(&c.Snapshot.Dir)
}

func (c *fileConfig) setDefaults() {
	if c.Address == "" {
		c.Address = "0.0.0.0:7373"
	}
	// KES bug Q6 fixed: the intended defaults are any=5m, unused=30s.
	if c.Cache.Expiry.Any == 0 {
		c.Cache.Expiry.Any = 5 * time.Minute
	}
	if c.Cache.Expiry.Unused == 0 {
		c.Cache.Expiry.Unused = 30 * time.Second
	}
	if c.Log.Error == "" {
		c.Log.Error = "INFO"
	}
	if c.Log.Audit == "" {
		c.Log.Audit = "off"
	}
	if c.HSM.Module == "" {
		c.HSM.Module = "/usr/lib/softhsm/libsofthsm2.so"
	}
	if c.HSM.PINEnv == "" && c.HSM.PINFile == "" {
		c.HSM.PINEnv = "KMSD_HSM_PIN"
	}
	if c.Cluster.Address == "" {
		c.Cluster.Address = "127.0.0.1:7374"
	}
	if c.Cluster.NodeID == "" {
		if h, err := os.Hostname(); err == nil {
			c.Cluster.NodeID = h
		}
	}
	if c.Cluster.Advertise == "" {
		c.Cluster.Advertise = c.Cluster.Address
	}
	if c.Audit.OnFailure == "" {
		c.Audit.OnFailure = "continue"
	}
	if c.Audit.MaxWait == 0 {
		c.Audit.MaxWait = 100 * time.Millisecond
	}
	if c.Snapshot.Dir == "" && c.DataDir != "" {
		c.Snapshot.Dir = filepath.Join(c.DataDir, "snapshots")
	}
	if c.Snapshot.Interval == 0 {
		c.Snapshot.Interval = time.Hour
	}
	if c.Snapshot.Retention == 0 {
		c.Snapshot.Retention = 24
	}
	if c.Health.CertReadyMargin == 0 {
		c.Health.CertReadyMargin = time.Hour
	}
}

func (c *fileConfig) validate() error {
	var errs []error
	if c.Version != "" && c.Version != "v1" {
		errs = append(errs, fmt.Errorf("version %q is not supported (only v1)", c.Version))
	}
	if c.Admin.Identity == "" {
		errs = append(errs, errors.New("admin.identity is required (use \"disabled\" to disable the admin)"))
	}
	if c.TLS.Key == "" || c.TLS.Cert == "" {
		errs = append(errs, errors.New("tls.key and tls.cert are required"))
	}
	switch strings.ToLower(c.TLS.Auth) {
	case "", "on", "off":
	default:
		errs = append(errs, fmt.Errorf("tls.auth %q: must be on or off", c.TLS.Auth))
	}
	if c.Cache.Expiry.Any < 0 || c.Cache.Expiry.Unused < 0 || c.Cache.Expiry.Offline < 0 {
		errs = append(errs, errors.New("cache.expiry: durations must not be negative"))
	}
	for p, r := range c.API {
		if r.Timeout < 0 {
			errs = append(errs, fmt.Errorf("api.%s.timeout must not be negative", p))
		}
	}
	if _, err := parseLevel(c.Log.Error); err != nil {
		errs = append(errs, fmt.Errorf("log.error: %w", err))
	}
	if _, err := parseLevel(c.Log.Audit); err != nil {
		errs = append(errs, fmt.Errorf("log.audit: %w", err))
	}
	seen := map[string]bool{}
	for _, k := range c.Keys {
		if seen[k.Name] {
			errs = append(errs, fmt.Errorf("keys: %q is listed twice", k.Name))
		}
		seen[k.Name] = true
	}
	if !c.Keystore.IsZero() {
		errs = append(errs, errors.New("keystore: kmsd is the key store; remove the keystore section (state lives in data_dir, replicated by raft)"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir is required"))
	}
	if c.HSM.Token == "" || c.HSM.Key == "" {
		errs = append(errs, errors.New("hsm.token and hsm.key are required"))
	}
	if !filepath.IsAbs(c.HSM.Module) {
		errs = append(errs, fmt.Errorf("hsm.module %q must be an absolute path", c.HSM.Module))
	}
	errs = append(errs, c.Cluster.validate()...)
	switch c.Audit.OnFailure {
	case "continue", "reject":
	default:
		errs = append(errs, fmt.Errorf("audit.on_failure %q: must be continue or reject", c.Audit.OnFailure))
	}
	if c.Audit.MaxWait < 0 || c.Audit.MaxWait > 10*time.Second {
		errs = append(errs, fmt.Errorf("audit.max_wait %s: must be between 0 and 10s", c.Audit.MaxWait))
	}
	if c.Snapshot.Retention < 0 {
		errs = append(errs, errors.New("snapshot.retention must not be negative"))
	}
	if c.Snapshot.Interval > 0 && c.Snapshot.Interval < time.Second {
		errs = append(errs, fmt.Errorf("snapshot.interval %s: must be at least 1s (or negative to disable)", c.Snapshot.Interval))
	}
	if c.Health.CertReadyMargin < 0 {
		errs = append(errs, errors.New("health.cert_ready_margin must not be negative"))
	}
	// The backups must not live in a directory kmsd owns and that an
	// operator wipes to rebuild a node (state/, raft/) or that kmsd uses
	// for staging (tmp/).
	if c.DataDir != "" && c.Snapshot.Dir != "" {
		for _, sub := range []string{"state", "raft", "tmp"} {
			if d := filepath.Join(c.DataDir, sub); pathWithin(c.Snapshot.Dir, d) {
				errs = append(errs, fmt.Errorf("snapshot.dir %s: must not be inside %s (kmsd's own state; use data_dir/snapshots or a directory outside data_dir)", c.Snapshot.Dir, d))
			}
		}
	}
	return errors.Join(errs...)
}

// pathWithin reports whether path is dir or inside it (lexically).
func pathWithin(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

func (c *clusterConfig) validate() []error {
	var errs []error
	if c.NodeID == "" {
		errs = append(errs, errors.New("cluster.node_id is required"))
	}
	if _, _, err := splitHostPort(c.Address); err != nil {
		errs = append(errs, fmt.Errorf("cluster.address: %w", err))
	}
	if host, _, err := splitHostPort(c.Advertise); err != nil {
		errs = append(errs, fmt.Errorf("cluster.advertise: %w", err))
	} else if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		errs = append(errs, fmt.Errorf("cluster.advertise %q: peers cannot dial an unspecified address; set cluster.advertise to this node's IP or host name", c.Advertise))
	}
	seen := map[string]bool{}
	for _, p := range c.Peers {
		host, _, err := splitHostPort(p)
		if err == nil && host == "" {
			err = errors.New("missing host")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("cluster.peers: %q: %w", p, err))
		}
		if seen[p] {
			errs = append(errs, fmt.Errorf("cluster.peers: %q is listed twice", p))
		}
		seen[p] = true
	}
	if c.TLS.Cert == "" || c.TLS.Key == "" || c.TLS.CA == "" {
		errs = append(errs, errors.New("cluster.tls.cert, cluster.tls.key and cluster.tls.ca are required: the node channel is always mutual TLS with the cluster CA"))
	}
	return errs
}

// splitHostPort is net.SplitHostPort that also wants a numeric port.
func splitHostPort(addr string) (host string, port int, err error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: not a number in 0-65535", p)
	}
	return h, int(n), nil
}

// joinPeers returns the peers to dial: cluster.peers without this node's
// own advertise address.
func (c *clusterConfig) joinPeers() []string {
	var out []string
	for _, p := range c.Peers {
		if p != c.Advertise {
			out = append(out, p)
		}
	}
	return out
}

// parseLevel understands the KES log levels: on/off, DEBUG/INFO/WARN/ERROR
// with an optional +N/-N offset, or a plain integer. off = ERROR+1.
func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "on":
		return slog.LevelInfo, nil
	case "off":
		return slog.LevelError + 1, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		return slog.Level(n), nil
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("invalid level %q", s)
	}
	return l, nil
}

// pin resolves the HSM PIN: env var first, then file. The PIN never comes
// from the YAML in clear.
func (c *fileConfig) pin() (string, error) {
	if c.HSM.PINEnv != "" {
		if v, ok := os.LookupEnv(c.HSM.PINEnv); ok && v != "" {
			return v, nil
		}
	}
	if c.HSM.PINFile != "" {
		b, err := os.ReadFile(c.HSM.PINFile)
		if err != nil {
			return "", fmt.Errorf("hsm: pin_file: %w", err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	return "", fmt.Errorf("hsm: no PIN: set the environment variable %s or hsm.pin_file", c.HSM.PINEnv)
}
