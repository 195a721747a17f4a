package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/internal/softhsmtest"
	"github.com/kmsd/kmsd/seal"
	"github.com/kmsd/kmsd/seal/shamir"
)

// nodeConfig writes a node config for tok with its own data_dir and PIN
// variable; it returns the config path and the data_dir.
func nodeConfig(t *testing.T, tok *softhsmtest.Token, pinVar string) (string, string) {
	t.Helper()
	t.Setenv(pinVar, tok.PIN)
	p := writeConfig(t, fmt.Sprintf(`
admin: {identity: disabled}
tls: {key: server.key, cert: server.crt}
data_dir: data
hsm: {module: %s, token: %s, key: %s, pin_env: %s}
cluster:
  node_id: n1
  tls: {cert: node.crt, key: node.key, ca: ca.crt}
`, tok.ModulePath, tok.Label, tok.KeyLabel, pinVar))
	return p, filepath.Join(filepath.Dir(p), "data")
}

var shareLine = regexp.MustCompile(`(?m)^kmsd-share-v1-[0-9a-f]{8}-\d+-\d+-[a-z2-7]+-[0-9a-f]{8}$`)

func TestInitRecoveryShares(t *testing.T) {
	tok := softhsmtest.New(t, "rec-init")
	cfg, dataDir := nodeConfig(t, tok, "TEST_KMSD_REC_INIT_PIN")
	var out bytes.Buffer
	if err := initNode(t.Context(), &out, nil, []string{"--config", cfg, "--recovery-shares", "5", "--recovery-threshold", "3"}); err != nil {
		t.Fatal(err)
	}
	st, err := readStanza(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	lines := shareLine.FindAllString(out.String(), -1)
	if len(lines) != 5 {
		t.Fatalf("init printed %d share lines, want 5:\n%s", len(lines), out.String())
	}
	for _, want := range []string{"RECOVERY SHARES of root key " + st.REKID, "5 shares, any 3 of them", "shown ONCE", "--recovery-shares-file"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("init output lacks %q:\n%s", want, out.String())
		}
	}
	// The shares are on stdout only: nothing in data_dir holds them.
	entries, _ := os.ReadDir(dataDir)
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(dataDir, e.Name()))
		for _, l := range lines {
			value := strings.Split(l, "-")[6]
			if bytes.Contains(b, []byte(value)) || bytes.Contains(b, []byte("kmsd-share")) {
				t.Errorf("%s holds a recovery share", e.Name())
			}
		}
	}
	// Any 3 of them recover the REK the stanza names.
	var shares []*shamir.Share
	for _, l := range []string{lines[4], lines[1], lines[2]} {
		s, err := shamir.ParseShare([]byte(l))
		if err != nil {
			t.Fatal(err)
		}
		shares = append(shares, s)
	}
	kr, err := seal.RecoverKeyring(shares, st.REKID)
	if err != nil {
		t.Fatalf("3 printed shares do not recover the stanza's root key: %v", err)
	}
	kr.Destroy()
}

func TestInitFlags(t *testing.T) {
	tok := softhsmtest.New(t, "rec-flags")
	cfg, dataDir := nodeConfig(t, tok, "TEST_KMSD_REC_FLAGS_PIN")
	for i, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--recovery-shares", "3"}, "go together"},
		{[]string{"--recovery-threshold", "2"}, "go together"},
		{[]string{"--recovery-shares", "3", "--recovery-threshold", "4"}, "want 2 <="},
		{[]string{"--recovery-shares", "3", "--recovery-threshold", "1"}, "want 2 <="},
		{[]string{"--recovery-shares", "256", "--recovery-threshold", "2"}, "want 2 <="},
		{[]string{"--recovery-shares-file", "x"}, "for --restore only"},
		{[]string{"stray"}, "unexpected argument"},
		{[]string{"--restore", filepath.Join(t.TempDir(), "missing.snap")}, "no such file"},
	} {
		err := initNode(t.Context(), &bytes.Buffer{}, nil, append([]string{"--config", cfg}, tc.args...))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Test %d: %v: err %v, want %q", i, tc.args, err, tc.want)
		}
		if exists(filepath.Join(dataDir, stanzaFile)) || exists(filepath.Join(dataDir, markerFile)) {
			t.Fatalf("Test %d: a refused init wrote to data_dir", i)
		}
	}
}

// oldCluster is the replicated state of a cluster whose HSM key is
// tok's: a stanza, a key sealed under the REK, recovery shares.
type oldCluster struct {
	rekID  string
	snap   string   // snapshot path
	shares []string // 5 share texts, threshold 3
	sealed []byte   // "my-key" version 1
}

func makeOldCluster(t *testing.T, tok *softhsmtest.Token) oldCluster {
	t.Helper()
	mod := tok.Open(t)
	kr, st, err := seal.Init(t.Context(), mod)
	if err != nil {
		t.Fatal(err)
	}
	defer kr.Destroy()
	f := memFSM(t)
	recordStanza(t, f, st)
	k, err := seal.NewKey(seal.AES256, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := kr.SealKey("my-key", 1, k)
	if err != nil {
		t.Fatal(err)
	}
	applyCmd(t, f, &fsm.CreateKey{Key: fsm.Key{Name: "my-key", Algorithm: 1, Version: 1, Sealed: sealed, CreatedAt: time.Now().UTC()}})
	oc := oldCluster{rekID: kr.ID(), snap: writeSnapshot(t, f), sealed: sealed}
	shares, err := kr.SplitRecovery(5, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range shares {
		b, err := s.AppendSecret(nil)
		if err != nil {
			t.Fatal(err)
		}
		oc.shares = append(oc.shares, string(b))
		s.Destroy()
	}
	return oc
}

func writeShares(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "shares.txt")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestInitRestore: `init --restore` on a new node gets the snapshot's REK
// from recovery shares (a new HSM) or from its HSM (the old HSM key), and
// refuses cleanly otherwise, writing nothing.
func TestInitRestore(t *testing.T) {
	oldTok := softhsmtest.New(t, "rec-old")
	oc := makeOldCluster(t, oldTok)
	otherTok := softhsmtest.New(t, "rec-other")
	other := makeOldCluster(t, otherTok) // another cluster, for foreign shares

	newTok := softhsmtest.New(t, "rec-new")
	newKeyID := newTok.Open(t).KeyID()
	oldKeyID := oldTok.Open(t).KeyID()
	corrupt := []byte(oc.shares[1])
	corrupt[40] ^= 1
	// A wrong share that passes its checksum: another value, re-summed.
	f := strings.Split(oc.shares[2], "-")
	f[6] = strings.Repeat("a", len(f[6])-1) + "q"
	body := strings.Join(f[:7], "-")
	sum := sha256.Sum256([]byte(body))
	wrong := body + "-" + hex.EncodeToString(sum[:4])

	refused := []struct {
		name   string
		shares string // "" = no --recovery-shares-file
		want   []string
	}{
		{"no matching HSM key, no shares", "", []string{"can be unsealed by HSM keys " + oldKeyID, "this node's HSM key is " + newKeyID, "--recovery-shares-file"}},
		{"too few shares", writeShares(t, oc.shares[0], oc.shares[3]), []string{"too few shares", "2 of 3"}},
		{"a typo", writeShares(t, oc.shares[0], string(corrupt), oc.shares[2]), []string{"line 2", "checksum mismatch"}},
		{"another cluster's shares", writeShares(t, other.shares[0], other.shares[1], other.shares[2]), []string{"belongs to root key " + other.rekID[:8]}},
		{"a wrong share", writeShares(t, oc.shares[0], oc.shares[1], wrong), []string{"combine to another key than root key " + oc.rekID}},
		{"duplicate share", writeShares(t, oc.shares[0], oc.shares[0], oc.shares[2]), []string{"given twice"}},
		{"empty file", writeShares(t, "# nothing"), []string{"no share found"}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			cfg, dataDir := nodeConfig(t, newTok, "TEST_KMSD_REC_NEW_PIN")
			args := []string{"--config", cfg, "--restore", oc.snap}
			if tc.shares != "" {
				args = append(args, "--recovery-shares-file", tc.shares)
			}
			err := initNode(t.Context(), &bytes.Buffer{}, nil, args)
			if err == nil {
				t.Fatal("init --restore succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
			for _, s := range oc.shares {
				if strings.Contains(err.Error(), strings.Split(s, "-")[6][:12]) {
					t.Errorf("the error quotes a share: %v", err)
				}
			}
			for _, f := range []string{stanzaFile, markerFile, restoreFile} {
				if exists(filepath.Join(dataDir, f)) {
					t.Errorf("a refused init wrote %s", f)
				}
			}
			t.Logf("refused: %v", err)
		})
	}

	t.Run("new HSM, 3 of 5 shares", func(t *testing.T) {
		cfg, dataDir := nodeConfig(t, newTok, "TEST_KMSD_REC_NEW_PIN")
		sharesFile := writeShares(t, "# custodians 2, 4 and 5", "", oc.shares[1], "  "+strings.ToUpper(oc.shares[3]), oc.shares[4])
		var out bytes.Buffer
		if err := initNode(t.Context(), &out, nil, []string{"--config", cfg, "--restore", oc.snap, "--recovery-shares-file", sharesFile}); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "combined from 3 recovery shares") {
			t.Errorf("output:\n%s", out.String())
		}
		checkInitialised(t, dataDir, newTok, oc)
		// A second init refuses.
		err := initNode(t.Context(), &bytes.Buffer{}, nil, []string{"--config", cfg, "--restore", oc.snap, "--recovery-shares-file", sharesFile})
		if err == nil || !strings.Contains(err.Error(), "already initialised") {
			t.Errorf("second init: %v", err)
		}
	})

	t.Run("shares on stdin, with new shares", func(t *testing.T) {
		cfg, dataDir := nodeConfig(t, newTok, "TEST_KMSD_REC_NEW_PIN")
		stdin := strings.NewReader(strings.Join([]string{oc.shares[0], oc.shares[2], oc.shares[4], ""}, "\n"))
		var out bytes.Buffer
		if err := initNode(t.Context(), &out, stdin, []string{"--config", cfg, "--restore", oc.snap, "--recovery-shares-file", "-",
			"--recovery-shares", "3", "--recovery-threshold", "2"}); err != nil {
			t.Fatal(err)
		}
		checkInitialised(t, dataDir, newTok, oc)
		if n := len(shareLine.FindAllString(out.String(), -1)); n != 3 {
			t.Errorf("init --restore --recovery-shares 3 printed %d shares", n)
		}
	})

	t.Run("old HSM key, no shares", func(t *testing.T) {
		cfg, dataDir := nodeConfig(t, oldTok, "TEST_KMSD_REC_OLD_PIN")
		var out bytes.Buffer
		if err := initNode(t.Context(), &out, nil, []string{"--config", cfg, "--restore", oc.snap}); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "unwrapped by this node's HSM key "+oldKeyID) {
			t.Errorf("output:\n%s", out.String())
		}
		checkInitialised(t, dataDir, oldTok, oc)
	})

	t.Run("plain init removes a stale staged snapshot", func(t *testing.T) {
		cfg, dataDir := nodeConfig(t, newTok, "TEST_KMSD_REC_NEW_PIN")
		// What an `init --restore` interrupted before the stanza leaves.
		if err := os.MkdirAll(dataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{markerFile, restoreFile} {
			if err := os.WriteFile(filepath.Join(dataDir, f), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := bootstrapMarker(dataDir); err == nil {
			t.Error("the server would start on an interrupted init")
		}
		if err := initNode(t.Context(), &bytes.Buffer{}, nil, []string{"--config", cfg}); err != nil {
			t.Fatal(err)
		}
		if exists(filepath.Join(dataDir, restoreFile)) {
			t.Error("plain init left the stale staged snapshot")
		}
		if ok, err := bootstrapMarker(dataDir); !ok || err != nil {
			t.Errorf("bootstrapMarker = %v, %v", ok, err)
		}
	})
}

// checkInitialised: stanza under tok's key for the snapshot's REK, the
// bootstrap marker, and the snapshot staged byte for byte.
func checkInitialised(t *testing.T, dataDir string, tok *softhsmtest.Token, oc oldCluster) {
	t.Helper()
	st, err := readStanza(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	mod := tok.Open(t)
	kr, err := seal.Unseal(t.Context(), mod, st)
	if err != nil {
		t.Fatalf("this node's HSM cannot unseal its new stanza: %v", err)
	}
	defer kr.Destroy()
	if kr.ID() != oc.rekID {
		t.Fatalf("stanza holds root key %s, the snapshot's is %s", kr.ID(), oc.rekID)
	}
	k, err := kr.OpenKey("my-key", 1, oc.sealed)
	if err != nil {
		t.Fatalf("the recovered root key cannot open the snapshot's key: %v", err)
	}
	_ = k
	if ok, err := bootstrapMarker(dataDir); !ok || err != nil {
		t.Errorf("bootstrapMarker = %v, %v", ok, err)
	}
	staged, err := os.ReadFile(filepath.Join(dataDir, restoreFile))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(oc.snap)
	if !bytes.Equal(staged, want) {
		t.Error("the staged snapshot differs from the original")
	}
	if fi, err := os.Stat(filepath.Join(dataDir, restoreFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("staged snapshot mode: %v %v", fi.Mode(), err)
	}
}

func TestReadRecoverySharesErrors(t *testing.T) {
	long := strings.Repeat("a", 5000)
	for i, tc := range []struct {
		input string
		want  error
	}{
		{"garbage\n", shamir.ErrFormat},
		{long + "\n", nil}, // too long a line: a scanner error
	} {
		_, err := readRecoveryShares("-", strings.NewReader(tc.input), &bytes.Buffer{})
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("Test %d: %v, want %v", i, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "aaaa") {
			t.Errorf("Test %d: the error quotes the input: %v", i, err)
		}
	}
}

// TestReadRecoverySharesCancel: a share read from stdin that never ends
// (an operator at a terminal who pressed Ctrl-C, which main's signal
// context catches) returns once the context ends, without waiting for
// EOF; a read that ends first is returned as usual.
func TestReadRecoverySharesCancel(t *testing.T) {
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := readRecoverySharesCtx(ctx, "-", pr, io.Discard)
		errc <- err
	}()
	if _, err := pw.Write([]byte("# a comment, then nothing\n")); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("reading recovery shares ignored the cancelled context")
	}

	_, err := readRecoverySharesCtx(t.Context(), "-", strings.NewReader("garbage\n"), io.Discard)
	if !errors.Is(err, shamir.ErrFormat) {
		t.Fatalf("finished read: err = %v, want shamir.ErrFormat", err)
	}
}
