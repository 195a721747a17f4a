package hsm_test

// Integration tests against real SoftHSM2. They run in the normal
// `go test` and skip only when SoftHSM2 is not installed (they fail
// instead with KMSD_REQUIRE_SOFTHSM=1).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/kmsd/kmsd/hsm"
	"github.com/kmsd/kmsd/internal/softhsmtest"
)

// sealer mirrors seal.Sealer (seal/contract). The real compile-time
// assertion `var _ seal.Sealer = (*hsm.Module)(nil)` belongs in cmd/kmsd;
// this copy keeps hsm's tests independent of seal's build state.
type sealer interface {
	KeyID() string
	Mechanism() string
	Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, error)
	Unwrap(ctx context.Context, ciphertext, aad []byte) ([]byte, error)
}

var _ sealer = (*hsm.Module)(nil)

func TestMain(m *testing.M) {
	if os.Getenv("KMSD_HSM_TEST_CHILD") == "1" {
		os.Exit(child())
	}
	os.Exit(m.Run())
}

var keyIDPattern = regexp.MustCompile(`^pkcs11:token=[^;]+;object=[^;]+;id=[0-9a-f]*;kcv=[0-9a-f]{6}$`)

func TestSoftHSMRoundTrip(t *testing.T) {
	tok := softhsmtest.New(t, "hsm-roundtrip")
	m := tok.Open(t)
	ctx := context.Background()
	if err := m.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	t.Log(m.KeyID())
	if !keyIDPattern.MatchString(m.KeyID()) || !strings.Contains(m.KeyID(), "token=hsm-roundtrip;object=kmsd-wrapping-key;") {
		t.Fatalf("KeyID = %q", m.KeyID())
	}
	if m.Mechanism() != "CKM_AES_GCM" {
		t.Fatal(m.Mechanism())
	}
	rek := bytes.Repeat([]byte{0x42}, 32)
	for _, aad := range [][]byte{nil, []byte("kmsd REK v1")} {
		ct, err := m.Wrap(ctx, rek, aad)
		if err != nil {
			t.Fatal(err)
		}
		if len(ct) != 12+32+16 || bytes.Contains(ct, rek[:8]) {
			t.Fatalf("wrapped = %x", ct)
		}
		pt, err := m.Unwrap(ctx, ct, aad)
		if err != nil || !bytes.Equal(pt, rek) {
			t.Fatalf("Unwrap = %x, %v", pt, err)
		}
	}
	// A second Module on the same token shares the login and the key.
	m2 := tok.Open(t)
	ct, _ := m.Wrap(ctx, rek, nil)
	if pt, err := m2.Unwrap(ctx, ct, nil); err != nil || !bytes.Equal(pt, rek) {
		t.Fatalf("Unwrap on a second Module = %x, %v", pt, err)
	}
	if m2.KeyID() != m.KeyID() {
		t.Fatalf("KeyID not stable: %q vs %q", m.KeyID(), m2.KeyID())
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Wrap(ctx, rek, nil); !errors.Is(err, hsm.ErrClosed) {
		t.Fatalf("Wrap after Close = %v", err)
	}
	if err := m2.Ping(ctx); err != nil {
		t.Fatalf("closing one Module broke the other: %v", err)
	}
}

func TestSoftHSMNotAuthentic(t *testing.T) {
	tok := softhsmtest.New(t, "hsm-tamper")
	m := tok.Open(t)
	other := softhsmtest.New(t, "hsm-tamper-other").Open(t)
	ctx := context.Background()
	aad := []byte("aad")
	ct, err := m.Wrap(ctx, []byte("0123456789abcdef0123456789abcdef"), aad)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte { c := bytes.Clone(ct); c[i] ^= 0x80; return c }
	tests := []struct {
		name string
		m    *hsm.Module
		ct   []byte
		aad  []byte
	}{
		{"iv", m, flip(0), aad},
		{"ciphertext", m, flip(20), aad},
		{"tag", m, flip(len(ct) - 1), aad},
		{"aad changed", m, ct, []byte("aaX")},
		{"aad dropped", m, ct, nil},
		{"truncated", m, ct[:len(ct)-4], aad},
		{"extended", m, append(bytes.Clone(ct), 0), aad},
		{"shorter than iv+tag", m, ct[:20], aad},
		{"other key", other, ct, aad},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pt, err := tt.m.Unwrap(ctx, tt.ct, tt.aad)
			if !errors.Is(err, hsm.ErrNotAuthentic) || pt != nil {
				t.Fatalf("Unwrap = %x, %v; want ErrNotAuthentic", pt, err)
			}
			t.Log(err)
		})
	}
	if err := m.Ping(ctx); err != nil {
		t.Fatalf("after tag failures: %v", err)
	}
	if pt, err := m.Unwrap(ctx, ct, aad); err != nil || len(pt) != 32 {
		t.Fatalf("the original no longer unwraps: %v", err)
	}
}

func TestSoftHSMOpenErrors(t *testing.T) {
	tok := softhsmtest.New(t, "hsm-errors")
	notALib := filepath.Join(t.TempDir(), "libfake.so")
	if err := os.WriteFile(notALib, []byte("not an ELF file"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		change func(*hsm.Config)
		want   error
		text   string
	}{
		{"wrong PIN", func(c *hsm.Config) { c.PIN = "wrong-pin" }, hsm.ErrPINIncorrect, "user PIN incorrect"},
		{"short PIN", func(c *hsm.Config) { c.PIN = "1" }, hsm.ErrPINIncorrect, "user PIN incorrect"},
		{"missing module", func(c *hsm.Config) { c.ModulePath = "/nonexistent/libnope.so" }, hsm.ErrModuleNotFound, "/nonexistent/libnope.so not found"},
		{"not a module", func(c *hsm.Config) { c.ModulePath = notALib }, hsm.ErrModuleNotFound, "could not be loaded"},
		{"relative module", func(c *hsm.Config) { c.ModulePath = "libsofthsm2.so" }, hsm.ErrModuleNotFound, "not absolute"},
		{"unknown token", func(c *hsm.Config) { c.TokenLabel = "kmsd-node9" }, hsm.ErrTokenNotFound,
			fmt.Sprintf(`token "kmsd-node9" not found in module %s (tokens present: `, tok.ModulePath)},
		{"unknown key", func(c *hsm.Config) { c.KeyLabel = "no-such-key" }, hsm.ErrKeyNotFound, `no AES secret key labelled "no-such-key"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tok.Config()
			tt.change(&cfg)
			m, err := hsm.Open(context.Background(), cfg)
			if err == nil {
				_ = m.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.text) || !strings.HasPrefix(err.Error(), "hsm: open: ") {
				t.Fatalf("Open = %q; want %v and %q", err, tt.want, tt.text)
			}
			if strings.Contains(err.Error(), tok.PIN) || strings.Contains(err.Error(), "wrong-pin") {
				t.Fatalf("error contains a PIN: %v", err)
			}
			t.Log(err)
		})
	}
	// Nothing above left a login or session behind: the right PIN works.
	tok.Open(t)
}

func TestSoftHSMConcurrentWraps(t *testing.T) {
	tok := softhsmtest.New(t, "hsm-concurrent")
	cfg := tok.Config()
	cfg.MaxSessions = 4
	m, err := hsm.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	const goroutines, wraps = 64, 50
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for i := range wraps {
				pt := fmt.Appendf(nil, "rek %02d/%02d", g, i)
				ct, err := m.Wrap(ctx, pt, []byte("aad"))
				if err != nil {
					errs <- err
					return
				}
				if i%10 == 0 {
					if got, err := m.Unwrap(ctx, ct, []byte("aad")); err != nil || !bytes.Equal(got, pt) {
						errs <- fmt.Errorf("unwrap: %q, %v", got, err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestSoftHSMKeyIDDistinguishesKeys(t *testing.T) {
	// Two tokens, each with a key labelled kmsd-wrapping-key: only the
	// KCV (and CKA_ID) tell the keys apart.
	a := softhsmtest.New(t, "hsm-keyid-a").Open(t).KeyID()
	b := softhsmtest.New(t, "hsm-keyid-b").Open(t).KeyID()
	kcv := func(id string) string { return id[strings.LastIndex(id, ";kcv="):] }
	idPart := func(id string) string { return id[strings.Index(id, ";id="):] }
	if a == b || kcv(a) == kcv(b) || idPart(a) == idPart(b) {
		t.Fatalf("KeyIDs do not distinguish the keys: %q, %q", a, b)
	}
}

func TestSoftHSMGenerateKey(t *testing.T) {
	tok := softhsmtest.New(t, "hsm-genkey")
	cfg := tok.Config()
	if err := hsm.GenerateKey(context.Background(), cfg); !errors.Is(err, hsm.ErrKeyExists) {
		t.Fatalf("GenerateKey over an existing key = %v", err)
	}
	cfg.KeyLabel = "second"
	if err := hsm.GenerateKey(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	m, err := hsm.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	first := tok.Open(t)
	if m.KeyID() == first.KeyID() {
		t.Fatal("two keys on one token share a KeyID")
	}
	ct, _ := m.Wrap(context.Background(), []byte("x"), nil)
	if _, err := first.Unwrap(context.Background(), ct, nil); !errors.Is(err, hsm.ErrNotAuthentic) {
		t.Fatalf("Unwrap with the other key = %v", err)
	}
}
