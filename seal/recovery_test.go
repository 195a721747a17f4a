package seal

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/seal/shamir"
)

// combos returns every k-element subset of {0..n-1}.
func combos(n, k int) [][]int {
	var out [][]int
	var rec func(start int, cur []int)
	rec = func(start int, cur []int) {
		if len(cur) == k {
			out = append(out, append([]int(nil), cur...))
			return
		}
		for i := start; i < n; i++ {
			rec(i+1, append(cur, i))
		}
	}
	rec(0, nil)
	return out
}

func TestRecoveryShares(t *testing.T) {
	kr, st, _ := testKeyring(t)
	shares, err := kr.SplitRecovery(5, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range shares {
		if s.Group() != kr.ID()[:RecoveryGroupLen] || s.Threshold() != 3 {
			t.Fatalf("share %v: want group %s, threshold 3", s, kr.ID()[:RecoveryGroupLen])
		}
	}
	// Every 3 of 5 (and more) recover the REK; the recovered keyring
	// opens what the original sealed.
	sealed, err := kr.SealKey("k", 1, mustKey(t, AES256, make([]byte, 32)))
	if err != nil {
		t.Fatal(err)
	}
	for k := 3; k <= 5; k++ {
		for _, c := range combos(5, k) {
			var sub []*shamir.Share
			for _, i := range c {
				sub = append(sub, shares[i])
			}
			got, err := RecoverKeyring(sub, st.REKID)
			if err != nil {
				t.Fatalf("shares %v: %v", c, err)
			}
			if got.ID() != kr.ID() || *got.rek != *kr.rek {
				t.Fatalf("shares %v recovered another REK", c)
			}
			if _, err := got.OpenKey("k", 1, sealed); err != nil {
				t.Fatalf("recovered keyring cannot open a sealed key: %v", err)
			}
			got.Destroy()
		}
	}
	// Two of five: too few, and the message says how many are needed.
	for _, c := range combos(5, 2) {
		_, err := RecoverKeyring([]*shamir.Share{shares[c[0]], shares[c[1]]}, st.REKID)
		if !errors.Is(err, shamir.ErrTooFewShares) || !strings.Contains(err.Error(), "2 of 3") {
			t.Fatalf("shares %v: %v, want ErrTooFewShares (2 of 3)", c, err)
		}
	}
}

func TestRecoverKeyringErrors(t *testing.T) {
	kr, st, _ := testKeyring(t)
	shares, err := kr.SplitRecovery(3, 2)
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := Init(context.Background(), testSealer(t, 2, "hsm-key-2"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Destroy()
	otherShares, _ := other.SplitRecovery(3, 2)
	again, _ := kr.SplitRecovery(3, 2) // a second split of the same REK

	for i, tc := range []struct {
		shares []*shamir.Share
		rekID  string
		want   error
	}{
		{shares[:2], other.ID(), ErrRecoveryShares},                                 // another cluster's REK id
		{[]*shamir.Share{shares[0], otherShares[1]}, st.REKID, ErrRecoveryShares},   // a share of another REK
		{otherShares[:2], st.REKID, ErrRecoveryShares},                              // all of another REK
		{[]*shamir.Share{shares[0], again[1]}, st.REKID, ErrRecoveryShares},         // splits mixed: wrong REK, caught by the id
		{[]*shamir.Share{shares[0], shares[0]}, st.REKID, shamir.ErrDuplicateShare}, // the same share twice
		{shares[:1], st.REKID, shamir.ErrTooFewShares},
		{nil, st.REKID, shamir.ErrTooFewShares},
		{shares[:2], "abc", ErrRecoveryShares},
	} {
		got, err := RecoverKeyring(tc.shares, tc.rekID)
		if !errors.Is(err, tc.want) || got != nil {
			t.Errorf("Test %d: RecoverKeyring = %v, %v; want %v", i, got, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "kmsd-share-v1") {
			t.Errorf("Test %d: the error quotes a share: %v", i, err)
		}
	}
	kr.Destroy()
	if _, err := kr.SplitRecovery(3, 2); !errors.Is(err, ErrSealed) {
		t.Errorf("SplitRecovery after Destroy: %v, want ErrSealed", err)
	}
	if _, err := kr.SplitRecovery(2, 3); err == nil {
		t.Error("SplitRecovery(2, 3) succeeded")
	}
}

// TestRecoverySharesText: the text form round-trips through the
// operator's hands (upper case, white space) and still recovers the REK.
func TestRecoverySharesText(t *testing.T) {
	kr, st, _ := testKeyring(t)
	shares, err := kr.SplitRecovery(4, 2)
	if err != nil {
		t.Fatal(err)
	}
	var parsed []*shamir.Share
	for _, s := range shares[2:] {
		text, err := s.AppendSecret(nil)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(text), "kmsd-share-v1-"+kr.ID()[:8]+"-2-") {
			t.Fatalf("share text does not start with the REK id prefix and threshold: %.30s…", text)
		}
		p, err := shamir.ParseShare([]byte("  " + strings.ToUpper(string(text)) + "\n"))
		if err != nil {
			t.Fatal(err)
		}
		parsed = append(parsed, p)
	}
	got, err := RecoverKeyring(parsed, st.REKID)
	if err != nil {
		t.Fatal(err)
	}
	got.Destroy()
}
