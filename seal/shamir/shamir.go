package shamir

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
)

const (
	// MaxShares is the largest N: x coordinates are the non-zero bytes.
	MaxShares = 255
	// MaxSecretSize bounds the secret (and so every share's y).
	MaxSecretSize = 1024
	// maxGroup bounds the length of a group label (hex characters).
	maxGroup = 64
)

// Errors. Compare with errors.Is; the texts never contain share values.
var (
	// ErrParams: N, M, the secret's size or the group label are out of
	// range.
	ErrParams = errors.New("shamir: invalid parameters")
	// ErrTooFewShares: fewer distinct shares than the threshold M.
	ErrTooFewShares = errors.New("shamir: too few shares")
	// ErrDuplicateShare: two shares with the same x coordinate.
	ErrDuplicateShare = errors.New("shamir: duplicate share")
	// ErrMismatch: the shares are not of one split (different group
	// label, threshold or length).
	ErrMismatch = errors.New("shamir: shares do not belong together")
	// ErrFormat: a share text is malformed or of an unknown version.
	ErrFormat = errors.New("shamir: malformed share")
	// ErrChecksum: a share text's checksum does not match (a typo).
	ErrChecksum = errors.New("shamir: share checksum mismatch (a typo?)")
	// ErrDestroyed: the share was destroyed.
	ErrDestroyed = errors.New("shamir: share destroyed")
)

// Split splits secret into n shares of which any m recover it (Combine)
// and any m-1 reveal nothing about it. 2 <= m <= n <= 255; secret is 1 to
// MaxSecretSize bytes. group is a label of 1 to 64 lowercase hex digits
// carried by every share (kmsd: a prefix of the REK id); Combine refuses
// to mix groups. The coefficients come from crypto/rand. The caller still
// owns secret; destroy the shares when done.
func Split(group string, secret []byte, n, m int) ([]*Share, error) {
	return split(rand.Reader, group, secret, n, m)
}

// split is Split with the coefficients read from r (golden vectors).
func split(r io.Reader, group string, secret []byte, n, m int) ([]*Share, error) {
	if err := checkParams(group, len(secret), n, m); err != nil {
		return nil, err
	}
	shares := make([]*Share, n)
	for i := range shares {
		shares[i] = &Share{group: group, threshold: m, x: byte(i + 1), y: make([]byte, len(secret))}
	}
	// One random polynomial of degree m-1 per secret byte, constant term
	// = that byte. Coefficients are uniform over GF(2^8), zero included:
	// that is what makes m-1 points independent of the constant term.
	coef := make([]byte, m-1)
	defer clear(coef)
	for b, s := range secret {
		if _, err := io.ReadFull(r, coef); err != nil {
			for _, sh := range shares {
				sh.Destroy()
			}
			return nil, fmt.Errorf("shamir: split: %w", err)
		}
		for _, sh := range shares {
			sh.y[b] = eval(s, coef, sh.x)
		}
	}
	return shares, nil
}

func checkParams(group string, size, n, m int) error {
	switch {
	case m < 2:
		return fmt.Errorf("%w: threshold %d, want at least 2", ErrParams, m)
	case n < m:
		return fmt.Errorf("%w: %d shares with threshold %d, want shares >= threshold", ErrParams, n, m)
	case n > MaxShares:
		return fmt.Errorf("%w: %d shares, at most %d", ErrParams, n, MaxShares)
	case size < 1 || size > MaxSecretSize:
		return fmt.Errorf("%w: secret of %d bytes, want 1 to %d", ErrParams, size, MaxSecretSize)
	case !validGroup(group):
		return fmt.Errorf("%w: group label must be 1 to %d lowercase hex digits", ErrParams, maxGroup)
	}
	return nil
}

func validGroup(g string) bool {
	if len(g) < 1 || len(g) > maxGroup {
		return false
	}
	for i := 0; i < len(g); i++ {
		if c := g[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// eval returns s + c[0]·x + c[1]·x² + ... (Horner).
func eval(s byte, coef []byte, x byte) byte {
	var y byte
	for i := len(coef) - 1; i >= 0; i-- {
		y = mul(y, x) ^ coef[i]
	}
	return mul(y, x) ^ s
}

// Combine recovers the secret from at least M shares of one split (M =
// their threshold). All the shares given are used, so one that does not
// belong (e.g. of another split of the same secret) yields a wrong
// secret: the caller must verify the result against something it knows
// (kmsd: the REK id). Errors: ErrTooFewShares, ErrDuplicateShare,
// ErrMismatch, ErrDestroyed. The caller owns and should clear the result.
func Combine(shares []*Share) ([]byte, error) {
	if len(shares) == 0 {
		return nil, fmt.Errorf("%w: none given", ErrTooFewShares)
	}
	first := shares[0]
	if first == nil || first.y == nil {
		return nil, ErrDestroyed
	}
	var seen [256]bool
	for _, s := range shares {
		switch {
		case s == nil || s.y == nil:
			return nil, ErrDestroyed
		case s.group != first.group:
			return nil, fmt.Errorf("%w: group %s and %s", ErrMismatch, first.group, s.group)
		case s.threshold != first.threshold:
			return nil, fmt.Errorf("%w: threshold %d and %d", ErrMismatch, first.threshold, s.threshold)
		case len(s.y) != len(first.y):
			return nil, fmt.Errorf("%w: %d and %d bytes", ErrMismatch, len(first.y), len(s.y))
		case s.x == 0:
			return nil, fmt.Errorf("%w: x = 0", ErrFormat)
		case seen[s.x]:
			return nil, fmt.Errorf("%w: share %d given twice", ErrDuplicateShare, s.x)
		}
		seen[s.x] = true
	}
	if len(shares) < first.threshold {
		return nil, fmt.Errorf("%w: %d of %d needed", ErrTooFewShares, len(shares), first.threshold)
	}
	return interpolate(shares), nil
}

// interpolate evaluates at x = 0 the polynomial through the shares'
// points (Lagrange): secret = Σ yᵢ · Πⱼ≠ᵢ xⱼ / (xⱼ - xᵢ). The x are public;
// only the y are secret, and they only meet mul and XOR.
func interpolate(shares []*Share) []byte {
	out := make([]byte, len(shares[0].y))
	for i, si := range shares {
		l := byte(1) // Lagrange basis polynomial i at 0
		for j, sj := range shares {
			if i != j {
				l = mul(l, div(sj.x, sj.x^si.x))
			}
		}
		for b := range out {
			out[b] ^= mul(l, si.y[b])
		}
	}
	return out
}
