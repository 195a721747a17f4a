package main

import (
	"bytes"
	"crypto/rand"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/internal/softhsmtest"
	"github.com/kmsd/kmsd/seal"
)

// fileSink is a raft.SnapshotSink writing to a file.
type fileSink struct{ *os.File }

func (fileSink) ID() string      { return "test" }
func (s fileSink) Cancel() error { return s.Close() }

// writeSnapshot persists f's state to a file, as raft (and `snapshot
// save`) would, and returns its path.
func writeSnapshot(t *testing.T, f *fsm.FSM) string {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	path := filepath.Join(t.TempDir(), "state.snap")
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Persist(fileSink{out}); err != nil {
		t.Fatal(err)
	}
	return path
}

// verifyConfig writes a node config whose hsm section opens tok.
func verifyConfig(t *testing.T, tok *softhsmtest.Token) string {
	t.Helper()
	t.Setenv("TEST_KMSD_VERIFY_PIN", tok.PIN)
	return writeConfig(t, fmt.Sprintf(`
admin: {identity: disabled}
tls: {key: server.key, cert: server.crt}
data_dir: data
hsm: {module: %s, token: %s, key: %s, pin_env: TEST_KMSD_VERIFY_PIN}
cluster:
  node_id: n1
  tls: {cert: node.crt, key: node.key, ca: ca.crt}
`, tok.ModulePath, tok.Label, tok.KeyLabel))
}

func TestSnapshotVerify(t *testing.T) {
	tok := softhsmtest.New(t, "snap-node1")
	outsider := softhsmtest.New(t, "snap-outsider")
	ctx := t.Context()
	mod := tok.Open(t)

	// A replicated state as a running cluster makes it: node1's stanza (a
	// real SoftHSM key), a second node's (software), one key.
	f := memFSM(t)
	kr, st, err := seal.Init(ctx, mod)
	if err != nil {
		t.Fatal(err)
	}
	defer kr.Destroy()
	recordStanza(t, f, st)
	st2, err := kr.Stanza(ctx, seal.NewSoftware(bytes.Repeat([]byte{3}, 32), "node2-key"))
	if err != nil {
		t.Fatal(err)
	}
	recordStanza(t, f, st2)
	k, err := seal.NewKey(seal.AES256, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := kr.SealKey("my-key", 1, k)
	if err != nil {
		t.Fatal(err)
	}
	applyCmd(t, f, &fsm.CreateKey{Key: fsm.Key{Name: "my-key", Algorithm: 1, Version: 1, Sealed: sealed, CreatedAt: time.Now().UTC()}})
	path := writeSnapshot(t, f)

	t.Run("offline", func(t *testing.T) {
		var out bytes.Buffer
		if err := snapshotVerify(ctx, &out, []string{path}); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			"checksum       OK (sha256 ",
			"format         version 1",
			"index          3 (term 1)",
			"records        4: 1 keys, 0 tombstones, 2 stanzas, 0 other",
			"root key       " + kr.ID(),
			"unsealable by  HSM key node2-key",
			"               HSM key " + mod.KeyID(),
		} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("output lacks %q:\n%s", want, out.String())
			}
		}
	})

	t.Run("this node's HSM unseals it", func(t *testing.T) {
		var out bytes.Buffer
		// Flags after the file, as in the usage string.
		if err := snapshotVerify(ctx, &out, []string{path, "--config", verifyConfig(t, tok)}); err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
		want := "this node      HSM key " + mod.KeyID() + " unseals the snapshot's root key " + kr.ID() + ": OK"
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	})

	t.Run("another HSM cannot", func(t *testing.T) {
		var out bytes.Buffer
		err := snapshotVerify(ctx, &out, []string{"--config", verifyConfig(t, outsider), path})
		if err == nil || !strings.Contains(err.Error(), "has no stanza in the snapshot") {
			t.Fatalf("err = %v\n%s", err, out.String())
		}
		if !strings.Contains(out.String(), "CANNOT unseal") {
			t.Errorf("output:\n%s", out.String())
		}
	})

	t.Run("corrupt", func(t *testing.T) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 1
		bad := filepath.Join(t.TempDir(), "bad.snap")
		if err := os.WriteFile(bad, b, 0o600); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if err := snapshotVerify(ctx, &out, []string{bad}); err == nil {
			t.Fatal("corrupt snapshot verified")
		}
		if !strings.Contains(out.String(), "checksum       FAILED") {
			t.Errorf("output:\n%s", out.String())
		}
	})

	t.Run("usage", func(t *testing.T) {
		if err := snapshotVerify(ctx, &bytes.Buffer{}, nil); err == nil {
			t.Fatal("no file: want an error")
		}
	})
}

func TestParseInterleaved(t *testing.T) {
	for _, tt := range []struct {
		args []string
		pos  string
		cfg  string
	}{
		{[]string{"n1", "--config", "c.yaml"}, "n1", "c.yaml"},
		{[]string{"--config", "c.yaml", "n1"}, "n1", "c.yaml"},
		{[]string{"--config=c.yaml", "--", "-n1"}, "-n1", "c.yaml"},
		{[]string{"a", "b", "--config", "c"}, "a,b", "c"},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		cfg := fs.String("config", "", "")
		pos, err := parseInterleaved(fs, tt.args)
		if err != nil || strings.Join(pos, ",") != tt.pos || *cfg != tt.cfg {
			t.Errorf("%q: pos %q config %q err %v", tt.args, pos, *cfg, err)
		}
	}
}
