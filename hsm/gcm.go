package hsm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"

	"github.com/miekg/pkcs11"
)

// Wrapped format: iv (12 bytes) || ciphertext || tag (16 bytes).
const (
	ivSize  = 12
	tagSize = 16
	tagBits = 8 * tagSize
)

// Wrap encrypts plaintext and authenticates aad with CKM_AES_GCM under the
// wrapping key (C_EncryptInit/C_Encrypt) and returns
// iv(12) || ciphertext || tag(16).
//
// The IV is 12 random bytes from crypto/rand. If the HSM replaces it with
// its own (CloudHSM and some FIPS-mode HSMs do), the IV read back from the
// GCM parameters after C_Encrypt is the one in the output. Wrap then
// decrypts its own output once on the same session and compares it with
// plaintext, so an IV quirk cannot silently produce an unrecoverable
// wrapping: Wrap is only called at init, join and re-wrap, never on the
// request path, so the second HSM operation is cheap insurance.
func (m *Module) Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	const op = "wrap"
	var out []byte
	err := m.do(ctx, op, func(sh pkcs11.SessionHandle, key pkcs11.ObjectHandle) error {
		var err error
		out, err = m.wrap(op, sh, key, plaintext, aad)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (m *Module) wrap(op string, sh pkcs11.SessionHandle, key pkcs11.ObjectHandle, plaintext, aad []byte) ([]byte, error) {
	iv := make([]byte, ivSize)
	if _, err := rand.Read(iv); err != nil {
		return nil, newError(op, nil, err, "generating an IV")
	}
	usedIV, ct, err := gcmEncrypt(m.ctx, sh, key, iv, plaintext, aad)
	if err != nil {
		return nil, newError(op, nil, err, "AES-GCM encryption with key %q failed", m.cfg.KeyLabel)
	}
	switch {
	case len(usedIV) != ivSize:
		return nil, newError(op, nil, nil, "the HSM reported a %d-byte GCM IV; %d bytes are required", len(usedIV), ivSize)
	case len(ct) != len(plaintext)+tagSize:
		return nil, newError(op, nil, nil, "the HSM returned %d bytes of GCM output for %d bytes of input; want input + %d-byte tag",
			len(ct), len(plaintext), tagSize)
	}
	pt, err := m.decrypt(op, sh, key, usedIV, ct, aad)
	switch {
	case errors.Is(err, ErrNotAuthentic), err == nil && subtle.ConstantTimeCompare(pt, plaintext) != 1:
		return nil, newError(op, nil, nil,
			"the HSM's GCM output does not decrypt back to the input (IV not reported correctly?); nothing was wrapped")
	case err != nil:
		return nil, err
	}
	out := make([]byte, 0, ivSize+len(ct))
	out = append(out, usedIV...)
	return append(out, ct...), nil
}

// Unwrap reverses Wrap. A ciphertext or aad that does not authenticate
// under the wrapping key, and a ciphertext too short to hold an IV and a
// tag, give an error wrapping ErrNotAuthentic. Any other error is an HSM
// failure.
func (m *Module) Unwrap(ctx context.Context, ciphertext, aad []byte) ([]byte, error) {
	const op = "unwrap"
	if len(ciphertext) < ivSize+tagSize {
		return nil, newError(op, ErrNotAuthentic, nil, "ciphertext is %d bytes, shorter than IV and tag (%d bytes)",
			len(ciphertext), ivSize+tagSize)
	}
	var out []byte
	err := m.do(ctx, op, func(sh pkcs11.SessionHandle, key pkcs11.ObjectHandle) error {
		var err error
		out, err = m.decrypt(op, sh, key, ciphertext[:ivSize], ciphertext[ivSize:], aad)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// decrypt runs C_DecryptInit/C_Decrypt and maps a tag mismatch to
// ErrNotAuthentic. HSMs report a mismatch with different codes (SoftHSM
// 2.6: CKR_GENERAL_ERROR, see mayBeTagMismatch); the session is asked for
// its state to tell a mismatch from a failing device.
func (m *Module) decrypt(op string, sh pkcs11.SessionHandle, key pkcs11.ObjectHandle, iv, ct, aad []byte) ([]byte, error) {
	mech, params := m.ctx.newGCM(iv, aad, tagBits)
	defer params.Free()
	if err := m.ctx.DecryptInit(sh, []*pkcs11.Mechanism{mech}, key); err != nil {
		return nil, newError(op, nil, err, "AES-GCM decryption with key %q could not start", m.cfg.KeyLabel)
	}
	pt, err := m.ctx.Decrypt(sh, ct)
	if err == nil {
		return pt, nil
	}
	if mayBeTagMismatch(err) {
		if _, serr := m.ctx.GetSessionInfo(sh); serr == nil {
			return nil, newError(op, ErrNotAuthentic, err, "ciphertext or AAD does not authenticate under key %s", m.keyID)
		}
	}
	return nil, newError(op, nil, err, "AES-GCM decryption with key %q failed", m.cfg.KeyLabel)
}

// gcmEncrypt runs C_EncryptInit/C_Encrypt with CKM_AES_GCM and returns the
// IV the HSM actually used (read back from the parameters) and
// ciphertext||tag. The parameters are freed on every path.
func gcmEncrypt(c p11, sh pkcs11.SessionHandle, key pkcs11.ObjectHandle, iv, plaintext, aad []byte) (usedIV, ct []byte, err error) {
	mech, params := c.newGCM(iv, aad, tagBits)
	defer params.Free()
	if err := c.EncryptInit(sh, []*pkcs11.Mechanism{mech}, key); err != nil {
		return nil, nil, err
	}
	ct, err = c.Encrypt(sh, plaintext)
	if err != nil {
		return nil, nil, err
	}
	return params.IV(), ct, nil
}

// Key check value (KCV), the discriminating part of KeyID.
//
// The KCV is the first 3 bytes of the AES-GCM encryption of a zero block
// under the wrapping key with a fixed 12-byte IV and a fixed AAD. It is
// deterministic, needs only CKA_ENCRYPT (the key may not allow ECB, and it
// has no CKA_SIGN for a CMAC-based KCV), and reveals nothing used
// elsewhere: the classic KCV, ECB of a zero block, is GCM's GHASH key H,
// while the fixed-IV keystream block here is used by no real wrapping
// unless a random IV hits kcvIV (probability 2^-96 per Wrap).
//
// An HSM that replaces or refuses caller IVs cannot compute it; then the
// token's CKA_CHECK_VALUE (PKCS#11 2.40: 3 bytes of ECB of a zero block) is
// used, and if the token has none the KCV is empty. Either way the choice
// depends only on the HSM, so a key's KeyID is stable.
var (
	kcvIV  = []byte("kmsd-kcv-v1.")
	kcvAAD = []byte("kmsd wrapping key check value")
)

const kcvSize = 3

func keyCheckValue(c p11, sh pkcs11.SessionHandle, key pkcs11.ObjectHandle) ([]byte, error) {
	usedIV, ct, err := gcmEncrypt(c, sh, key, kcvIV, make([]byte, 16), kcvAAD)
	switch {
	case err == nil && bytes.Equal(usedIV, kcvIV) && len(ct) >= kcvSize:
		return ct[:kcvSize], nil
	case err != nil && !hasCode(err, pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_MECHANISM_INVALID,
		pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, pkcs11.CKR_FUNCTION_NOT_SUPPORTED):
		return nil, err
	}
	cv, err := getAttr(c, sh, key, pkcs11.CKA_CHECK_VALUE)
	switch {
	case err == nil && len(cv) >= kcvSize:
		return cv[:kcvSize], nil
	case err == nil, hasCode(err, pkcs11.CKR_ATTRIBUTE_TYPE_INVALID, pkcs11.CKR_ATTRIBUTE_SENSITIVE):
		return nil, nil
	default:
		return nil, err
	}
}
