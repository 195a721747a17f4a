package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const minimalConfig = `
address: 127.0.0.1:7373
admin:
  identity: ${TEST_KMSD_ADMIN}
tls:
  key: server.key
  cert: server.crt
hsm:
  token: t1
  key: k1
data_dir: data
cluster:
  node_id: n1
  tls: {cert: node.crt, key: node.key, ca: cluster-ca.crt}
`

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kmsd.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadConfig(t *testing.T) {
	t.Setenv("TEST_KMSD_ADMIN", "3ecfcdf38fcbe141ae26a1030f81e96b753365a46760ae6b578698a97c59fd22")
	t.Setenv("TEST_KMSD_TIMEOUT", "17s")
	tests := []struct {
		name    string
		extra   string
		wantErr string
		check   func(t *testing.T, c *fileConfig)
	}{
		{name: "minimal", check: func(t *testing.T, c *fileConfig) {
			if c.Admin.Identity != "3ecfcdf38fcbe141ae26a1030f81e96b753365a46760ae6b578698a97c59fd22" {
				t.Errorf("admin = %q, want the ${ENV} value", c.Admin.Identity)
			}
			if c.Cache.Expiry.Any != 5*time.Minute || c.Cache.Expiry.Unused != 30*time.Second {
				t.Errorf("cache defaults = %v/%v, want 5m/30s (KES Q6 fixed)", c.Cache.Expiry.Any, c.Cache.Expiry.Unused)
			}
			if !filepath.IsAbs(c.TLS.Key) || !filepath.IsAbs(c.DataDir) {
				t.Errorf("relative paths not resolved: %q %q", c.TLS.Key, c.DataDir)
			}
			if c.HSM.Module != "/usr/lib/softhsm/libsofthsm2.so" || c.HSM.PINEnv != "KMSD_HSM_PIN" {
				t.Errorf("hsm defaults = %q %q", c.HSM.Module, c.HSM.PINEnv)
			}
			if c.Cluster.Address != "127.0.0.1:7374" || c.Cluster.Advertise != c.Cluster.Address {
				t.Errorf("cluster address/advertise defaults = %q / %q", c.Cluster.Address, c.Cluster.Advertise)
			}
			for _, p := range []string{c.Cluster.TLS.Cert, c.Cluster.TLS.Key, c.Cluster.TLS.CA} {
				if !filepath.IsAbs(p) || filepath.Dir(p) != filepath.Dir(c.DataDir) {
					t.Errorf("cluster.tls path %q not resolved against the config's directory", p)
				}
			}
			if len(c.Cluster.Peers) != 0 || c.Cluster.joinPeers() != nil {
				t.Errorf("peers = %v", c.Cluster.Peers)
			}
		}},
		{name: "cluster peers", extra: `
cluster:
  node_id: n2
  address: 0.0.0.0:7384
  advertise: 10.0.0.2:7384
  peers: [10.0.0.1:7374, 10.0.0.2:7384, "node3.example:7394"]
  tls: {cert: /etc/kmsd/node.crt, key: /etc/kmsd/node.key, ca: /etc/kmsd/ca.crt}
`, check: func(t *testing.T, c *fileConfig) {
			if got := c.Cluster.joinPeers(); strings.Join(got, ",") != "10.0.0.1:7374,node3.example:7394" {
				t.Errorf("joinPeers = %v, want the peers without the own advertise address", got)
			}
			if c.Cluster.TLS.CA != "/etc/kmsd/ca.crt" || c.Cluster.Advertise != "10.0.0.2:7384" {
				t.Errorf("cluster = %+v", c.Cluster)
			}
		}},
		{name: "bootstrap is refused", extra: `
cluster:
  node_id: n1
  bootstrap: true
  tls: {cert: a, key: b, ca: c}
`, wantErr: "field bootstrap not found"},
		{name: "cluster tls is required", extra: `
cluster:
  node_id: n1
`, wantErr: "cluster.tls.cert, cluster.tls.key and cluster.tls.ca are required"},
		{name: "cluster ca is required", extra: `
cluster:
  node_id: n1
  tls: {cert: a, key: b}
`, wantErr: "cluster.tls.ca"},
		{name: "unspecified advertise", extra: `
cluster:
  node_id: n1
  address: 0.0.0.0:7374
  tls: {cert: a, key: b, ca: c}
`, wantErr: "cluster.advertise \"0.0.0.0:7374\""},
		{name: "bad peer", extra: `
cluster:
  node_id: n1
  peers: [10.0.0.1]
  tls: {cert: a, key: b, ca: c}
`, wantErr: "cluster.peers: \"10.0.0.1\""},
		{name: "duplicate peer", extra: `
cluster:
  node_id: n1
  peers: [a:1, a:1]
  tls: {cert: a, key: b, ca: c}
`, wantErr: "listed twice"},
		{name: "bad cluster port", extra: `
cluster:
  node_id: n1
  address: 127.0.0.1:http
  tls: {cert: a, key: b, ca: c}
`, wantErr: "cluster.address"},
		{name: "full KES sections", extra: `
version: v1
cache:
  expiry: {any: 1m, unused: 10s, offline: 0s}
log: {error: "WARN", audit: "on"}
api:
  /v1/status:
    skip_auth: true
    timeout: ${TEST_KMSD_TIMEOUT}
policy:
  my-app:
    allow: [/v1/key/generate/my-app*]
    deny: [/v1/key/decrypt/my-app-internal*]
    identities: [ea9826089311fe44d7590408ede9150f7c637b6cab0a91ee6fe1aa5d9fb366f6]
keys:
  - name: k1
  - name: k2
`, check: func(t *testing.T, c *fileConfig) {
			if got := c.API["/v1/status"]; !got.SkipAuth || got.Timeout != 17*time.Second {
				t.Errorf("api /v1/status = %+v", got)
			}
			if len(c.Policy["my-app"].Allow) != 1 || len(c.Keys) != 2 || c.Cache.Expiry.Any != time.Minute {
				t.Errorf("sections not decoded: %+v", c)
			}
			if !c.anySkipAuth() {
				t.Error("anySkipAuth = false")
			}
		}},
		{name: "unset env var", extra: "\ndata_dir: ${TEST_KMSD_UNSET_VAR}\n", wantErr: "TEST_KMSD_UNSET_VAR"},
		{name: "unknown field", extra: "\nadress: x\n", wantErr: "adress"},
		{name: "keystore is refused", extra: "\nkeystore:\n  fs: {path: /tmp/x}\n", wantErr: "kmsd is the key store"},
		{name: "negative timeout", extra: "\napi:\n  /v1/status: {timeout: -1s}\n", wantErr: "must not be negative"},
		{name: "bad version", extra: "\nversion: v2\n", wantErr: "version"},
		{name: "duplicate pre-defined key", extra: "\nkeys: [{name: a}, {name: a}]\n", wantErr: "listed twice"},
		{name: "bad log level", extra: "\nlog: {error: LOUD}\n", wantErr: "log.error"},
		{name: "relative module path", extra: "\nhsm: {module: libsofthsm2.so, token: t, key: k}\n", wantErr: "absolute"},
		{name: "snapshot.dir in the raft state", extra: "\nsnapshot: {dir: data/raft/backups}\n", wantErr: "snapshot.dir"},
		{name: "snapshot.dir is the badger state", extra: "\nsnapshot: {dir: data/state}\n", wantErr: "must not be inside"},
		{name: "snapshot.dir in the staging dir", extra: "\nsnapshot: {dir: data/tmp/x}\n", wantErr: "must not be inside"},
		{name: "snapshot.dir beside the state", extra: "\nsnapshot: {dir: data/stateful}\n", check: func(t *testing.T, c *fileConfig) {
			if filepath.Base(c.Snapshot.Dir) != "stateful" {
				t.Errorf("snapshot.dir = %q", c.Snapshot.Dir)
			}
		}},
		{name: "snapshot.dir default", check: func(t *testing.T, c *fileConfig) {
			if c.Snapshot.Dir != filepath.Join(c.DataDir, "snapshots") {
				t.Errorf("snapshot.dir = %q, want data_dir/snapshots", c.Snapshot.Dir)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := minimalConfig
			if tt.extra != "" {
				// Later keys replace earlier ones only in the extra sections.
				body = mergeYAML(minimalConfig, tt.extra)
			}
			c, err := loadConfig(writeConfig(t, body))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to mention %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

// mergeYAML drops top-level sections of base that extra redefines.
func mergeYAML(base, extra string) string {
	redefined := map[string]bool{}
	for _, l := range strings.Split(extra, "\n") {
		if k, _, ok := strings.Cut(l, ":"); ok && l != "" && l[0] != ' ' {
			redefined[k] = true
		}
	}
	var out []string
	skip := false
	for _, l := range strings.Split(base, "\n") {
		if l != "" && l[0] != ' ' {
			k, _, _ := strings.Cut(l, ":")
			skip = redefined[k]
		}
		if !skip {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n") + extra
}

func TestParseLevel(t *testing.T) {
	tests := []struct {
		in   string
		want slog.Level
		ok   bool
	}{
		{"on", slog.LevelInfo, true},
		{"off", slog.LevelError + 1, true},
		{"INFO", slog.LevelInfo, true},
		{"WARN+2", slog.LevelWarn + 2, true},
		{"error", slog.LevelError, true},
		{"-4", slog.LevelDebug, true},
		{"LOUD", 0, false},
	}
	for _, tt := range tests {
		got, err := parseLevel(tt.in)
		if (err == nil) != tt.ok || (tt.ok && got != tt.want) {
			t.Errorf("parseLevel(%q) = %v, %v; want %v ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestPIN(t *testing.T) {
	dir := t.TempDir()
	pinFile := filepath.Join(dir, "pin")
	if err := os.WriteFile(pinFile, []byte("4321\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &fileConfig{}
	c.HSM.PINEnv = "TEST_KMSD_PIN"
	c.HSM.PINFile = pinFile
	t.Setenv("TEST_KMSD_PIN", "")
	if got, err := c.pin(); err != nil || got != "4321" {
		t.Fatalf("pin from file = %q, %v", got, err)
	}
	t.Setenv("TEST_KMSD_PIN", "1234")
	if got, err := c.pin(); err != nil || got != "1234" {
		t.Fatalf("pin from env = %q, %v", got, err)
	}
	c.HSM.PINFile = ""
	t.Setenv("TEST_KMSD_PIN", "")
	if _, err := c.pin(); err == nil {
		t.Fatal("no PIN source: want an error")
	}
}

// TestRestartOnlyChanges: SIGHUP reports, rather than silently ignores,
// the settings that are only read at start (log.audit included: the
// stdout audit copy is a sink made at start).
func TestRestartOnlyChanges(t *testing.T) {
	base := func() *fileConfig {
		c := &fileConfig{}
		c.Log.Audit, c.Log.Error = "off", "INFO"
		c.Audit.File, c.Snapshot.Interval = "/var/log/kmsd/audit.ndjson", time.Hour
		return c
	}
	tests := []struct {
		name   string
		mutate func(c *fileConfig)
		want   string
	}{
		{"nothing", func(*fileConfig) {}, ""},
		{"reloadable only", func(c *fileConfig) { c.Log.Error = "DEBUG"; c.Admin.Identity = "x" }, ""},
		{"log.audit", func(c *fileConfig) { c.Log.Audit = "on" }, "log.audit"},
		{"audit and snapshot", func(c *fileConfig) { c.Audit.OnFailure = "reject"; c.Snapshot.Retention = 3 }, "audit, snapshot"},
		{"error_log", func(c *fileConfig) { c.ErrorLog.File = "/tmp/e" }, "error_log"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base()
			tc.mutate(cfg)
			if got := strings.Join(restartOnlyChanges(base(), cfg), ", "); got != tc.want {
				t.Errorf("restartOnlyChanges = %q, want %q", got, tc.want)
			}
		})
	}
}
