package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/hsm"
	"github.com/kmsd/kmsd/seal"
	"github.com/kmsd/kmsd/storage"
)

// Snapshots of the replicated state (design.md §3): the fsm snapshot
// format (header, records, SHA-256 trailer). Key material stays sealed
// under the REK in it; the seal stanzas it carries say which HSM keys can
// unseal that REK.

const snapshotUsage = `usage:
  kmsd snapshot save FILE --config FILE
  kmsd snapshot restore FILE --config FILE
  kmsd snapshot verify FILE [--config FILE]
`

func runSnapshot(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, snapshotUsage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "save":
		return snapshotSave(ctx, args[1:])
	case "restore":
		return snapshotRestore(ctx, args[1:])
	case "verify":
		return snapshotVerify(ctx, os.Stdout, args[1:])
	case "help", "-h", "--help":
		fmt.Print(snapshotUsage)
		return nil
	default:
		fmt.Fprintf(os.Stderr, "kmsd snapshot: unknown subcommand %q\n\n%s", args[0], snapshotUsage)
		return flag.ErrHelp
	}
}

func oneFile(cmd string, pos []string) (string, error) {
	if len(pos) != 1 || pos[0] == "" {
		return "", fmt.Errorf("%s: want exactly one FILE", cmd)
	}
	return pos[0], nil
}

// snapshotSave streams a snapshot from the local node into FILE: a temp
// file beside it, verified, fsynced, then renamed, so FILE is either
// absent or a complete, verified snapshot.
func snapshotSave(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("snapshot save", flag.ContinueOnError)
	var o onlineFlags
	o.register(fs, 10*time.Minute)
	force := fs.Bool("f", false, "overwrite FILE if it exists")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	path, err := oneFile("snapshot save", pos)
	if err != nil {
		return err
	}
	if _, err := os.Stat(path); err == nil && !*force {
		return fmt.Errorf("snapshot save: %s exists (use -f to overwrite)", path)
	}
	c, addr, err := o.dial("snapshot save")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := c.SnapshotSave(ctx, addr, tmp); err != nil {
		return fmt.Errorf("snapshot save: %s: %w", addr, err)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	info, err := fsm.VerifySnapshot(tmp)
	if err != nil {
		return fmt.Errorf("snapshot save: the received snapshot does not verify: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	fmt.Printf("kmsd: saved snapshot %s: index %d, term %d, %d keys, root key %s, sha256 %s\n",
		path, info.Index, info.Term, info.Keys, info.REKID, hex.EncodeToString(info.Checksum[:]))
	return nil
}

// snapshotRestore verifies FILE locally, then sends it to the local node,
// which forwards it to the leader; the leader refuses a snapshot of
// another cluster's REK and replaces the state of every node.
func snapshotRestore(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("snapshot restore", flag.ContinueOnError)
	var o onlineFlags
	o.register(fs, 10*time.Minute)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	path, err := oneFile("snapshot restore", pos)
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("snapshot restore: %w", err)
	}
	defer f.Close()
	info, err := fsm.VerifySnapshot(f)
	if err != nil {
		return fmt.Errorf("snapshot restore: %s: %w", path, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("snapshot restore: %w", err)
	}
	c, addr, err := o.dial("snapshot restore")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if err := c.SnapshotRestore(ctx, addr, f); err != nil {
		return fmt.Errorf("snapshot restore: %s: %w", addr, err)
	}
	fmt.Printf("kmsd: restored snapshot %s (index %d, term %d, %d keys, root key %s)\n", path, info.Index, info.Term, info.Keys, info.REKID)
	return nil
}

// snapshotVerify checks FILE offline. With --config it also says whether
// this node's HSM key holds a stanza in the snapshot and proves it by
// unsealing that stanza with the node's HSM.
func snapshotVerify(ctx context.Context, w io.Writer, args []string) error {
	fs := flag.NewFlagSet("snapshot verify", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "also check that this node's HSM key can unseal the snapshot")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	path, err := oneFile("snapshot verify", pos)
	if err != nil {
		return err
	}
	var cfg *fileConfig
	if *cfgPath != "" {
		if cfg, err = loadConfig(*cfgPath); err != nil {
			return err
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("snapshot verify: %w", err)
	}
	defer f.Close()
	info, verr := fsm.VerifySnapshot(f)
	printSnapshotInfo(w, path, info, verr)
	if verr != nil {
		return fmt.Errorf("snapshot verify: %s: %w", path, verr)
	}
	if err := checkSidecar(w, path, f); err != nil {
		return fmt.Errorf("snapshot verify: %w", err)
	}
	if cfg == nil {
		return nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("snapshot verify: %w", err)
	}
	keyID, err := verifyUnseal(ctx, cfg, f, info)
	if err != nil {
		fmt.Fprintf(w, "%-15sHSM key %s: CANNOT unseal this snapshot\n", "this node", orUnknown(keyID))
		return fmt.Errorf("snapshot verify: %w", err)
	}
	fmt.Fprintf(w, "%-15sHSM key %s unseals the snapshot's root key %s: OK\n", "this node", keyID, info.REKID)
	return nil
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}

func printSnapshotInfo(w io.Writer, path string, info fsm.SnapshotInfo, verr error) {
	line := func(label, format string, a ...any) {
		fmt.Fprintf(w, "%-15s"+format+"\n", append([]any{label}, a...)...)
	}
	line("snapshot", "%s", path)
	switch {
	case verr == nil:
		line("checksum", "OK (sha256 %s)", hex.EncodeToString(info.Checksum[:]))
	default:
		line("checksum", "FAILED: %v", verr)
	}
	if info.Version == 0 {
		return // not even a header
	}
	line("format", "version %d", info.Version)
	line("index", "%d (term %d)", info.Index, info.Term)
	line("records", "%d: %d keys, %d tombstones, %d stanzas, %d other", info.Records, info.Keys, info.Tombstones, info.Stanzas, info.Other)
	line("root key", "%s", orUnknown(info.REKID))
	if len(info.StanzaKeyIDs) == 0 {
		line("unsealable by", "no HSM key (no stanza recorded)")
	}
	for i, id := range info.StanzaKeyIDs {
		label := ""
		if i == 0 {
			label = "unsealable by"
		}
		line(label, "HSM key %s", id)
	}
}

// verifyUnseal loads the snapshot into a throw-away in-memory state to
// read its stanzas, finds the one of this node's HSM key and unseals it.
// It returns the node's HSM key id (once known).
func verifyUnseal(ctx context.Context, cfg *fileConfig, r io.Reader, info fsm.SnapshotInfo) (string, error) {
	hc, err := cfg.hsmConfig()
	if err != nil {
		return "", err
	}
	mod, err := hsm.Open(ctx, hc)
	if err != nil {
		return "", err
	}
	defer mod.Close()
	keyID := mod.KeyID()
	if !slices.Contains(info.StanzaKeyIDs, keyID) {
		return keyID, fmt.Errorf("this node's HSM key %s has no stanza in the snapshot (it lists %s)", keyID, strings.Join(info.StanzaKeyIDs, ", "))
	}
	stanzas, err := snapshotStanzas(r)
	if err != nil {
		return keyID, err
	}
	for _, ps := range stanzas {
		if ps.KeyID != keyID {
			continue
		}
		var st seal.Stanza
		if err := st.UnmarshalBinary(ps.Stanza); err != nil {
			return keyID, fmt.Errorf("stanza of %s: %w", keyID, err)
		}
		kr, err := seal.Unseal(ctx, mod, st)
		if err != nil {
			return keyID, err
		}
		defer kr.Destroy()
		if kr.ID() != info.REKID {
			return keyID, fmt.Errorf("%w: the stanza unseals root key %s, the snapshot names %s", seal.ErrREKMismatch, kr.ID(), info.REKID)
		}
		return keyID, nil
	}
	return keyID, errors.New("the snapshot lists the stanza but it could not be read back")
}

// snapshotStanzas restores r into an in-memory state and returns the seal
// stanzas recorded in it. Nothing is written to disk except fsm's spool
// file in a private temp directory.
func snapshotStanzas(r io.Reader) ([]fsm.PutStanza, error) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	db, err := storage.Open(storage.Options{InMemory: true, Logger: quiet, GCInterval: -1})
	if err != nil {
		return nil, err
	}
	defer db.Close()
	tmp, err := os.MkdirTemp("", "kmsd-snapshot-verify-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	f, err := fsm.New(db, fsm.Config{Logger: quiet, TempDir: tmp})
	if err != nil {
		return nil, err
	}
	if err := f.Restore(io.NopCloser(r)); err != nil {
		return nil, err
	}
	return f.Stanzas()
}

// checkSidecar checks FILE against FILE.sha256 (as written by scheduled
// snapshots, `sha256sum -c` format: "<hex>  <name>", or "<hex> *<name>")
// when that file exists. f is FILE, read again from the start.
func checkSidecar(w io.Writer, path string, f io.ReadSeeker) error {
	side := path + ".sha256"
	b, err := os.ReadFile(side)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	want, name, ok := parseSHA256Line(string(b))
	switch {
	case !ok:
		fmt.Fprintf(w, "%-15sFAILED: %s is not a sha256sum line\n", "sidecar", side)
		return fmt.Errorf("%s: not in sha256sum format", side)
	case name != filepath.Base(path):
		fmt.Fprintf(w, "%-15sFAILED: %s names %q, not %q\n", "sidecar", side, name, filepath.Base(path))
		return fmt.Errorf("%s names %q, not %q", side, name, filepath.Base(path))
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		fmt.Fprintf(w, "%-15sFAILED: %s says sha256 %s, the file has %s\n", "sidecar", side, want, got)
		return fmt.Errorf("%s: checksum mismatch", side)
	}
	fmt.Fprintf(w, "%-15sOK (%s)\n", "sidecar", side)
	return nil
}

// parseSHA256Line parses one sha256sum output line.
func parseSHA256Line(s string) (sum, name string, ok bool) {
	s = strings.TrimSuffix(strings.TrimSuffix(s, "\n"), "\r")
	if strings.Contains(s, "\n") || len(s) < 64+2 {
		return "", "", false
	}
	sum, rest := strings.ToLower(s[:64]), s[64:]
	if _, err := hex.DecodeString(sum); err != nil {
		return "", "", false
	}
	switch {
	case strings.HasPrefix(rest, "  "), strings.HasPrefix(rest, " *"):
		return sum, rest[2:], rest[2:] != ""
	}
	return "", "", false
}
