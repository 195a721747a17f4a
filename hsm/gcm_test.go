package hsm

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
)

func TestWrapFormatAndRoundTrip(t *testing.T) {
	e := newFakeEnv(t)
	m := e.open(t)
	ctx := context.Background()
	for _, pt := range [][]byte{nil, []byte("k"), bytes.Repeat([]byte{7}, 32), bytes.Repeat([]byte{1}, 4096)} {
		ct, err := m.Wrap(ctx, pt, []byte("aad"))
		if err != nil {
			t.Fatal(err)
		}
		if len(ct) != ivSize+len(pt)+tagSize {
			t.Fatalf("len(wrap(%d bytes)) = %d, want %d", len(pt), len(ct), ivSize+len(pt)+tagSize)
		}
		// The format is iv || ct || tag of standard AES-GCM.
		want := e.key.aead.Seal(nil, ct[:ivSize], pt, []byte("aad"))
		if !bytes.Equal(ct[ivSize:], want) {
			t.Fatal("output is not iv || AES-GCM(ct||tag)")
		}
		got, err := m.Unwrap(ctx, ct, []byte("aad"))
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("Unwrap = %x, %v", got, err)
		}
	}
	a, _ := m.Wrap(ctx, []byte("same"), nil)
	b, _ := m.Wrap(ctx, []byte("same"), nil)
	if bytes.Equal(a[:ivSize], b[:ivSize]) {
		t.Fatal("two wraps used the same IV")
	}
}

func TestIVChosenByHSM(t *testing.T) {
	e := newFakeEnv(t)
	m := e.open(t)
	e.h.hsmIV = true
	ct, err := m.Wrap(context.Background(), []byte("rek"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := m.Unwrap(context.Background(), ct, []byte("aad"))
	if err != nil || string(got) != "rek" {
		t.Fatalf("Unwrap of a wrap with an HSM-chosen IV = %q, %v", got, err)
	}
	if _, _, _, alloc, freed, _ := e.h.counts(); alloc != freed {
		t.Fatalf("GCM params: %d allocated, %d freed", alloc, freed)
	}
}

func TestIVChangedButNotReportedIsCaught(t *testing.T) {
	e := newFakeEnv(t)
	m := e.open(t)
	e.h.hsmIVUnreported = true
	_, err := m.Wrap(context.Background(), []byte("rek"), nil)
	if err == nil || !strings.Contains(err.Error(), "does not decrypt back") {
		t.Fatalf("Wrap = %v, want the self-check to fail", err)
	}
	if errors.Is(err, ErrNotAuthentic) {
		t.Fatal("Wrap must never report ErrNotAuthentic")
	}
}

func TestUnwrapNotAuthentic(t *testing.T) {
	e := newFakeEnv(t)
	m := e.open(t)
	ctx := context.Background()
	ct, err := m.Wrap(ctx, []byte("root key"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte { c := bytes.Clone(ct); c[i] ^= 1; return c }
	tests := []struct {
		name string
		ct   []byte
		aad  []byte
	}{
		{"iv", flip(0), []byte("aad")},
		{"ciphertext", flip(ivSize), []byte("aad")},
		{"tag", flip(len(ct) - 1), []byte("aad")},
		{"aad", ct, []byte("aaX")},
		{"no aad", ct, nil},
		{"truncated", ct[:len(ct)-1], []byte("aad")},
		{"too short", ct[:ivSize+tagSize-1], []byte("aad")},
		{"empty", nil, []byte("aad")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := m.Unwrap(ctx, tt.ct, tt.aad)
			if !errors.Is(err, ErrNotAuthentic) {
				t.Fatalf("Unwrap = %v, want ErrNotAuthentic", err)
			}
			if !strings.HasPrefix(err.Error(), "hsm: unwrap: ") {
				t.Fatalf("error %q lacks the hsm: unwrap: prefix", err)
			}
		})
	}
	if _, opened, _, alloc, freed, _ := e.h.counts(); opened != 1 || alloc != freed {
		t.Fatalf("after failures: %d sessions opened (want 1: a tag mismatch is no broken session), params %d/%d", opened, alloc, freed)
	}
}

func TestTagMismatchCodes(t *testing.T) {
	tests := []struct {
		code      uint
		deadSess  bool
		authentic bool // want ErrNotAuthentic
		wantCode  uint // the pkcs11 code the error must wrap
	}{
		{pkcs11.CKR_GENERAL_ERROR, false, true, pkcs11.CKR_GENERAL_ERROR}, // SoftHSM 2.6
		{pkcs11.CKR_ENCRYPTED_DATA_INVALID, false, true, pkcs11.CKR_ENCRYPTED_DATA_INVALID},
		{pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, false, true, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE},
		{pkcs11.CKR_FUNCTION_FAILED, false, true, pkcs11.CKR_FUNCTION_FAILED},
		{ckrAEADDecryptFailed, false, true, ckrAEADDecryptFailed},
		// The device is failing, not the tag: the retry cannot even open a session.
		{pkcs11.CKR_GENERAL_ERROR, true, false, pkcs11.CKR_DEVICE_ERROR},
		{pkcs11.CKR_DEVICE_ERROR, false, false, pkcs11.CKR_DEVICE_ERROR},
	}
	for _, tt := range tests {
		t.Run(pkcs11.Error(tt.code).Error(), func(t *testing.T) {
			e := newFakeEnv(t)
			m := e.open(t)
			ct, err := m.Wrap(context.Background(), []byte("x"), nil)
			if err != nil {
				t.Fatal(err)
			}
			e.h.fail("Decrypt", pkcs11.Error(tt.code), pkcs11.Error(tt.code))
			e.h.badSessInfo = tt.deadSess
			_, err = m.Unwrap(context.Background(), ct, nil)
			if got := errors.Is(err, ErrNotAuthentic); got != tt.authentic {
				t.Fatalf("Unwrap = %v; ErrNotAuthentic = %v, want %v", err, got, tt.authentic)
			}
			if !hasCode(err, tt.wantCode) {
				t.Fatalf("Unwrap = %v; the pkcs11 code is not wrapped", err)
			}
		})
	}
}

func TestParamsFreedOnEveryPath(t *testing.T) {
	e := newFakeEnv(t)
	m := e.open(t)
	ctx := context.Background()
	ct, _ := m.Wrap(ctx, []byte("x"), nil)
	e.h.fail("Encrypt", pkcs11.Error(pkcs11.CKR_DATA_LEN_RANGE))
	_, _ = m.Wrap(ctx, []byte("x"), nil)
	e.h.fail("Decrypt", pkcs11.Error(pkcs11.CKR_ENCRYPTED_DATA_INVALID))
	_, _ = m.Unwrap(ctx, ct, nil)
	_, _ = m.Unwrap(ctx, ct, []byte("wrong"))
	e.h.fail("Encrypt", pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID))
	_, _ = m.Wrap(ctx, []byte("x"), nil)
	if _, _, _, alloc, freed, _ := e.h.counts(); alloc == 0 || alloc != freed {
		t.Fatalf("GCM params: %d allocated, %d freed", alloc, freed)
	}
}

func TestKeyID(t *testing.T) {
	e := newFakeEnv(t)
	e.h.mu.Lock()
	e.key.attrs[pkcs11.CKA_ID] = []byte{0xab, 0xcd}
	e.h.mu.Unlock()
	m := e.open(t)
	id := m.KeyID()
	if !strings.HasPrefix(id, "pkcs11:token=tok;object=wrap;id=abcd;kcv=") || len(id) != len("pkcs11:token=tok;object=wrap;id=abcd;kcv=")+6 {
		t.Fatalf("KeyID = %q", id)
	}
	// The KCV is AES-GCM(zero block) under the fixed IV and AAD.
	want := e.key.aead.Seal(nil, kcvIV, make([]byte, 16), kcvAAD)[:3]
	if !strings.HasSuffix(id, "kcv="+hexs(want)) {
		t.Fatalf("KeyID %q does not end in the GCM KCV %x", id, want)
	}
	if m.Mechanism() != "CKM_AES_GCM" {
		t.Fatal(m.Mechanism())
	}
	// Stable across opens.
	m2 := e.open(t)
	if m2.KeyID() != id {
		t.Fatalf("KeyID changed between opens: %q, %q", id, m2.KeyID())
	}
	// Another key under the same labels on another module differs.
	e2 := newFakeEnv(t)
	e2.cfg.ModulePath += ".2"
	if other := e2.open(t).KeyID(); other == id {
		t.Fatal("two different keys got the same KeyID")
	}
}

func TestKeyIDFallsBackToCheckValue(t *testing.T) {
	e := newFakeEnv(t)
	e.h.hsmIV = true // the HSM ignores the fixed KCV IV
	m := e.open(t)
	if cv := e.key.attrs[pkcs11.CKA_CHECK_VALUE]; !strings.HasSuffix(m.KeyID(), ";kcv="+hexs(cv)) {
		t.Fatalf("KeyID %q does not use CKA_CHECK_VALUE %x", m.KeyID(), cv)
	}
	e.h.mu.Lock()
	delete(e.key.attrs, pkcs11.CKA_CHECK_VALUE)
	e.h.mu.Unlock()
	if id := e.open(t).KeyID(); !strings.HasSuffix(id, ";kcv=") {
		t.Fatalf("KeyID %q: want an empty kcv without any way to compute one", id)
	}
}

func TestPctEncode(t *testing.T) {
	tests := map[string]string{
		"kmsd-node1": "kmsd-node1",
		"a;b=c":      "a%3Bb%3Dc",
		"50%":        "50%25",
		"my key":     "my%20key",
		"ü":          "%C3%BC",
	}
	for in, want := range tests {
		if got := pctEncode(in); got != want {
			t.Errorf("pctEncode(%q) = %q, want %q", in, got, want)
		}
	}
}

func hexs(b []byte) string { return hex.EncodeToString(b) }
