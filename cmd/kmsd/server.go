package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsd/kmsd/api"
	"github.com/kmsd/kmsd/cluster"
	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/health"
	"github.com/kmsd/kmsd/hsm"
	"github.com/kmsd/kmsd/seal"
	"github.com/kmsd/kmsd/storage"
)

// Compile-time proof that the HSM module is a seal.Sealer (hsm does not
// import seal; Go interfaces are structural).
var _ seal.Sealer = (*hsm.Module)(nil)

// node is one running kmsd server: the components in boot order.
type node struct {
	cfgPath string
	log     *slog.Logger
	cfg     atomic.Pointer[fileConfig]

	db      *storage.DB
	fsm     *fsm.FSM
	raft    *cluster.Node
	cache   *seal.Cache
	keyring atomic.Pointer[seal.Keyring]
	api     *api.Server
	tls     tlsReloader
	ctls    clusterTLS   // node channel
	certw   certReloader // serialises TLS installs; file watcher state (certwatch.go)

	// health collects the node's checks (seal, raft, certificates, audit,
	// store); reg is the Prometheus registry served at /v1/metrics. Both
	// exist before openState, so every component can register.
	// logLevel is log.error, changed by SIGHUP.
	logLevel slog.LevelVar

	health *health.Registry
	reg    *prometheus.Registry
	certs  *certMonitor

	hsmMu sync.Mutex
	hsm   *hsm.Module

	ctx       context.Context          // the server's lifetime
	cancel    context.CancelFunc       // ends ctx (close)
	bg        sync.WaitGroup           // background work: unseal loops, ensureKeys
	unsealing atomic.Bool              // an unsealLoop is running
	unsealErr atomic.Pointer[errorBox] // the last unseal attempt's error (health.go)

	// callPeer sends an internal RPC to a member; nil = raft.Call (tests
	// replace it).
	callPeer func(ctx context.Context, addr, method, path string, body io.Reader) (*http.Response, error)

	logs *logSinks // audit and error-log files (logging.go)
}

func runServer(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "path to the config file (required)")
	addr := fs.String("addr", "", "API listen address (overrides the config's address)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cfgPath == "" {
		return errors.New("server: --config is required")
	}
	// Catch SIGHUP from the start: its default action ends the process,
	// and an operator's reload may arrive while badger and raft open.
	// Signals that arrive before serving are handled once it starts.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	if *addr != "" {
		cfg.Address = *addr
	}
	errStream := api.NewErrorStream(slog.LevelError)
	// The node's own lifetime: close cancels it and waits for the
	// background unseal work before raft, badger and the HSM close.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n := &node{cfgPath: *cfgPath, ctx: ctx, cancel: cancel, health: health.NewRegistry(nil), reg: prometheus.NewRegistry(), certs: &certMonitor{}}
	if err := n.openLogs(cfg, errStream); err != nil { // logging.go: logger, audit and error-log files
		return err
	}
	defer n.logs.close()
	n.cfg.Store(cfg)
	n.registerHealth()
	defer n.close()
	if err := n.openState(ctx); err != nil {
		return err
	}
	if err := n.tls.load(cfg); err != nil {
		return err
	}
	reg := n.reg
	reg.MustRegister(n.raft.Collector(), nodeCollector{n}, procHSM)
	if n.api, err = api.New(n.apiConfig(cfg, errStream, reg), api.Deps{
		Store:   n.fsm,
		Cluster: n.raft,
		Keyring: n.keyring.Load,
		Cache:   n.cache,
		// Health: seal, raft, store (health.go) and the others' checks.
		Health:     n.health,
		CertExpiry: n.certs.Soonest,
		Raft:       n.raft.Status,
	}); err != nil {
		return err
	}
	defer n.api.Close()

	// Scheduled snapshots (snapshots.go); stopped before raft and badger close.
	stopSnapshots := n.startSnapshots(ctx)
	defer stopSnapshots()
	n.background(func() { n.unsealLoop(ctx) })
	return n.serve(ctx, cfg.Address, hup, errStream, reg)
}

// openState opens badger, the FSM, the cache and raft, in that order.
func (n *node) openState(ctx context.Context) error {
	cfg := n.cfg.Load()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	var err error
	// An interrupted restore leaves a marker; the half-replaced state is
	// dropped and raft rebuilds it from its latest snapshot and log, so
	// nothing acknowledged is lost (see cluster/DESIGN.md).
	if n.db, err = storage.Open(storage.Options{
		Dir:                   filepath.Join(cfg.DataDir, "state"),
		Logger:                n.log,
		DropIncompleteRestore: true,
		// The state is derived from raft's fsynced log and snapshots: a
		// power loss can only cost badger its latest commits (a consistent
		// prefix, applied index included), which raft re-applies from its
		// log, or restores from its snapshot when the state is older than
		// it (cluster/DESIGN.md, Boot). One fsync per commit fewer.
		NoSyncWrites: true,
	}); err != nil {
		return err
	}
	tmp := filepath.Join(cfg.DataDir, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	n.cache = seal.NewCache(seal.CacheConfig{Any: cfg.Cache.Expiry.Any, Unused: cfg.Cache.Expiry.Unused})
	if n.fsm, err = fsm.New(n.db, fsm.Config{
		Logger:    n.log,
		OnDelete:  n.cache.Invalidate,
		OnRestore: n.cache.Purge,
		TempDir:   tmp,
	}); err != nil {
		return err
	}
	if err := n.ctls.load(cfg); err != nil {
		return err
	}
	// Cluster formation: the node `kmsd init` ran on bootstraps a
	// single-voter cluster (cluster.Open does so only while raft has no
	// state); every other node joins through cluster.peers.
	bootstrap, err := bootstrapMarker(cfg.DataDir)
	if err != nil {
		return err
	}
	if n.raft, err = cluster.Open(ctx, cluster.Config{
		NodeID:        cfg.Cluster.NodeID,
		DataDir:       filepath.Join(cfg.DataDir, "raft"),
		BindAddr:      cfg.Cluster.Address,
		AdvertiseAddr: cfg.Cluster.Advertise,
		Bootstrap:     bootstrap,
		TLS:           n.ctls.config,
		Peers:         cfg.Cluster.joinPeers(),
		RPC:           map[string]http.Handler{rekPath: n.rekHandler()},
		Logger:        n.log,
		Health:        n.health.Report,
	}, n.fsm); err != nil {
		return err
	}
	n.health.Register("raft", health.Readiness, n.raftCheck) // health.go: only now that n.raft is set
	if bootstrap && len(n.raft.Status().Members) > 0 {
		// raft has state now: the marker has done its job, and a later
		// start must never bootstrap again.
		if err := os.Remove(filepath.Join(cfg.DataDir, markerFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("data_dir: %w", err)
		}
		n.log.Info("kmsd: raft has state; removed the init bootstrap marker", "file", filepath.Join(cfg.DataDir, markerFile))
	}
	return nil
}

func (n *node) apiConfig(cfg *fileConfig, es *api.ErrorStream, reg *prometheus.Registry) api.Config {
	c := api.Config{
		NodeName:  cfg.Cluster.NodeID,
		Admin:     cfg.Admin.Identity,
		Policies:  map[string]api.Policy{},
		Routes:    map[string]api.RouteConfig{},
		Version:   version,
		Commit:    commit,
		StartTime: time.Now().UTC(),
		Logger:    n.log,
		ErrorLog:  es,
		Registry:  reg,
	}
	c.Audit = n.logs.auditSink() // logging.go: audit.file + the log.audit stdout copy
	c.AuditReject, c.AuditMaxWait = cfg.Audit.OnFailure == "reject", cfg.Audit.MaxWait
	for name, p := range cfg.Policy {
		c.Policies[name] = api.Policy{Allow: p.Allow, Deny: p.Deny, Identities: p.Identities}
	}
	for path, r := range cfg.API {
		c.Routes[path] = api.RouteConfig{Timeout: r.Timeout, SkipAuth: r.SkipAuth}
	}
	return c
}

// serve runs the HTTPS listener until ctx ends, reloading on SIGHUP
// (everything) and on certificate file changes (TLS only, certwatch.go).
func (n *node) serve(ctx context.Context, addr string, hup <-chan os.Signal, es *api.ErrorStream, reg *prometheus.Registry) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("server: listen %s: %w", addr, err)
	}
	srv := &http.Server{
		Handler:           n.api.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       90 * time.Second,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
	}
	srv.TLSConfig = n.tls.config()
	srv.TLSConfig.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return n.tls.cur.Load().cert, nil }
	n.startCertificates(ctx)
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	n.log.Info("kmsd: serving the KES API", "address", ln.Addr().String(), "node", n.cfg.Load().Cluster.NodeID)

	for {
		select {
		case <-hup:
			n.reload(es, reg)
		case err := <-errc:
			return fmt.Errorf("server: %w", err)
		case <-ctx.Done():
			n.log.Info("kmsd: shutting down")
			n.api.Close() // end log streams so Shutdown does not wait on them
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				srv.Close()
			}
			return nil
		}
	}
}

// reload re-reads the config file (SIGHUP): admin, policies, API
// settings and TLS. Anything invalid is rejected as a whole and logged;
// the running configuration stays.
func (n *node) reload(es *api.ErrorStream, reg *prometheus.Registry) {
	cfg, err := loadConfig(n.cfgPath)
	if err != nil {
		n.log.Error("kmsd: reload rejected, keeping the running configuration", "err", err)
		return
	}
	old := n.cfg.Load()
	// Only cluster.tls of the cluster section is reloadable (certificate
	// rotation); node id, addresses and peers need a restart.
	clusterTLSFiles := cfg.Cluster.TLS
	cfg.Address, cfg.DataDir, cfg.Cluster, cfg.HSM = old.Address, old.DataDir, old.Cluster, old.HSM
	cfg.Cluster.TLS = clusterTLSFiles
	// The log files, the stdout audit copy and the snapshot schedule are
	// set up at start; a change is reported, not applied.
	if changed := restartOnlyChanges(old, cfg); len(changed) > 0 {
		n.log.Warn("kmsd: settings changed that take effect at the next restart", "changed", strings.Join(changed, ", "))
	}
	cfg.Audit, cfg.ErrorLog, cfg.Snapshot, cfg.Log.Audit = old.Audit, old.ErrorLog, old.Snapshot, old.Log.Audit
	// No file-change reload in between: it would read n.cfg.
	n.certw.mu.Lock()
	defer n.certw.mu.Unlock()
	st, ctls, err := buildAllTLS(cfg, n.certs.clock())
	if err != nil {
		n.certs.rejected()
	} else {
		err = n.api.Reload(n.apiConfig(cfg, es, reg))
	}
	if err != nil {
		n.log.Error("kmsd: reload rejected, keeping the running configuration", "err", err)
		return
	}
	// Only now: the whole new configuration was accepted.
	n.installTLS(st, "SIGHUP")
	n.installClusterTLS(ctls, "SIGHUP")
	n.cfg.Store(cfg)
	n.certw.nudge() // the TLS paths may have changed
	level, _ := parseLevel(cfg.Log.Error)
	n.logLevel.Set(level)
	n.cache.Reconfigure(seal.CacheConfig{Any: cfg.Cache.Expiry.Any, Unused: cfg.Cache.Expiry.Unused})
	n.log.Info("kmsd: configuration reloaded")
	n.reopenLogs() // logrotate: reopen the audit and error-log files (logging.go)
	if n.keyring.Load() != nil {
		n.background(func() { n.ensureKeys(n.ctx) })
	} else {
		n.background(func() { n.unsealLoop(n.ctx) }) // e.g. after the operator fixed the PIN
	}
}

// restartOnlyChanges names the settings of cfg that differ from the
// running old ones but are only read at start (see reload).
func restartOnlyChanges(old, cfg *fileConfig) []string {
	var out []string
	for _, c := range []struct {
		name    string
		changed bool
	}{
		{"audit", cfg.Audit != old.Audit},
		{"error_log", cfg.ErrorLog != old.ErrorLog},
		{"snapshot", cfg.Snapshot != old.Snapshot},
		{"log.audit", cfg.Log.Audit != old.Log.Audit},
	} {
		if c.changed {
			out = append(out, c.name)
		}
	}
	return out
}

// background runs fn on its own goroutine; close waits for it.
func (n *node) background(fn func()) {
	n.bg.Add(1)
	go func() {
		defer n.bg.Done()
		fn()
	}()
}

// bgStopWait bounds how long close waits for background work to notice
// the cancelled context (an HSM call in progress, a raft apply).
const bgStopWait = 15 * time.Second

func (n *node) close() {
	// No unseal may install a keyring (or an HSM session) after the
	// teardown below: stop the background work first.
	if n.cancel != nil {
		n.cancel()
	}
	stopped := make(chan struct{})
	go func() { n.bg.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(bgStopWait):
		n.log.Warn("kmsd: background unseal work did not stop in time; closing anyway", "waited", bgStopWait.String())
	}
	if n.raft != nil {
		if err := n.raft.Shutdown(); err != nil {
			n.log.Error("kmsd: raft shutdown", "err", err)
		}
	}
	if n.db != nil {
		if err := n.db.Close(); err != nil {
			n.log.Error("kmsd: storage close", "err", err)
		}
	}
	if n.cache != nil {
		n.cache.Close()
	}
	if kr := n.keyring.Swap(nil); kr != nil {
		kr.Destroy()
	}
	n.hsmMu.Lock()
	if n.hsm != nil {
		n.hsm.Close()
	}
	n.hsmMu.Unlock()
}
