package hsm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
)

func TestOpenErrors(t *testing.T) {
	tests := []struct {
		name  string
		setup func(e *fakeEnv)
		want  error  // sentinel, or nil for "no sentinel"
		text  string // must appear in the message
	}{
		{"relative module path", func(e *fakeEnv) { e.cfg.ModulePath = "libsofthsm2.so" },
			ErrModuleNotFound, `module path "libsofthsm2.so" is not absolute`},
		{"module missing", func(e *fakeEnv) {
			e.load = func(p string) (p11, error) { return nil, fmt.Errorf("module %s not found", p) }
		}, ErrModuleNotFound, "not found"},
		{"token missing", func(e *fakeEnv) { e.cfg.TokenLabel = "kmsd-node1" },
			ErrTokenNotFound, `token "kmsd-node1" not found in module /fake/`},
		{"token list", func(e *fakeEnv) { e.h.addToken("other", "x"); e.cfg.TokenLabel = "nope" },
			ErrTokenNotFound, "(tokens present: tok, other)"},
		{"token label twice", func(e *fakeEnv) { e.h.addToken("tok", "1234") },
			ErrTokenNotFound, `2 tokens are labelled "tok"`},
		{"wrong PIN", func(e *fakeEnv) { e.cfg.PIN = "9999" },
			ErrPINIncorrect, `login to token "tok" failed: user PIN incorrect`},
		{"PIN length", func(e *fakeEnv) { e.h.fail("Login", pkcs11.Error(pkcs11.CKR_PIN_LEN_RANGE)) },
			ErrPINIncorrect, "CKR_PIN_LEN_RANGE"},
		{"PIN locked at login", func(e *fakeEnv) { e.h.fail("Login", pkcs11.Error(pkcs11.CKR_PIN_LOCKED)) },
			ErrPINLocked, "locked"},
		{"PIN locked flag", func(e *fakeEnv) { e.tok.flags |= pkcs11.CKF_USER_PIN_LOCKED },
			ErrPINLocked, "locked"},
		{"no PIN", func(e *fakeEnv) { e.cfg.PIN = "" }, ErrPINIncorrect, "no user PIN"},
		{"key missing", func(e *fakeEnv) { e.cfg.KeyLabel = "nokey" },
			ErrKeyNotFound, `no AES secret key labelled "nokey" on token "tok"`},
		{"key twice", func(e *fakeEnv) { e.h.addKey(e.tok, "wrap"); e.h.addKey(e.tok, "wrap") },
			nil, `3 AES secret keys are labelled "wrap"`},
		{"key extractable", oddKey(pkcs11.CKA_EXTRACTABLE, true), nil, "is extractable"},
		{"key AES-128", oddKey(pkcs11.CKA_VALUE_LEN, 16), nil, "not an AES-256 key"},
		{"key cannot decrypt", oddKey(pkcs11.CKA_DECRYPT, false), nil, "cannot decrypt"},
		{"key not sensitive", oddKey(pkcs11.CKA_SENSITIVE, false), nil, "is not sensitive"},
		{"negative MaxSessions", func(e *fakeEnv) { e.cfg.MaxSessions = -1 }, nil, "MaxSessions is -1"},
		{"initialize fails", func(e *fakeEnv) { e.h.initErr = pkcs11.Error(pkcs11.CKR_GENERAL_ERROR) },
			nil, "C_Initialize of module"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newFakeEnv(t)
			tt.setup(e)
			m, err := open(context.Background(), e.cfg, e.load)
			if err == nil {
				_ = m.Close()
				t.Fatal("open succeeded")
			}
			for _, s := range []error{ErrModuleNotFound, ErrTokenNotFound, ErrPINIncorrect, ErrPINLocked, ErrKeyNotFound} {
				if errors.Is(err, s) != (s == tt.want) {
					t.Errorf("errors.Is(%v, %v) = %v", err, s, !(s == tt.want))
				}
			}
			if !strings.HasPrefix(err.Error(), "hsm: open: ") || !strings.Contains(err.Error(), tt.text) {
				t.Errorf("error %q: want prefix %q and %q", err, "hsm: open: ", tt.text)
			}
			if strings.Contains(err.Error(), "9999") || strings.Contains(err.Error(), "1234") {
				t.Errorf("error %q contains a PIN", err)
			}
			if open, _, _, _, _, _ := e.h.counts(); open != 0 {
				t.Errorf("%d sessions left open after a failed Open", open)
			}
		})
	}
}

// oddKey makes the configured key one with attribute typ set to v.
func oddKey(typ uint, v any) func(*fakeEnv) {
	return func(e *fakeEnv) {
		e.cfg.KeyLabel = "odd"
		e.h.addKey(e.tok, "odd", pkcs11.NewAttribute(typ, v))
	}
}

func TestUnreadableSlotsAreSkipped(t *testing.T) {
	e := newFakeEnv(t)
	e.h.addToken("second", "1")
	e.h.tokens[0], e.h.tokens[1] = e.h.tokens[1], e.h.tokens[0] // tok is slot 1
	e.h.fail("GetTokenInfo", pkcs11.Error(pkcs11.CKR_GENERAL_ERROR))
	e.open(t)
}

func TestLoginOnceAcrossModules(t *testing.T) {
	e := newFakeEnv(t)
	a := e.open(t)
	b := e.open(t) // same token: already logged in, no second C_Login succeeds
	if _, _, _, _, _, logins := e.h.counts(); logins != 1 {
		t.Fatalf("C_Login called %d times for two Modules on one token", logins)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	// Closing a must not log b out.
	if _, err := b.Wrap(context.Background(), []byte("x"), nil); err != nil {
		t.Fatalf("Wrap on b after a closed: %v", err)
	}
}

func TestModuleRefCount(t *testing.T) {
	e := newFakeEnv(t)
	a := e.open(t)
	b := e.open(t)
	if e.h.initCalls != 1 {
		t.Fatalf("C_Initialize called %d times", e.h.initCalls)
	}
	_ = a.Close()
	if e.h.finalCalls != 0 {
		t.Fatal("C_Finalize called while a Module is open")
	}
	if err := GenerateKeyWith(e, "other"); err != nil {
		t.Fatal(err)
	}
	_ = b.Close()
	if e.h.finalCalls != 1 {
		t.Fatalf("C_Finalize called %d times after the last Close, want 1", e.h.finalCalls)
	}
	c := e.open(t) // initializes again
	_ = c.Close()
	if e.h.initCalls != 2 || e.h.finalCalls != 2 {
		t.Fatalf("init %d, finalize %d; want 2, 2", e.h.initCalls, e.h.finalCalls)
	}
}

func TestNoFinalizeWhenInitializedElsewhere(t *testing.T) {
	e := newFakeEnv(t)
	e.h.initErr = pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)
	m := e.open(t)
	_ = m.Close()
	if e.h.finalCalls != 0 {
		t.Fatal("finalized a module this package did not initialize")
	}
}

func GenerateKeyWith(e *fakeEnv, label string) error {
	cfg := e.cfg
	cfg.KeyLabel = label
	return generateKey(context.Background(), cfg, e.load)
}

func TestGenerateKey(t *testing.T) {
	e := newFakeEnv(t)
	if err := GenerateKeyWith(e, "new"); err != nil {
		t.Fatal(err)
	}
	k := e.tok.keys[len(e.tok.keys)-1]
	want := map[uint][]byte{
		pkcs11.CKA_TOKEN: {1}, pkcs11.CKA_PRIVATE: {1}, pkcs11.CKA_SENSITIVE: {1}, pkcs11.CKA_EXTRACTABLE: {0},
		pkcs11.CKA_ENCRYPT: {1}, pkcs11.CKA_DECRYPT: {1}, pkcs11.CKA_WRAP: {0}, pkcs11.CKA_UNWRAP: {0},
		pkcs11.CKA_SIGN: {0}, pkcs11.CKA_VERIFY: {0}, pkcs11.CKA_DERIVE: {0}, pkcs11.CKA_LABEL: []byte("new"),
	}
	for a, v := range want {
		if !bytes.Equal(k.attrs[a], v) {
			t.Errorf("attribute %#x = %x, want %x", a, k.attrs[a], v)
		}
	}
	if len(k.attrs[pkcs11.CKA_ID]) != 8 {
		t.Errorf("CKA_ID = %x, want 8 random bytes", k.attrs[pkcs11.CKA_ID])
	}
	cfg := e.cfg
	cfg.KeyLabel = "new"
	m, err := open(context.Background(), cfg, e.load)
	if err != nil {
		t.Fatalf("open the generated key: %v", err)
	}
	_ = m.Close()
	if err := GenerateKeyWith(e, "new"); !errors.Is(err, ErrKeyExists) || !strings.HasPrefix(err.Error(), "hsm: generate key: ") {
		t.Fatalf("second GenerateKey = %v, want ErrKeyExists", err)
	}
	e.cfg.PIN = "bad"
	if err := GenerateKeyWith(e, "x"); !errors.Is(err, ErrPINIncorrect) {
		t.Fatalf("GenerateKey with a bad PIN = %v", err)
	}
}

func TestConfigHidesPIN(t *testing.T) {
	const pin = "s3cr3t-PIN"
	cfg := Config{ModulePath: "/m.so", TokenLabel: "tok", PIN: pin, KeyLabel: "k", MaxSessions: 2}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("hsm", "cfg", cfg)
	slog.New(slog.NewTextHandler(&buf, nil)).Info("hsm", "cfg", cfg)
	fmt.Fprintf(&buf, "%v %+v %#v %s", cfg, cfg, cfg, cfg)
	if strings.Contains(buf.String(), pin) {
		t.Fatalf("PIN leaked: %s", buf.String())
	}
	if !strings.Contains(buf.String(), `"pin_set":true`) || !strings.Contains(buf.String(), `"token":"tok"`) {
		t.Fatalf("log output lacks fields: %s", buf.String())
	}
}

func TestReadPIN(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	lf, crlf, bare, two, empty := write("lf", "1234\n"), write("crlf", "1234\r\n"), write("bare", "1234"), write("two", "1234\n\n"), write("empty", "\n")
	t.Setenv("KMSD_TEST_PIN", "from-env")
	t.Setenv("KMSD_TEST_EMPTY", "")
	tests := []struct {
		name, env, file, want string
		fails                 bool
	}{
		{"env wins", "KMSD_TEST_PIN", lf, "from-env", false},
		{"env only", "KMSD_TEST_PIN", "", "from-env", false},
		{"empty env falls back to file", "KMSD_TEST_EMPTY", lf, "1234", false},
		{"unset env falls back to file", "KMSD_TEST_UNSET", crlf, "1234", false},
		{"file without newline", "", bare, "1234", false},
		{"only one newline trimmed", "", two, "1234\n", false},
		{"empty file", "", empty, "", true},
		{"missing file", "", filepath.Join(dir, "nope"), "", true},
		{"nothing configured", "", "", "", true},
		{"unset env, no file", "KMSD_TEST_UNSET", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadPIN(tt.env, tt.file)
			if (err != nil) != tt.fails || got != tt.want {
				t.Fatalf("ReadPIN = %q, %v", got, err)
			}
			if err != nil && (strings.Contains(err.Error(), "1234") || strings.Contains(err.Error(), "from-env")) {
				t.Fatalf("error contains the PIN: %v", err)
			}
		})
	}
}
