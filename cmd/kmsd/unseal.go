package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/hsm"
	"github.com/kmsd/kmsd/seal"
	"github.com/kmsd/kmsd/seal/shamir"
)

// stanzaFile is the node-local copy of this node's seal stanza: the REK
// wrapped under this node's HSM key. It lets a node unseal at boot before
// it talks to anyone. It holds no secret in clear.
const stanzaFile = "seal.stanza"

var errNotInitialised = errors.New("no seal stanza")

func (c *fileConfig) hsmConfig() (hsm.Config, error) {
	pin, err := c.pin()
	if err != nil {
		return hsm.Config{}, err
	}
	return hsm.Config{
		ModulePath:  c.HSM.Module,
		TokenLabel:  c.HSM.Token,
		PIN:         pin,
		KeyLabel:    c.HSM.Key,
		MaxSessions: c.HSM.MaxSessions,
		Observe:     procHSM.observe, // kmsd_hsm_* metrics (metrics.go)
	}, nil
}

func readStanza(dataDir string) (seal.Stanza, error) {
	var st seal.Stanza
	b, err := os.ReadFile(filepath.Join(dataDir, stanzaFile))
	if errors.Is(err, os.ErrNotExist) {
		return st, errNotInitialised
	}
	if err != nil {
		return st, fmt.Errorf("seal stanza: %w", err)
	}
	if err := st.UnmarshalBinary(b); err != nil {
		return st, fmt.Errorf("seal stanza %s: %w", filepath.Join(dataDir, stanzaFile), err)
	}
	return st, nil
}

// writeFileAtomic writes via a temp file, fsync and rename, so a crash
// leaves either the old or the new file, never a torn one.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// runInit creates the cluster root key (REK) and seals it under this
// node's HSM key. It refuses to run twice. With --recovery-shares N
// --recovery-threshold M it also prints N recovery shares of the REK
// once; with --restore SNAPSHOT it takes the REK of a snapshot instead of
// making one and stages the snapshot for the first start (recover.go).
func runInit(ctx context.Context, args []string) error {
	return initNode(ctx, os.Stdout, os.Stdin, args)
}

func initNode(ctx context.Context, stdout io.Writer, stdin io.Reader, args []string) error {
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "path to the config file (required)")
	var o recoveryOptions
	fs.IntVar(&o.shares, "recovery-shares", 0, "also print this many recovery shares of the root key (break-glass; default none)")
	fs.IntVar(&o.threshold, "recovery-threshold", 0, "how many recovery shares recover the root key (2 to --recovery-shares)")
	fs.StringVar(&o.restore, "restore", "", "first node of a NEW cluster: take the root key of this snapshot and restore it at the first start")
	fs.StringVar(&o.sharesFile, "recovery-shares-file", "", "with --restore: recovery shares, one per line (- = stdin), if this node's HSM key cannot unseal the snapshot")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cfgPath == "" {
		return errors.New("init: --config is required")
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("init: unexpected argument %q", fs.Arg(0))
	}
	if err := o.check(); err != nil {
		return err
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	path := filepath.Join(cfg.DataDir, stanzaFile)
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("init: already initialised (%s exists)", path)
	}
	if raftDir := filepath.Join(cfg.DataDir, "raft"); exists(raftDir) {
		return fmt.Errorf("init: %s exists: this node has already run as a cluster member; "+
			"init is for the first node of a new cluster only (the other nodes join and receive the root key)", raftDir)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	hc, err := cfg.hsmConfig()
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	mod, err := hsm.Open(ctx, hc)
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	defer mod.Close()
	var (
		kr  *seal.Keyring
		st  seal.Stanza
		src restoreSource
	)
	if o.restore == "" {
		kr, st, err = seal.Init(ctx, mod)
	} else if kr, src, err = keyringFromSnapshot(ctx, mod, o, stdin, os.Stderr); err == nil {
		if st, err = kr.Stanza(ctx, mod); err != nil {
			kr.Destroy()
		}
	}
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	defer kr.Destroy()
	var shares []*shamir.Share
	if o.shares > 0 {
		if shares, err = kr.SplitRecovery(o.shares, o.threshold); err != nil {
			return fmt.Errorf("init: %w", err)
		}
		defer destroyShares(shares)
	}
	b, err := st.MarshalBinary()
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	// The marker first: a crash before the stanza is written leaves a
	// marker without a stanza, which the server refuses and init redoes.
	// The staged snapshot (or the removal of a stale one from an
	// interrupted `init --restore`) comes before the stanza for the same
	// reason.
	if err := writeFileAtomic(filepath.Join(cfg.DataDir, markerFile), nil, 0o600); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	if o.restore != "" {
		err = stageSnapshot(cfg.DataDir, src)
	} else if err = os.Remove(filepath.Join(cfg.DataDir, restoreFile)); errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	if err := writeFileAtomic(path, b, 0o600); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	if o.restore != "" {
		fmt.Fprintf(stdout, "kmsd: initialised from snapshot %s: root key %s (%s) sealed under HSM key %s (%s)\n",
			src.path, kr.ID(), src.how, st.KeyID, st.Mechanism)
		fmt.Fprintf(stdout, "kmsd: the snapshot (index %d, %d keys) is staged in %s; at its first start this node bootstraps the cluster, "+
			"restores it, then the nodes in cluster.peers join and receive the root key\n",
			src.info.Index, src.info.Keys, filepath.Join(cfg.DataDir, restoreFile))
	} else {
		fmt.Fprintf(stdout, "kmsd: initialised: root key %s sealed under HSM key %s (%s)\n", kr.ID(), st.KeyID, st.Mechanism)
		fmt.Fprintf(stdout, "kmsd: this node bootstraps the cluster at its first start; the nodes in cluster.peers then join it and receive the root key\n")
	}
	if len(shares) > 0 {
		if err := printRecoveryShares(stdout, kr.ID(), shares); err != nil {
			return fmt.Errorf("init: the root key was created but its recovery shares could not be printed (%w); "+
				"before the first start, empty %s and run init again to get new shares", err, cfg.DataDir)
		}
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// unsealLoop tries to unseal until it succeeds or ctx ends, backing off
// up to a minute. Until then the node serves sealed (503 on key routes).
//
// A wrong or locked PIN stops the loop: every retry would be another
// failed login, and HSMs lock a token after a few. The operator fixes the
// PIN (file or environment) and sends SIGHUP or restarts; SIGHUP starts a
// new loop while the node is sealed. Only one loop runs at a time.
func (n *node) unsealLoop(ctx context.Context) {
	if !n.unsealing.CompareAndSwap(false, true) {
		return
	}
	defer n.unsealing.Store(false)
	backoff := time.Second
	for {
		err := n.unseal(ctx)
		n.noteUnseal(err)
		if err == nil {
			n.afterUnseal(ctx)
			return
		}
		if errors.Is(err, hsm.ErrPINIncorrect) || errors.Is(err, hsm.ErrPINLocked) {
			n.log.Error("kmsd: node is sealed; not retrying, to keep the HSM token from locking: fix the PIN, then send SIGHUP or restart", "err", err)
			return
		}
		n.log.Error("kmsd: node is sealed", "err", err, "retry_in", backoff.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Minute)
	}
}

// unseal opens the HSM, unwraps the local stanza and checks the REK
// against the one recorded in the replicated state. A node never serves
// with a REK it cannot prove. A node without a stanza receives the REK
// from a member instead (join).
func (n *node) unseal(ctx context.Context) error {
	cfg := n.cfg.Load()
	st, err := readStanza(cfg.DataDir)
	if errors.Is(err, errNotInitialised) {
		return n.join(ctx)
	}
	if err != nil {
		return err
	}
	hc, err := cfg.hsmConfig()
	if err != nil {
		return err
	}
	mod, err := hsm.Open(ctx, hc)
	if err != nil {
		return err
	}
	kr, err := seal.Unseal(ctx, mod, st)
	if err != nil {
		mod.Close()
		return err
	}
	// A snapshot staged by `kmsd init --restore` is restored before the
	// keyring is installed (recover.go).
	if err := n.restoreStaged(ctx, kr); err != nil {
		kr.Destroy()
		mod.Close()
		return err
	}
	return n.install(mod, kr, st)
}

// install makes kr the node's keyring (and mod its HSM) once kr's REK is
// the one the replicated state names (or the state names none yet). On
// error it destroys kr and closes mod.
func (n *node) install(mod *hsm.Module, kr *seal.Keyring, st seal.Stanza) error {
	if id, err := n.fsm.REKID(); err != nil || (id != "" && id != kr.ID()) {
		kr.Destroy()
		mod.Close()
		if err != nil {
			return err
		}
		return fmt.Errorf("unseal: this node's root key %s is not the cluster's root key %s", kr.ID(), id)
	}
	n.hsmMu.Lock()
	n.hsm = mod
	n.hsmMu.Unlock()
	n.keyring.Store(kr)
	n.log.Info("kmsd: unsealed", "rek", kr.ID(), "hsm_key", st.KeyID)
	return nil
}

// afterUnseal records this node's stanza in the replicated state (so a
// snapshot lists every HSM key that can unseal it) and creates the
// pre-defined keys. Both need a leader; they retry with bounded backoff.
func (n *node) afterUnseal(ctx context.Context) {
	cfg := n.cfg.Load()
	st, err := readStanza(cfg.DataDir)
	if err != nil {
		return
	}
	b, _ := st.MarshalBinary()
	cmd := &fsm.PutStanza{KeyID: st.KeyID, REKID: st.REKID, Stanza: b}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_ = n.raft.WaitLeader(wctx) // the retries below report a lasting failure
	cancel()
	retry(ctx, n, "record seal stanza", func(ctx context.Context) error {
		have, err := n.fsm.Stanzas()
		if err != nil {
			return err
		}
		for _, s := range have {
			if s.KeyID == st.KeyID && s.REKID == st.REKID {
				return nil
			}
		}
		res, err := n.raft.Apply(ctx, cmd)
		if err != nil {
			return err
		}
		return res.Err()
	})
	n.ensureKeys(ctx)
}

// ensureKeys creates the config's pre-defined keys that do not exist yet.
func (n *node) ensureKeys(ctx context.Context) {
	cfg := n.cfg.Load()
	for _, k := range cfg.Keys {
		retry(ctx, n, "create pre-defined key "+k.Name, func(ctx context.Context) error {
			return n.api.EnsureKey(ctx, k.Name, cfg.Admin.Identity)
		})
	}
}

// retry runs fn until it succeeds, ctx ends, or 10 attempts over about a
// minute have failed; failures are logged.
func retry(ctx context.Context, n *node, what string, fn func(context.Context) error) {
	backoff := 250 * time.Millisecond
	for attempt := 1; attempt <= 10; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := fn(actx)
		cancel()
		if err == nil {
			return
		}
		n.log.Warn("kmsd: "+what+" failed", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
	n.log.Error("kmsd: giving up: " + what)
}
