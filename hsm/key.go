package hsm

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"strings"

	"github.com/miekg/pkcs11"
)

// maxFound bounds how many objects findObjects collects; more than one
// match is an error anyway.
const maxFound = 16

// findObjects returns the handles of the objects that match tmpl (at most
// maxFound). C_FindObjectsFinal is always called.
func findObjects(c p11, sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) (_ []pkcs11.ObjectHandle, err error) {
	if err := c.FindObjectsInit(sh, tmpl); err != nil {
		return nil, err
	}
	defer func() {
		if ferr := c.FindObjectsFinal(sh); err == nil {
			err = ferr
		}
	}()
	var found []pkcs11.ObjectHandle
	for len(found) < maxFound {
		objs, _, err := c.FindObjects(sh, maxFound)
		if err != nil {
			return nil, err
		}
		if len(objs) == 0 {
			break
		}
		found = append(found, objs...)
	}
	return found, nil
}

// keyTemplate matches AES secret key token objects labelled label.
func keyTemplate(label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
}

// findKey returns the one AES secret key token object labelled label.
func findKey(c p11, op string, sh pkcs11.SessionHandle, token, label string) (pkcs11.ObjectHandle, error) {
	objs, err := findObjects(c, sh, keyTemplate(label))
	if err != nil {
		return 0, newError(op, nil, err, "searching key %q on token %q", label, token)
	}
	switch len(objs) {
	case 1:
		return objs[0], nil
	case 0:
		return 0, newError(op, ErrKeyNotFound, nil, "no AES secret key labelled %q on token %q", label, token)
	default:
		more := ""
		if len(objs) == maxFound {
			more = " or more"
		}
		return 0, newError(op, nil, nil, "%d%s AES secret keys are labelled %q on token %q; the label must be unique",
			len(objs), more, label, token)
	}
}

// getAttr reads one attribute of an object.
func getAttr(c p11, sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, typ uint) ([]byte, error) {
	attrs, err := c.GetAttributeValue(sh, o, []*pkcs11.Attribute{pkcs11.NewAttribute(typ, nil)})
	if err != nil {
		return nil, err
	}
	if len(attrs) != 1 {
		return nil, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_TYPE_INVALID)
	}
	return attrs[0].Value, nil
}

// checkKey refuses a wrapping key that is not AES-256, cannot both
// encrypt and decrypt, or is not sensitive and non-extractable. An
// attribute the token does not report is not checked.
func checkKey(c p11, op string, sh pkcs11.SessionHandle, key pkcs11.ObjectHandle, label string) error {
	checks := []struct {
		attr uint
		ok   func([]byte) bool
		msg  string
	}{
		{pkcs11.CKA_ENCRYPT, isTrue, "cannot encrypt (CKA_ENCRYPT is false)"},
		{pkcs11.CKA_DECRYPT, isTrue, "cannot decrypt (CKA_DECRYPT is false)"},
		{pkcs11.CKA_VALUE_LEN, is32, "is not an AES-256 key (CKA_VALUE_LEN is not 32)"},
		{pkcs11.CKA_SENSITIVE, isTrue, "is not sensitive (CKA_SENSITIVE is false); create a sensitive, non-extractable key"},
		{pkcs11.CKA_EXTRACTABLE, isFalse, "is extractable (CKA_EXTRACTABLE is true); create a sensitive, non-extractable key"},
	}
	for _, ch := range checks {
		v, err := getAttr(c, sh, key, ch.attr)
		switch {
		case hasCode(err, pkcs11.CKR_ATTRIBUTE_TYPE_INVALID, pkcs11.CKR_ATTRIBUTE_SENSITIVE):
			continue
		case err != nil:
			return newError(op, nil, err, "reading attributes of key %q", label)
		case !ch.ok(v):
			return newError(op, nil, nil, "key %q %s", label, ch.msg)
		}
	}
	return nil
}

func isTrue(v []byte) bool  { return len(v) == 1 && v[0] != 0 }
func isFalse(v []byte) bool { return len(v) == 1 && v[0] == 0 }

// is32 decodes a CK_ULONG (host byte order, 4 or 8 bytes) and compares
// it with 32.
func is32(v []byte) bool {
	switch len(v) {
	case 8:
		return binary.NativeEndian.Uint64(v) == 32
	case 4:
		return binary.NativeEndian.Uint32(v) == 32
	}
	return false
}

// formatKeyID builds the KeyID (see Module.KeyID).
func formatKeyID(token, label string, id, kcv []byte) string {
	return "pkcs11:token=" + pctEncode(strings.TrimRight(token, " ")) +
		";object=" + pctEncode(label) +
		";id=" + hex.EncodeToString(id) +
		";kcv=" + hex.EncodeToString(kcv)
}

// pctEncode percent-encodes everything but RFC 3986 unreserved characters,
// so ';', '=' and '%' in labels cannot make two KeyIDs collide.
func pctEncode(s string) string {
	const hexdig = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexdig[c>>4])
		b.WriteByte(hexdig[c&15])
	}
	return b.String()
}

// GenerateKey creates the wrapping key cfg.KeyLabel on token
// cfg.TokenLabel: an AES-256 token object that is private, sensitive,
// non-extractable, can encrypt and decrypt and nothing else (no wrap,
// unwrap, sign, verify or derive), with a random 8-byte CKA_ID. It fails
// with an error wrapping ErrKeyExists if any secret key with that label
// exists already. It is an administrative operation: the check and the
// creation are not atomic against a concurrent GenerateKey.
func GenerateKey(ctx context.Context, cfg Config) error {
	return generateKey(ctx, cfg, loadModule)
}

func generateKey(ctx context.Context, cfg Config, load loader) (err error) {
	const op = "generate key"
	if _, err := cfg.validate(op); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return newError(op, nil, err, "token %q", cfg.TokenLabel)
	}
	lib, err := acquire(cfg.ModulePath, load)
	if err != nil {
		return err
	}
	defer func() {
		if rerr := lib.release(); err == nil {
			err = rerr
		}
	}()
	c := lib.ctx
	slot, info, err := findToken(c, op, cfg.ModulePath, cfg.TokenLabel)
	if err != nil {
		return err
	}
	if err := checkPINFlags(op, cfg.TokenLabel, info.Flags); err != nil {
		return err
	}
	sh, err := c.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return newError(op, nil, err, "opening a read-write session on token %q", cfg.TokenLabel)
	}
	defer func() { _ = c.CloseSession(sh) }() // never C_Logout: see Module.closeSession
	if err := c.Login(sh, pkcs11.CKU_USER, cfg.PIN); err != nil && !hasCode(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
		return loginError(op, cfg.TokenLabel, err)
	}
	return createKey(c, op, sh, cfg.TokenLabel, cfg.KeyLabel)
}

// createKey generates the key on a logged-in read-write session.
func createKey(c p11, op string, sh pkcs11.SessionHandle, token, label string) error {
	existing, err := findObjects(c, sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	})
	if err != nil {
		return newError(op, nil, err, "searching key %q on token %q", label, token)
	}
	if len(existing) > 0 {
		return newError(op, ErrKeyExists, nil, "a secret key labelled %q exists already on token %q", label, token)
	}
	id := make([]byte, 8)
	if _, err := rand.Read(id); err != nil {
		return newError(op, nil, err, "generating a key id")
	}
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
	}
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}
	if _, err := c.GenerateKey(sh, mech, tmpl); err != nil {
		return newError(op, nil, err, "generating AES-256 key %q on token %q", label, token)
	}
	return nil
}
