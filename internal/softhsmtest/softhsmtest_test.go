package softhsmtest_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/hsm"
	"github.com/kmsd/kmsd/internal/softhsmtest"
)

// TestMain doubles as a child process: with KMSD_SOFTHSMTEST_CHILD=1 it
// opens the token described by its environment, wraps and unwraps, and
// exits. This checks what Env promises: a process started after New
// sees the token.
func TestMain(m *testing.M) {
	if os.Getenv("KMSD_SOFTHSMTEST_CHILD") == "1" {
		os.Exit(child())
	}
	os.Exit(m.Run())
}

func child() int {
	cfg := hsm.Config{
		ModulePath: os.Getenv("CHILD_MODULE"),
		TokenLabel: os.Getenv("CHILD_TOKEN"),
		PIN:        os.Getenv("CHILD_PIN"),
		KeyLabel:   os.Getenv("CHILD_KEY"),
	}
	ctx := context.Background()
	m, err := hsm.Open(ctx, cfg)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer m.Close()
	ct, err := m.Wrap(ctx, []byte("from the child"), nil)
	if err == nil {
		_, err = m.Unwrap(ctx, ct, nil)
	}
	if err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Print(m.KeyID())
	return 0
}

func TestTokenIsUsable(t *testing.T) {
	tok := softhsmtest.New(t, "softhsmtest-a")
	if tok.Label != "softhsmtest-a" || tok.KeyLabel != softhsmtest.KeyLabel || tok.PIN == "" {
		t.Fatalf("token %+v", tok)
	}
	if got := tok.Env(); len(got) != 1 || got[0] != "SOFTHSM2_CONF="+tok.ConfPath {
		t.Fatalf("Env() = %q", got)
	}
	if os.Getenv("SOFTHSM2_CONF") != tok.ConfPath || filepath.Dir(tok.ConfPath) != tok.Dir {
		t.Fatalf("SOFTHSM2_CONF = %q, ConfPath %q, Dir %q", os.Getenv("SOFTHSM2_CONF"), tok.ConfPath, tok.Dir)
	}
	m := tok.Open(t)
	ct, err := m.Wrap(context.Background(), []byte("rek"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := m.Unwrap(context.Background(), ct, []byte("aad")); err != nil || string(pt) != "rek" {
		t.Fatalf("Unwrap = %q, %v", pt, err)
	}
}

func TestSameLabelIsMadeUnique(t *testing.T) {
	a := softhsmtest.New(t, "dup")
	b := softhsmtest.New(t, "dup")
	c := softhsmtest.New(t, "dup")
	if a.Label != "dup" || b.Label != "dup-2" || c.Label != "dup-3" {
		t.Fatalf("labels %q, %q, %q", a.Label, b.Label, c.Label)
	}
	if a.Open(t).KeyID() == b.Open(t).KeyID() {
		t.Fatal("two tokens share a KeyID")
	}
}

func TestCleanupRemovesEverything(t *testing.T) {
	var dir string
	for i := range 5 { // later rounds recreate the directory
		t.Run(fmt.Sprint("round", i), func(t *testing.T) {
			tok := softhsmtest.New(t, "cleanup")
			tok.Open(t)
			dir = tok.Dir
			if _, err := os.Stat(filepath.Join(dir, "softhsm2.conf")); err != nil {
				t.Fatal(err)
			}
		})
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Fatalf("round %d: %s still exists after the last token's cleanup (%v)", i, dir, err)
		}
	}
}

func TestChildProcessSeesToken(t *testing.T) {
	tok := softhsmtest.New(t, "softhsmtest-child")
	want := tok.Open(t).KeyID()
	cmd := exec.Command(os.Args[0])
	for _, kv := range os.Environ() { // prove that Env alone is enough
		if !strings.HasPrefix(kv, "SOFTHSM2_CONF=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, tok.Env()...)
	cmd.Env = append(cmd.Env, "KMSD_SOFTHSMTEST_CHILD=1",
		"CHILD_MODULE="+tok.ModulePath, "CHILD_TOKEN="+tok.Label, "CHILD_PIN="+tok.PIN, "CHILD_KEY="+tok.KeyLabel)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("child: %v: %s", err, out.String())
	}
	if got := strings.TrimSpace(out.String()); got != want {
		t.Fatalf("child saw KeyID %q, parent %q", got, want)
	}
}

// TestParallelTests is how other packages use the helper: parallel tests,
// each with its own token (some with the same label), opening and using
// keys while other tokens are being created and removed.
func TestParallelTests(t *testing.T) {
	for i := range 8 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			tok := softhsmtest.New(t, fmt.Sprint("par-", i%3))
			m := tok.Open(t)
			for range 20 {
				ct, err := m.Wrap(context.Background(), []byte("rek"), nil)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := m.Unwrap(context.Background(), ct, nil); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
