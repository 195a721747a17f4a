package seal

import (
	"errors"
	"fmt"

	"github.com/kmsd/kmsd/seal/shamir"
)

// Break-glass recovery shares (design.md §2): the REK split M of N with
// Shamir's scheme (package shamir), so that a cluster whose every HSM key
// is lost can be recovered from a snapshot. The shares' group label is the
// first RecoveryGroupLen hex digits of the REK id: a share names the
// cluster it belongs to. The REK itself never leaves this package: it
// goes into shamir.Split and comes back out of shamir.Combine only here.

// RecoveryGroupLen is how many hex digits of the REK id a recovery share
// carries (its shamir group label).
const RecoveryGroupLen = 8

// ErrRecoveryShares is returned by RecoverKeyring when shares are not of
// the wanted REK: their label names another REK, or they combine to a
// REK with another id (a wrong share, or shares of different splits).
// Too few shares are shamir.ErrTooFewShares.
var ErrRecoveryShares = errors.New("seal: recovery shares do not recover the root key")

// SplitRecovery splits the REK into n recovery shares, any m of which
// recover it (RecoverKeyring); 2 <= m <= n <= 255. The caller prints them
// for the operator once and destroys them; they are never stored.
func (kr *Keyring) SplitRecovery(n, m int) ([]*shamir.Share, error) {
	var rek [rekSize]byte
	defer clear(rek[:])
	if err := kr.copyREK(&rek); err != nil {
		return nil, err
	}
	shares, err := shamir.Split(kr.id[:RecoveryGroupLen], rek[:], n, m)
	if err != nil {
		return nil, fmt.Errorf("seal: recovery shares: %w", err)
	}
	return shares, nil
}

// RecoverKeyring combines recovery shares into the REK and returns it as a
// Keyring, only if its id is wantREKID (the REK id a snapshot names).
// Errors: ErrRecoveryShares (a share of another REK, or the shares do not
// combine to wantREKID's REK), shamir.ErrTooFewShares (the text says how
// many are needed), shamir.ErrDuplicateShare, shamir.ErrMismatch. It does
// not destroy the shares.
func RecoverKeyring(shares []*shamir.Share, wantREKID string) (*Keyring, error) {
	if len(wantREKID) != 2*rekIDSize {
		return nil, fmt.Errorf("%w: REK id %q is not %d hex digits", ErrRecoveryShares, wantREKID, 2*rekIDSize)
	}
	group := wantREKID[:RecoveryGroupLen]
	for _, s := range shares {
		if s != nil && s.Group() != group {
			return nil, fmt.Errorf("%w: share %d belongs to root key %s…, not %s", ErrRecoveryShares, s.X(), s.Group(), wantREKID)
		}
	}
	rek, err := shamir.Combine(shares)
	if err != nil {
		return nil, fmt.Errorf("seal: recovery shares: %w", err)
	}
	defer clear(rek)
	if len(rek) != rekSize {
		return nil, fmt.Errorf("%w: the shares hold %d bytes, a root key has %d", ErrRecoveryShares, len(rek), rekSize)
	}
	kr, err := newKeyring(rek)
	if err != nil {
		return nil, err
	}
	if kr.id != wantREKID {
		kr.Destroy()
		return nil, fmt.Errorf("%w: the %d shares combine to another key than root key %s: at least one share is wrong or from another split",
			ErrRecoveryShares, len(shares), wantREKID)
	}
	return kr, nil
}
