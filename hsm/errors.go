package hsm

import (
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// Sentinel errors. Every error returned by this package reads
// "hsm: <op>: <detail>" and wraps one of these when it applies, plus the
// underlying pkcs11.Error when there is one. Compare with errors.Is and
// errors.As. No error text ever contains a PIN or plaintext.
var (
	// ErrModuleNotFound: the PKCS#11 module file is missing or cannot be
	// loaded, or its path is not absolute.
	ErrModuleNotFound = errors.New("hsm: PKCS#11 module not found")
	// ErrTokenNotFound: no token (or more than one) carries the label.
	ErrTokenNotFound = errors.New("hsm: token not found")
	// ErrPINIncorrect: the token rejected the user PIN
	// (CKR_PIN_INCORRECT, CKR_PIN_LEN_RANGE, CKR_PIN_INVALID).
	ErrPINIncorrect = errors.New("hsm: PIN incorrect")
	// ErrPINLocked: the user PIN is locked (CKR_PIN_LOCKED or the token's
	// CKF_USER_PIN_LOCKED flag); the security officer must reset it.
	ErrPINLocked = errors.New("hsm: PIN locked")
	// ErrKeyNotFound: no AES secret key object carries the key label.
	ErrKeyNotFound = errors.New("hsm: key not found")
	// ErrKeyExists: GenerateKey found a key with the label already.
	ErrKeyExists = errors.New("hsm: key already exists")
	// ErrNotAuthentic: Unwrap was given a ciphertext or AAD that does not
	// authenticate under the wrapping key (or a malformed ciphertext). It
	// is the normal outcome for "wrapped by another key", as opposed to an
	// HSM failure, which is any other error.
	ErrNotAuthentic = errors.New("hsm: ciphertext is not authentic")
	// ErrClosed: the Module was closed.
	ErrClosed = errors.New("hsm: module closed")
)

// opError is the one error type of the package: an operator-facing
// message, the operation, a sentinel (kind) and a cause.
type opError struct {
	op    string // "open", "wrap", "unwrap", "ping", "generate key", ...
	msg   string // what happened, for an operator; never secrets
	kind  error  // one of the sentinels above, or nil
	cause error  // the underlying error (often a pkcs11.Error), or nil
}

func (e *opError) Error() string {
	s := "hsm: " + e.op + ": " + e.msg
	if e.cause != nil {
		s += ": " + e.cause.Error()
	}
	return s
}

func (e *opError) Unwrap() []error {
	errs := make([]error, 0, 2)
	if e.kind != nil {
		errs = append(errs, e.kind)
	}
	if e.cause != nil {
		errs = append(errs, e.cause)
	}
	return errs
}

// newError builds an opError. kind and cause may be nil.
func newError(op string, kind, cause error, format string, args ...any) error {
	return &opError{op: op, msg: fmt.Sprintf(format, args...), kind: kind, cause: cause}
}

// ckrAEADDecryptFailed is CKR_AEAD_DECRYPT_FAILED from PKCS#11 3.0, which
// miekg/pkcs11 v1.1.2 does not define.
const ckrAEADDecryptFailed = 0x35

// code returns the CKR_ value carried by err, if any.
func code(err error) (uint, bool) {
	var e pkcs11.Error
	if errors.As(err, &e) {
		return uint(e), true
	}
	return 0, false
}

func hasCode(err error, codes ...uint) bool {
	c, ok := code(err)
	if !ok {
		return false
	}
	for _, want := range codes {
		if c == want {
			return true
		}
	}
	return false
}

// sessionBroken reports whether err means the session (or the token
// behind it) is unusable, so it must be closed and replaced.
func sessionBroken(err error) bool {
	return hasCode(err,
		pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_MEMORY,
		pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_TOKEN_NOT_RECOGNIZED,
		pkcs11.CKR_OPERATION_ACTIVE, pkcs11.CKR_USER_NOT_LOGGED_IN,
		pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, pkcs11.CKR_GENERAL_ERROR)
}

// staleKey reports whether err means the key's object handle went stale
// (for example after the token was reset), so the key must be found again.
func staleKey(err error) bool {
	return hasCode(err, pkcs11.CKR_KEY_HANDLE_INVALID, pkcs11.CKR_OBJECT_HANDLE_INVALID)
}

// mayBeTagMismatch reports whether a C_Decrypt error can mean "tag does
// not verify". HSMs disagree on the code: SoftHSM 2.6 returns
// CKR_GENERAL_ERROR, others CKR_ENCRYPTED_DATA_INVALID,
// CKR_ENCRYPTED_DATA_LEN_RANGE, CKR_FUNCTION_FAILED or (PKCS#11 3.0)
// CKR_AEAD_DECRYPT_FAILED. Because CKR_GENERAL_ERROR and
// CKR_FUNCTION_FAILED can also mean a failing device, Unwrap checks that
// the session still answers before it reports ErrNotAuthentic.
func mayBeTagMismatch(err error) bool {
	return hasCode(err,
		pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE,
		pkcs11.CKR_DATA_INVALID, pkcs11.CKR_DATA_LEN_RANGE,
		pkcs11.CKR_FUNCTION_FAILED, pkcs11.CKR_GENERAL_ERROR, ckrAEADDecryptFailed)
}

// loginError maps a C_Login failure to a sentinel.
func loginError(op, token string, err error) error {
	switch {
	case hasCode(err, pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_LEN_RANGE, pkcs11.CKR_PIN_INVALID):
		return newError(op, ErrPINIncorrect, err, "login to token %q failed: user PIN incorrect", token)
	case hasCode(err, pkcs11.CKR_PIN_LOCKED):
		return newError(op, ErrPINLocked, err, "login to token %q failed: user PIN locked (the security officer must unlock it)", token)
	case hasCode(err, pkcs11.CKR_PIN_EXPIRED):
		return newError(op, nil, err, "login to token %q failed: user PIN expired (change it with the token's tools)", token)
	case hasCode(err, pkcs11.CKR_USER_ANOTHER_ALREADY_LOGGED_IN):
		return newError(op, nil, err, "login to token %q failed: this process is logged in as security officer", token)
	default:
		return newError(op, nil, err, "login to token %q failed", token)
	}
}
