package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/kmsd/kmsd/health"
)

// Certificate files are reloaded when they change (DESIGN.md,
// "Certificates"): the watcher follows the parent directories of every
// TLS file (and of every symbolic link on the way to it), so an atomic
// rename, a Kubernetes ..data symlink swap or an editor's write-rename
// are all seen. Events are debounced; a slow poll compares content
// hashes in case an event was missed. A file-change reload rebuilds only
// TLS (the API listener's and the node channel's, each on its own) from
// the running configuration; a state that does not build is rejected
// with one ERROR line and the running one stays.

// watchOptions tunes the watcher; zero fields take the defaults.
type watchOptions struct {
	Debounce time.Duration // quiet time after the last event (250ms)
	MaxDelay time.Duration // upper bound from the first event of a burst (2s)
	Poll     time.Duration // content-hash poll interval (30s)
	NoNotify bool          // poll only (tests of the fallback)
}

func (o *watchOptions) defaults() {
	if o.Debounce <= 0 {
		o.Debounce = 250 * time.Millisecond
	}
	if o.MaxDelay <= 0 {
		o.MaxDelay = 2 * time.Second
	}
	if o.Poll <= 0 {
		o.Poll = 30 * time.Second
	}
}

// certReloader serialises every TLS install (SIGHUP and file changes)
// and remembers which file contents each group was last built from. The
// zero value is ready to use.
type certReloader struct {
	mu   sync.Mutex
	seen map[string][32]byte // "api" / "cluster" → content hash last tried
	wake chan struct{}       // nudges the watcher to re-read its watch set
}

// mark records the content hash group was last tried with (callers
// hold mu).
func (r *certReloader) mark(group string, sum [32]byte) {
	if r.seen == nil {
		r.seen = map[string][32]byte{}
	}
	r.seen[group] = sum
}

func (r *certReloader) nudge() {
	if r.wake == nil {
		return
	}
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// installTLS makes st the API listener's TLS, feeds the certificate
// monitor, and (when the files differ from the running state's) counts
// and logs the reload. Callers hold n.certw.mu.
func (n *node) installTLS(st *tlsState, source string) {
	old := n.tls.cur.Swap(st)
	n.certs.setAPI(st)
	n.certw.mark("api", st.sum)
	if old != nil && old.sum == st.sum {
		return
	}
	n.certs.reloaded()
	leaf := st.chain[0]
	n.log.Info("kmsd: API TLS certificate reloaded", "source", source, "file", st.files[0],
		"subject", leaf.Subject.String(), "serial", serialHex(leaf), "not_after", leaf.NotAfter.UTC(),
		"client_cas", len(st.cas))
}

// installClusterTLS is installTLS for the node channel.
func (n *node) installClusterTLS(st *clusterState, source string) {
	old := n.ctls.cur.Swap(st)
	n.certs.setCluster(st)
	n.certw.mark("cluster", st.sum)
	if old != nil && old.sum == st.sum {
		return
	}
	n.certs.reloaded()
	leaf := st.chain[0]
	n.log.Info("kmsd: node-channel TLS certificate reloaded", "source", source, "file", st.files[0],
		"subject", leaf.Subject.String(), "serial", serialHex(leaf), "not_after", leaf.NotAfter.UTC(),
		"cluster_cas", len(st.cas))
}

// LogValue keeps the private key out of logs: a state logs as its files
// and leaf certificate.
func (s *tlsState) LogValue() slog.Value { return certStateValue(s.files, s.chain) }

// LogValue: see tlsState.LogValue.
func (s *clusterState) LogValue() slog.Value { return certStateValue(s.files, s.chain) }

func certStateValue(files []string, chain []*x509.Certificate) slog.Value {
	attrs := []slog.Attr{slog.String("files", strings.Join(files, ", "))}
	if len(chain) > 0 {
		attrs = append(attrs, slog.String("subject", chain[0].Subject.String()), slog.String("serial", serialHex(chain[0])),
			slog.Time("not_after", chain[0].NotAfter.UTC()))
	}
	return slog.GroupValue(attrs...)
}

// notExpired rejects a new leaf certificate that has already expired:
// installing it would only break handshakes the old one still passes.
func notExpired(now time.Time, file string, leaf *x509.Certificate) error {
	if now.After(leaf.NotAfter) {
		return fmt.Errorf("tls: %s: certificate expired at %s", file, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// buildAllTLS builds both TLS states from cfg (SIGHUP) and rejects an
// already expired leaf in either.
func buildAllTLS(cfg *fileConfig, now time.Time) (*tlsState, *clusterState, error) {
	st, err := buildTLS(cfg)
	if err != nil {
		return nil, nil, err
	}
	if err := notExpired(now, cfg.TLS.Cert, st.chain[0]); err != nil {
		return nil, nil, err
	}
	cs, err := buildClusterState(cfg)
	if err != nil {
		return nil, nil, err
	}
	if err := notExpired(now, cfg.Cluster.TLS.Cert, cs.chain[0]); err != nil {
		return nil, nil, err
	}
	return st, cs, nil
}

// startCertificates feeds the certificate monitor the installed TLS
// states, registers the "certificates" readiness check and the
// kmsd_tls_* metrics, and starts the expiry ticker and the file watcher.
func (n *node) startCertificates(ctx context.Context) {
	n.certs.start(ctx, n.log)
	n.certw.mu.Lock()
	n.certs.setAPI(n.tls.cur.Load())
	n.certs.setCluster(n.ctls.cur.Load())
	n.certw.mu.Unlock()
	n.health.Register("certificates", health.Readiness, func(context.Context) (health.Status, string) {
		return n.certs.health(n.cfg.Load().Health.CertReadyMargin)
	})
	n.reg.MustRegister(n.certs)
	go n.watchCerts(ctx, watchOptions{})
}

// reloadCertFiles rebuilds each TLS group whose files changed since it
// was last tried, from the running configuration, and installs what
// builds. A group that does not build is logged once per content and
// keeps its running state; the next change tries again.
func (n *node) reloadCertFiles(source string) {
	n.certw.mu.Lock()
	defer n.certw.mu.Unlock()
	cfg := n.cfg.Load()
	now := n.certs.clock()
	if files := apiTLSFiles(cfg); n.certw.changed("api", files) {
		st, err := buildTLS(cfg)
		if err == nil {
			err = notExpired(now, cfg.TLS.Cert, st.chain[0])
		}
		if err != nil {
			n.rejectCerts("API", source, files, err)
		} else {
			n.installTLS(st, source)
		}
	}
	t := cfg.Cluster.TLS
	if files := []string{t.Cert, t.Key, t.CA}; n.certw.changed("cluster", files) {
		st, err := buildClusterState(cfg)
		if err == nil {
			err = notExpired(now, t.Cert, st.chain[0])
		}
		if err != nil {
			n.rejectCerts("node-channel", source, files, err)
		} else {
			n.installClusterTLS(st, source)
		}
	}
}

// changed hashes files and reports whether the hash differs from the
// one group was last tried with; it records the new one (callers hold
// mu).
func (r *certReloader) changed(group string, files []string) bool {
	sum := fingerprint(files...)
	if r.seen != nil && r.seen[group] == sum {
		return false
	}
	r.mark(group, sum)
	return true
}

// rejectCerts logs a rejected file-change reload: one ERROR line naming
// the files and the reason.
func (n *node) rejectCerts(what, source string, files []string, err error) {
	n.certs.rejected()
	n.log.Error("kmsd: certificate reload rejected, the running "+what+" certificate stays in use",
		"source", source, "files", strings.Join(files, ", "), "err", err)
}

// watchCerts runs the certificate watcher until ctx ends. It starts from
// the installed states (their content hashes are the baseline).
func (n *node) watchCerts(ctx context.Context, opts watchOptions) {
	opts.defaults()
	n.certw.mu.Lock()
	if st := n.tls.cur.Load(); st != nil {
		n.certw.mark("api", st.sum)
	}
	if st := n.ctls.cur.Load(); st != nil {
		n.certw.mark("cluster", st.sum)
	}
	if n.certw.wake == nil {
		n.certw.wake = make(chan struct{}, 1)
	}
	wake := n.certw.wake
	n.certw.mu.Unlock()

	var events <-chan fsnotify.Event
	var errs <-chan error
	var fw *fsnotify.Watcher
	if !opts.NoNotify {
		var err error
		if fw, err = fsnotify.NewWatcher(); err != nil {
			n.log.Warn("kmsd: certificate file watcher unavailable, polling only", "every", opts.Poll, "err", err)
		} else {
			defer fw.Close()
			events, errs = fw.Events, fw.Errors
		}
	}
	ws := &watchSet{fw: fw, dirs: map[string]bool{}}
	ws.refresh(n.cfg.Load())

	poll := time.NewTicker(opts.Poll)
	defer poll.Stop()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	var first time.Time // first event of the pending burst; zero: none
	arm := func() {
		now := time.Now()
		if first.IsZero() {
			first = now
		}
		wait := opts.Debounce
		if left := opts.MaxDelay - now.Sub(first); left < wait {
			wait = max(left, 0)
		}
		debounce.Reset(wait)
	}
	for {
		select {
		case <-ctx.Done():
			debounce.Stop()
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if ws.relevant(ev.Name) {
				arm()
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			// An overflow or a lost watch: look at the files anyway.
			n.log.Warn("kmsd: certificate file watcher", "err", err)
			arm()
		case <-debounce.C:
			first = time.Time{}
			n.reloadCertFiles("file change")
			ws.refresh(n.cfg.Load())
		case <-poll.C:
			n.reloadCertFiles("poll")
			ws.refresh(n.cfg.Load())
		case <-wake:
			ws.refresh(n.cfg.Load())
		}
	}
}

// watchSet is what the watcher follows: the directories to watch and
// the names in them whose events matter.
type watchSet struct {
	fw    *fsnotify.Watcher // nil: polling only
	dirs  map[string]bool   // watched directories
	names map[string]bool   // paths whose events matter
	anyIn map[string]bool   // directories in which every event matters (CA directories)
}

// refresh recomputes the set from the configured TLS paths (following
// symbolic links, which change on a ..data swap) and adjusts the watches.
func (w *watchSet) refresh(cfg *fileConfig) {
	names, anyIn := map[string]bool{}, map[string]bool{}
	for _, p := range append(apiTLSFiles(cfg), cfg.Cluster.TLS.Cert, cfg.Cluster.TLS.Key, cfg.Cluster.TLS.CA) {
		if p == "" {
			continue
		}
		chain := linkChain(p)
		for _, q := range chain {
			names[q] = true
		}
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			anyIn[chain[len(chain)-1]] = true
			anyIn[filepath.Clean(p)] = true
		}
	}
	want := map[string]bool{}
	for q := range names {
		want[filepath.Dir(q)] = true
	}
	for d := range anyIn {
		want[d] = true
	}
	w.names, w.anyIn = names, anyIn
	if w.fw == nil {
		return
	}
	for d := range w.dirs {
		if !want[d] {
			_ = w.fw.Remove(d) // may be gone already
			delete(w.dirs, d)
		}
	}
	for d := range want {
		if w.dirs[d] {
			continue
		}
		if err := w.fw.Add(d); err == nil { // a missing directory is retried on the next refresh
			w.dirs[d] = true
		}
	}
}

// relevant reports whether an event on path may change a TLS file.
func (w *watchSet) relevant(path string) bool {
	path = filepath.Clean(path)
	return w.names[path] || w.anyIn[filepath.Dir(path)] || w.anyIn[path]
}

// linkChain returns path (cleaned) and every symbolic link met while
// resolving it, component by component, each followed by the path it
// resolves to: for a Kubernetes volume "dir/tls.crt" that is dir/tls.crt,
// dir/..data/tls.crt, dir/..data, dir/..2024_01_01.123/tls.crt. At most
// 40 links are followed; a missing component ends the walk.
func linkChain(path string) []string {
	p := filepath.Clean(path)
	out := []string{p}
	if !filepath.IsAbs(p) {
		return out
	}
	for hops := 0; hops < 40; hops++ {
		next, link, err := resolveFirstLink(p)
		if err != nil || link == "" {
			return out
		}
		out = append(out, link, next)
		p = next
	}
	return out
}

// resolveFirstLink replaces the first symbolic link among p's components
// by its target; link is "" when p contains none.
func resolveFirstLink(p string) (next, link string, err error) {
	parts := strings.Split(p, string(filepath.Separator))
	cur := string(filepath.Separator)
	for i := 1; i < len(parts); i++ {
		if parts[i] == "" {
			continue
		}
		q := filepath.Join(cur, parts[i])
		fi, err := os.Lstat(q)
		if err != nil {
			return "", "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			cur = q
			continue
		}
		target, err := os.Readlink(q)
		if err != nil {
			return "", "", err
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(cur, target)
		}
		rest := append([]string{target}, parts[i+1:]...)
		return filepath.Join(rest...), q, nil
	}
	return p, "", nil
}
