package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/hsm"
	"github.com/kmsd/kmsd/seal"
	"github.com/kmsd/kmsd/seal/shamir"
)

// Recovery (design.md §2, DESIGN.md "Recovery"): break-glass shares of
// the REK printed once by `kmsd init --recovery-shares N
// --recovery-threshold M`, and `kmsd init --restore SNAPSHOT` on the first
// node of a new cluster, which gets the snapshot's REK from this node's
// HSM (if it holds one of the snapshot's stanza keys) or from M shares,
// seals it under this node's HSM key and stages the snapshot; the server
// restores it at its first start (restoreStaged) before it unseals.

// restoreFile is the snapshot staged by `kmsd init --restore`. It holds
// only sealed key material. The server restores it through the cluster
// restore path and deletes it once that succeeded.
const restoreFile = "init.restore"

// maxSharesInput bounds what is read of a recovery shares file.
const maxSharesInput = 1 << 20

// recoveryOptions are init's recovery flags.
type recoveryOptions struct {
	shares, threshold int    // --recovery-shares, --recovery-threshold (0: none)
	restore           string // --restore SNAPSHOT
	sharesFile        string // --recovery-shares-file FILE, "-" = stdin
}

func (o recoveryOptions) check() error {
	switch {
	case (o.shares == 0) != (o.threshold == 0):
		return errors.New("init: --recovery-shares and --recovery-threshold go together")
	case o.shares != 0 && (o.threshold < 2 || o.threshold > o.shares || o.shares > shamir.MaxShares):
		return fmt.Errorf("init: want 2 <= --recovery-threshold (%d) <= --recovery-shares (%d) <= %d", o.threshold, o.shares, shamir.MaxShares)
	case o.sharesFile != "" && o.restore == "":
		return errors.New("init: --recovery-shares-file is for --restore only")
	}
	return nil
}

// restoreSource is what `init --restore` learnt from the snapshot.
type restoreSource struct {
	path string
	info fsm.SnapshotInfo
	how  string // how the REK was obtained, for the operator
}

// keyringFromSnapshot verifies the snapshot at o.restore and returns its
// REK: unwrapped by this node's HSM if the snapshot holds a stanza of
// its key, else combined from the recovery shares in o.sharesFile. The
// REK id is checked against the snapshot's in either case.
func keyringFromSnapshot(ctx context.Context, mod *hsm.Module, o recoveryOptions, stdin io.Reader, prompt io.Writer) (*seal.Keyring, restoreSource, error) {
	src := restoreSource{path: o.restore}
	f, err := os.Open(o.restore)
	if err != nil {
		return nil, src, fmt.Errorf("--restore: %w", err)
	}
	defer f.Close()
	if src.info, err = fsm.VerifySnapshot(f); err != nil {
		return nil, src, fmt.Errorf("--restore %s: %w", o.restore, err)
	}
	info := src.info
	if info.REKID == "" {
		return nil, src, fmt.Errorf("--restore %s: the snapshot names no root key (it was taken before the cluster was initialised)", o.restore)
	}
	keyID := mod.KeyID()
	var hsmErr error
	if slices.Contains(info.StanzaKeyIDs, keyID) {
		kr, err := unsealSnapshotStanza(ctx, mod, f, info)
		if err == nil {
			src.how = "unwrapped by this node's HSM key " + keyID
			return kr, src, nil
		}
		hsmErr = fmt.Errorf("this node's HSM key %s has a stanza in the snapshot but cannot unseal it: %w", keyID, err)
	}
	if o.sharesFile == "" {
		if hsmErr != nil {
			return nil, src, fmt.Errorf("%w; pass --recovery-shares-file FILE (or - for stdin) with enough recovery shares", hsmErr)
		}
		return nil, src, fmt.Errorf("the snapshot's root key %s can be unsealed by HSM keys %s; this node's HSM key is %s; "+
			"pass --recovery-shares-file FILE (or - for stdin) with enough recovery shares (the threshold set at `kmsd init`)",
			info.REKID, listOrNone(info.StanzaKeyIDs), keyID)
	}
	shares, err := readRecoverySharesCtx(ctx, o.sharesFile, stdin, prompt)
	if err != nil {
		return nil, src, err
	}
	defer destroyShares(shares)
	kr, err := seal.RecoverKeyring(shares, info.REKID)
	if err != nil {
		if hsmErr != nil {
			err = errors.Join(hsmErr, err)
		}
		return nil, src, err
	}
	src.how = fmt.Sprintf("combined from %d recovery shares", len(shares))
	return kr, src, nil
}

// unsealSnapshotStanza unseals the snapshot's stanza of mod's key.
func unsealSnapshotStanza(ctx context.Context, mod *hsm.Module, f *os.File, info fsm.SnapshotInfo) (*seal.Keyring, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	stanzas, err := snapshotStanzas(f)
	if err != nil {
		return nil, err
	}
	for _, ps := range stanzas {
		if ps.KeyID != mod.KeyID() {
			continue
		}
		var st seal.Stanza
		if err := st.UnmarshalBinary(ps.Stanza); err != nil {
			return nil, err
		}
		kr, err := seal.Unseal(ctx, mod, st)
		if err != nil {
			return nil, err
		}
		if kr.ID() != info.REKID {
			kr.Destroy()
			return nil, fmt.Errorf("%w: the stanza unseals root key %s, the snapshot names %s", seal.ErrREKMismatch, kr.ID(), info.REKID)
		}
		return kr, nil
	}
	return nil, errors.New("the stanza is listed but could not be read back")
}

func listOrNone(ids []string) string {
	if len(ids) == 0 {
		return "(none: the snapshot holds no stanza)"
	}
	return strings.Join(ids, ", ")
}

// readRecoveryShares reads shares, one per line, from path ("-": stdin).
// Blank lines and lines starting with '#' are skipped. From a terminal
// it prompts and stops at the first blank line after a share. Errors
// name the line, never its content; the input buffer is cleared.
func readRecoveryShares(path string, stdin io.Reader, prompt io.Writer) ([]*shamir.Share, error) {
	var r io.Reader
	interactive := false
	if path == "-" {
		r = stdin
		if f, ok := stdin.(*os.File); ok {
			if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
				interactive = true
				fmt.Fprintln(prompt, "kmsd: paste the recovery shares, one per line; end with an empty line")
			}
		}
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("recovery shares: %w", err)
		}
		defer f.Close()
		r = f
	}
	name := path
	if path == "-" {
		name = "stdin"
	}
	sc := bufio.NewScanner(io.LimitReader(r, maxSharesInput))
	// One fixed buffer (a share is well under 4 KiB): the scanner never
	// grows it into copies that could not be cleared.
	buf := make([]byte, 4096)
	defer clear(buf)
	sc.Buffer(buf, len(buf))
	var shares []*shamir.Share
	for line := 1; sc.Scan(); line++ {
		text := bytes.TrimSpace(sc.Bytes())
		if len(text) == 0 && interactive && len(shares) > 0 {
			break
		}
		if len(text) == 0 || text[0] == '#' {
			continue
		}
		s, err := shamir.ParseShare(text)
		clear(sc.Bytes())
		if err != nil {
			destroyShares(shares)
			return nil, fmt.Errorf("recovery shares %s, line %d: %w", name, line, err)
		}
		if len(shares) == shamir.MaxShares {
			destroyShares(shares)
			s.Destroy()
			return nil, fmt.Errorf("recovery shares %s: more than %d shares", name, shamir.MaxShares)
		}
		shares = append(shares, s)
	}
	if err := sc.Err(); err != nil {
		destroyShares(shares)
		return nil, fmt.Errorf("recovery shares %s: %w", name, err)
	}
	if len(shares) == 0 {
		return nil, fmt.Errorf("recovery shares %s: no share found (one kmsd-share-v1-... per line)", name)
	}
	return shares, nil
}

// readRecoverySharesCtx is readRecoveryShares that gives up when ctx
// ends. main's signal context catches Ctrl-C, so a read from a terminal
// would otherwise ignore it until EOF. The abandoned read ends with the
// process (init returns the error); shares it still parses are destroyed.
func readRecoverySharesCtx(ctx context.Context, path string, stdin io.Reader, prompt io.Writer) ([]*shamir.Share, error) {
	type result struct {
		shares []*shamir.Share
		err    error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := readRecoveryShares(path, stdin, prompt)
		ch <- result{s, err}
	}()
	select {
	case r := <-ch:
		return r.shares, r.err
	case <-ctx.Done():
		go func() { destroyShares((<-ch).shares) }()
		return nil, fmt.Errorf("recovery shares: %w", context.Cause(ctx))
	}
}

func destroyShares(shares []*shamir.Share) {
	for _, s := range shares {
		s.Destroy()
	}
}

// printRecoveryShares prints the shares with the operator's instructions.
// It is the only place a share's text exists; the buffer is cleared.
func printRecoveryShares(w io.Writer, rekID string, shares []*shamir.Share) error {
	n, m := len(shares), shares[0].Threshold()
	_, err := fmt.Fprintf(w, `
kmsd: RECOVERY SHARES of root key %s: %d shares, any %d of them recover it.
kmsd: They are shown ONCE and never stored by kmsd. Together with a snapshot
kmsd: (kmsd snapshot save), %d shares rebuild every key even if every HSM key is lost;
kmsd: fewer than %d reveal nothing. Give each share to a different custodian and
kmsd: keep them apart from each other, from the snapshots and from the HSM PINs.
kmsd: Recovery: kmsd init --config FILE --restore SNAPSHOT --recovery-shares-file FILE
kmsd: (%d of the shares, one per line) on the first node of a new cluster.

`, rekID, n, m, m, m, m)
	if err != nil {
		return err
	}
	line := make([]byte, 0, 256)
	defer func() { clear(line[:cap(line)]) }()
	for _, s := range shares {
		if line, err = s.AppendSecret(line[:0]); err != nil {
			return err
		}
		line = append(line, '\n')
		if _, err := w.Write(line); err != nil {
			return err
		}
	}
	_, err = fmt.Fprintln(w)
	return err
}

// stageSnapshot copies the verified snapshot at src into
// data_dir/init.restore atomically, verifying the copy as it is written
// and checking that it is the snapshot verified before (same checksum).
func stageSnapshot(dataDir string, src restoreSource) error {
	in, err := os.Open(src.path)
	if err != nil {
		return err
	}
	defer in.Close()
	dst := filepath.Join(dataDir, restoreFile)
	tmp, err := os.CreateTemp(dataDir, ".tmp-"+restoreFile)
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	info, err := fsm.VerifySnapshot(io.TeeReader(in, tmp))
	if err != nil {
		return fmt.Errorf("stage %s: %w", src.path, err)
	}
	if info.Checksum != src.info.Checksum {
		return fmt.Errorf("stage %s: the file changed while init read it", src.path)
	}
	if err := tmp.Chmod(0o600); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return err
	}
	return fsyncDir(dataDir)
}

func fsyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// restoreStaged restores the snapshot staged by `kmsd init --restore`
// (if any) through the cluster restore path, then deletes it. It runs in
// unseal, after the stanza was unsealed and before the keyring is
// installed: until the restored state is in place the node serves sealed,
// so nothing can be written to (and lost with) the empty state, and no
// joining node receives the REK. Restoring the same snapshot again is
// harmless, so a restart at any point simply runs it again.
func (n *node) restoreStaged(ctx context.Context, kr *seal.Keyring) error {
	path := filepath.Join(n.cfg.Load().DataDir, restoreFile)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer f.Close()
	info, err := fsm.VerifySnapshot(f)
	if err != nil {
		return fmt.Errorf("restore: the staged snapshot %s does not verify (%w): stop the node, empty data_dir and run `kmsd init --restore` again", path, err)
	}
	if info.REKID != kr.ID() {
		return fmt.Errorf("restore: the staged snapshot %s holds root key %s, this node's stanza root key %s", path, info.REKID, kr.ID())
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	t0 := time.Now()
	n.log.Warn("kmsd: restoring the snapshot staged by `kmsd init --restore`", "file", path,
		"snapshot_index", info.Index, "keys", info.Keys, "stanzas", info.Stanzas, "rek", info.REKID)
	rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := n.raft.WaitLeader(rctx); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := n.raft.Restore(rctx, f); err != nil {
		return fmt.Errorf("restore the staged snapshot %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("restore: delete the staged snapshot: %w", err)
	}
	if err := fsyncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	n.log.Warn("kmsd: restored the staged snapshot and deleted it", "keys", info.Keys, "took", time.Since(t0).Round(time.Millisecond).String())
	return nil
}
