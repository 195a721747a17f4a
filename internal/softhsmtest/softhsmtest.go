package softhsmtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/kmsd/kmsd/hsm"
)

// KeyLabel is the label of the wrapping key in every token New creates.
const KeyLabel = "kmsd-wrapping-key"

// modulePaths are the usual install locations of libsofthsm2.so.
var modulePaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",                   // Debian, Ubuntu
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",  // Debian multiarch
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so", // Debian multiarch
	"/usr/lib64/pkcs11/libsofthsm2.so",                  // Fedora, RHEL
	"/usr/local/lib/softhsm/libsofthsm2.so",             // source builds
	"/opt/homebrew/lib/softhsm/libsofthsm2.so",          // Homebrew
}

// ModulePath returns the absolute path of libsofthsm2.so, or "" if SoftHSM2
// is not installed. KMSD_SOFTHSM_MODULE overrides the search.
func ModulePath() string {
	if p := os.Getenv("KMSD_SOFTHSM_MODULE"); p != "" {
		if abs, err := filepath.Abs(p); err == nil && exists(abs) {
			return abs
		}
		return ""
	}
	for _, p := range modulePaths {
		if exists(p) {
			return p
		}
	}
	return ""
}

func exists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// Available reports whether libsofthsm2.so is installed.
func Available() bool { return ModulePath() != "" }

// Token is a throw-away SoftHSM token with an AES-256 wrapping key.
type Token struct {
	Dir        string // the process's SoftHSM directory: softhsm2.conf and tokens/
	ConfPath   string // Dir/softhsm2.conf, the SOFTHSM2_CONF of this process
	Label      string // token label (may carry a "-N" suffix, see the package doc)
	PIN        string // user PIN, random
	KeyLabel   string // CKA_LABEL of the wrapping key, always KeyLabel
	ModulePath string // absolute path of libsofthsm2.so

	tokenDir string // Dir/tokens/<uuid>, removed by cleanup
}

// New creates a token labelled label (or label-N, see the package doc)
// holding an AES-256 wrapping key, and removes it when the test ends. It
// skips t if SoftHSM2 is not installed, unless KMSD_REQUIRE_SOFTHSM=1.
func New(t testing.TB, label string) *Token {
	t.Helper()
	if !Available() {
		if os.Getenv("KMSD_REQUIRE_SOFTHSM") == "1" {
			t.Fatal("softhsmtest: SoftHSM2 is required (KMSD_REQUIRE_SOFTHSM=1) but libsofthsm2.so was not found; install softhsm2 or set KMSD_SOFTHSM_MODULE")
		}
		t.Skip("softhsmtest: SoftHSM2 not installed (apt-get install softhsm2); set KMSD_REQUIRE_SOFTHSM=1 to fail instead")
	}
	if label == "" {
		label = "kmsd-test"
	}
	if len(label) > maxLabel-3 {
		t.Fatalf("softhsmtest: token label %q is longer than %d bytes", label, maxLabel-3)
	}
	tok, err := create(label)
	if err != nil {
		t.Fatalf("softhsmtest: %v", err)
	}
	t.Cleanup(func() {
		if err := remove(tok); err != nil {
			t.Errorf("softhsmtest: removing token %q: %v", tok.Label, err)
		}
	})
	return tok
}

// Config returns the hsm.Config that opens the token's wrapping key in
// this process.
func (tok *Token) Config() hsm.Config {
	return hsm.Config{ModulePath: tok.ModulePath, TokenLabel: tok.Label, PIN: tok.PIN, KeyLabel: tok.KeyLabel}
}

// Env returns the environment a child process needs to see the token:
// SOFTHSM2_CONF=ConfPath. Append it to os.Environ() (later entries win).
func (tok *Token) Env() []string { return []string{"SOFTHSM2_CONF=" + tok.ConfPath} }

// Open opens the token's wrapping key and closes it when the test ends.
func (tok *Token) Open(t testing.TB) *hsm.Module {
	t.Helper()
	m, err := hsm.Open(context.Background(), tok.Config())
	if err != nil {
		t.Fatalf("softhsmtest: %v", err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// randomPIN returns 16 random hex digits.
func randomPIN() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// uniqueLabel returns label, or label-N for the smallest N >= 2 not in use.
func uniqueLabel(label string, inUse map[string]*Token) string {
	candidate := label
	for n := 2; inUse[candidate] != nil; n++ {
		candidate = fmt.Sprintf("%s-%d", label, n)
	}
	return candidate
}

// procState is the process-wide SoftHSM set-up; see the package doc.
type procState struct {
	once   sync.Once
	err    error
	module string
	lib    *library

	mu   sync.Mutex // serializes token creation and removal
	dir  string
	conf string
	live map[string]*Token // by label
}

var proc procState
