package hsm

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DefaultMaxSessions is the session pool size when Config.MaxSessions is 0.
const DefaultMaxSessions = 4

// Config selects a PKCS#11 module, a token and the wrapping key on it.
//
// Config implements slog.LogValuer, fmt.Stringer and fmt.GoStringer, all of
// which hide the PIN, so a Config can be logged or printed safely.
type Config struct {
	// ModulePath is the absolute path of the PKCS#11 module (.so). A
	// relative path is refused: dlopen would search the library path for
	// it, so which code gets the PIN would depend on the environment.
	ModulePath string
	// TokenLabel selects the slot: exactly one initialized token of the
	// module must carry this label (compared without the 32-byte space
	// padding).
	TokenLabel string
	// PIN is the user (CKU_USER) PIN. The caller resolves it, for example
	// with ReadPIN; it never comes from a config file in clear.
	PIN string
	// KeyLabel is the CKA_LABEL of the AES-256 wrapping key. Exactly one
	// AES secret key token object must carry it.
	KeyLabel string
	// MaxSessions bounds the session pool. Zero means DefaultMaxSessions.
	// The pool never exceeds the token's ulMaxSessionCount.
	MaxSessions int
	// Observe, if set, is called once after every operation of the
	// Module: op is "open" (Open, including the login), "wrap", "unwrap"
	// or "ping"; d is its wall-clock duration, including the wait for a
	// session and the one retry on a fresh session; err is what the
	// caller got (nil on success; an Unwrap that does not authenticate
	// reports an error wrapping ErrNotAuthentic). It runs synchronously
	// on the caller's goroutine, possibly concurrently: it must be fast
	// and safe for concurrent use. An Unwrap refused before any HSM call
	// (input shorter than IV and tag) is not observed. nil: no
	// observation. Observe is never logged or printed.
	Observe func(op string, d time.Duration, err error)
}

// LogValue implements slog.LogValuer. The PIN is never included; pin_set
// tells whether one was given.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("module", c.ModulePath),
		slog.String("token", c.TokenLabel),
		slog.String("key_label", c.KeyLabel),
		slog.Int("max_sessions", c.MaxSessions),
		slog.Bool("pin_set", c.PIN != ""),
	)
}

// String implements fmt.Stringer without the PIN.
func (c Config) String() string {
	pin := "unset"
	if c.PIN != "" {
		pin = "redacted"
	}
	return fmt.Sprintf("hsm.Config{ModulePath: %q, TokenLabel: %q, KeyLabel: %q, MaxSessions: %d, PIN: %s}",
		c.ModulePath, c.TokenLabel, c.KeyLabel, c.MaxSessions, pin)
}

// GoString implements fmt.GoStringer, so %#v hides the PIN too.
func (c Config) GoString() string { return c.String() }

// validate checks cfg and returns the pool size it asks for.
func (c Config) validate(op string) (int, error) {
	switch {
	case c.ModulePath == "":
		return 0, newError(op, ErrModuleNotFound, nil, "no PKCS#11 module path configured")
	case !filepath.IsAbs(c.ModulePath):
		return 0, newError(op, ErrModuleNotFound, nil,
			"module path %q is not absolute; give the full path of the PKCS#11 library", c.ModulePath)
	case strings.TrimRight(c.TokenLabel, " ") == "":
		return 0, newError(op, ErrTokenNotFound, nil, "no token label configured")
	case len(c.TokenLabel) > 32:
		return 0, newError(op, ErrTokenNotFound, nil, "token label %q is longer than 32 bytes", c.TokenLabel)
	case c.KeyLabel == "":
		return 0, newError(op, ErrKeyNotFound, nil, "no key label configured")
	case c.PIN == "":
		return 0, newError(op, ErrPINIncorrect, nil, "no user PIN given for token %q", c.TokenLabel)
	case c.MaxSessions < 0:
		return 0, newError(op, nil, nil, "MaxSessions is %d; it must be 0 (default %d) or more", c.MaxSessions, DefaultMaxSessions)
	case c.MaxSessions == 0:
		return DefaultMaxSessions, nil
	default:
		return c.MaxSessions, nil
	}
}

// ReadPIN returns the PIN from the environment variable envVar if it is
// set and not empty, else from file with one trailing newline ("\n" or
// "\r\n") removed. Either argument may be empty to skip that source. It
// fails if neither yields a PIN. Errors never contain the PIN.
func ReadPIN(envVar, file string) (string, error) {
	if envVar != "" {
		if pin := os.Getenv(envVar); pin != "" {
			return pin, nil
		}
	}
	if file == "" {
		if envVar == "" {
			return "", errors.New("hsm: read PIN: neither a PIN environment variable nor a PIN file is configured")
		}
		return "", fmt.Errorf("hsm: read PIN: environment variable %s is not set and no PIN file is configured", envVar)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("hsm: read PIN: %w", err)
	}
	pin := string(b)
	if strings.HasSuffix(pin, "\r\n") {
		pin = pin[:len(pin)-2]
	} else {
		pin = strings.TrimSuffix(pin, "\n")
	}
	if pin == "" {
		return "", fmt.Errorf("hsm: read PIN: file %s is empty", file)
	}
	return pin, nil
}
