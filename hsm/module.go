package hsm

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"
)

// Module is an open, logged-in token with its wrapping key. It is safe for
// concurrent use; at most Config.MaxSessions operations run at once, the
// others wait for a session (or for their context).
type Module struct {
	cfg   Config
	lib   *library
	ctx   p11
	slot  uint
	pool  *pool
	key   atomic.Uint64 // pkcs11.ObjectHandle of the wrapping key
	keyID string

	mu       sync.Mutex // guards closed and inflight.Add
	closed   bool
	done     chan struct{} // closed by Close; wakes pool waiters
	inflight sync.WaitGroup

	logins atomic.Int32 // C_Login calls that succeeded; tests check "log in once"
}

// Open loads the module, finds the token by label, logs in once, finds the
// wrapping key by label and computes its KeyID. The returned Module holds
// at least one open (logged-in) session until Close.
//
// Open is the only place where the PIN is used. Errors wrap
// ErrModuleNotFound, ErrTokenNotFound, ErrPINIncorrect, ErrPINLocked or
// ErrKeyNotFound where they apply.
func Open(ctx context.Context, cfg Config) (*Module, error) {
	return open(ctx, cfg, loadModule)
}

// observe reports one operation to cfg.Observe, if set.
func (c Config) observe(op string, start time.Time, err error) {
	if c.Observe != nil {
		c.Observe(op, time.Since(start), err)
	}
}

// open is Open with an injectable loader. It is long because it is the
// one place that walks the PKCS#11 set-up sequence in order; each step is
// a helper.
func open(ctx context.Context, cfg Config, load loader) (_ *Module, err error) {
	const op = "open"
	defer func(start time.Time) { cfg.observe(op, start, err) }(time.Now())
	size, err := cfg.validate(op)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, newError(op, nil, err, "token %q", cfg.TokenLabel)
	}
	lib, err := acquire(cfg.ModulePath, load)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = lib.release()
		}
	}()
	slot, info, err := findToken(lib.ctx, op, cfg.ModulePath, cfg.TokenLabel)
	if err != nil {
		return nil, err
	}
	if err := checkPINFlags(op, cfg.TokenLabel, info.Flags); err != nil {
		return nil, err
	}
	m := &Module{cfg: cfg, lib: lib, ctx: lib.ctx, slot: slot, done: make(chan struct{})}
	m.pool = newPool(poolSize(size, info.MaxSessionCount), m.done, m.openSession, m.closeSession)
	sh, err := m.pool.get(ctx, op) // opens the first session and logs in
	if err != nil {
		return nil, m.poolError(op, err)
	}
	err = m.initKey(op, sh)
	m.pool.put(sh, err != nil && sessionBroken(err))
	if err != nil {
		m.pool.drain()
		return nil, err
	}
	return m, nil
}

// poolSize is the configured size capped by the token's
// ulMaxSessionCount, which may be CK_EFFECTIVELY_INFINITE (0) or
// CK_UNAVAILABLE_INFORMATION.
func poolSize(want int, tokenMax uint) int {
	if tokenMax == pkcs11.CK_EFFECTIVELY_INFINITE || tokenMax == pkcs11.CK_UNAVAILABLE_INFORMATION {
		return want
	}
	if uint(want) > tokenMax {
		return int(tokenMax)
	}
	return want
}

// initKey finds the wrapping key on sh, checks its attributes and computes
// the KeyID.
func (m *Module) initKey(op string, sh pkcs11.SessionHandle) error {
	key, err := findKey(m.ctx, op, sh, m.cfg.TokenLabel, m.cfg.KeyLabel)
	if err != nil {
		return err
	}
	if err := checkKey(m.ctx, op, sh, key, m.cfg.KeyLabel); err != nil {
		return err
	}
	id, err := getAttr(m.ctx, sh, key, pkcs11.CKA_ID)
	if err != nil && !hasCode(err, pkcs11.CKR_ATTRIBUTE_TYPE_INVALID) {
		return newError(op, nil, err, "reading CKA_ID of key %q", m.cfg.KeyLabel)
	}
	kcv, err := keyCheckValue(m.ctx, sh, key)
	if err != nil {
		return newError(op, nil, err, "computing the key check value of key %q", m.cfg.KeyLabel)
	}
	m.key.Store(uint64(key))
	m.keyID = formatKeyID(m.cfg.TokenLabel, m.cfg.KeyLabel, id, kcv)
	return nil
}

// openSession opens a read-only session (encryption needs no more) and
// logs in if the token is not logged in yet. Login state is per
// application and token in PKCS#11: it holds while any session of the
// process on the token is open, so in steady state only the first session
// logs in. If every session was lost (token reset), the next one logs in
// again.
func (m *Module) openSession(op string) (pkcs11.SessionHandle, error) {
	sh, err := m.ctx.OpenSession(m.slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		return 0, newError(op, nil, err, "opening a session on token %q", m.cfg.TokenLabel)
	}
	info, err := m.ctx.GetSessionInfo(sh)
	if err != nil {
		_ = m.ctx.CloseSession(sh)
		return 0, newError(op, nil, err, "reading session state on token %q", m.cfg.TokenLabel)
	}
	if info.State == pkcs11.CKS_RO_PUBLIC_SESSION || info.State == pkcs11.CKS_RW_PUBLIC_SESSION {
		err := m.ctx.Login(sh, pkcs11.CKU_USER, m.cfg.PIN)
		switch {
		case err == nil:
			m.logins.Add(1)
		case hasCode(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN):
		default:
			_ = m.ctx.CloseSession(sh)
			return 0, loginError(op, m.cfg.TokenLabel, err)
		}
	}
	return sh, nil
}

// closeSession closes a session, best effort. It never logs out: C_Logout
// would log out every session of the process on the token, including
// those of another Module. Closing the last session logs out implicitly.
func (m *Module) closeSession(sh pkcs11.SessionHandle) { _ = m.ctx.CloseSession(sh) }

// poolError turns an error from pool.get into an error for op.
func (m *Module) poolError(op string, err error) error {
	var oe *opError
	switch {
	case errors.As(err, &oe):
		return err
	case errors.Is(err, ErrClosed):
		return newError(op, ErrClosed, nil, "module for token %q is closed", m.cfg.TokenLabel)
	default:
		return newError(op, nil, err, "waiting for a session on token %q", m.cfg.TokenLabel)
	}
}

// begin registers an operation, or fails if the Module is closed.
func (m *Module) begin(op string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return newError(op, ErrClosed, nil, "module for token %q is closed", m.cfg.TokenLabel)
	}
	m.inflight.Add(1)
	return nil
}

// do runs fn with a session of its own and the key handle. A session that
// fn reports broken is closed and fn is retried once on a fresh one; a
// stale key handle is looked up again and fn retried once.
func (m *Module) do(ctx context.Context, op string, fn func(pkcs11.SessionHandle, pkcs11.ObjectHandle) error) (err error) {
	defer func(start time.Time) { m.cfg.observe(op, start, err) }(time.Now())
	if err := m.begin(op); err != nil {
		return err
	}
	defer m.inflight.Done()
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return newError(op, nil, err, "token %q", m.cfg.TokenLabel)
		}
		sh, err := m.pool.get(ctx, op)
		if err != nil {
			return m.poolError(op, err)
		}
		err = fn(sh, pkcs11.ObjectHandle(m.key.Load()))
		if err != nil && attempt == 0 && staleKey(err) {
			err = m.refindKey(op, sh)
			m.pool.put(sh, err != nil && sessionBroken(err))
			if err != nil {
				return err
			}
			continue
		}
		broken := err != nil && !errors.Is(err, ErrNotAuthentic) && sessionBroken(err)
		m.pool.put(sh, broken)
		if broken && attempt == 0 {
			continue
		}
		return err
	}
}

// refindKey looks the key up again after its handle went stale.
func (m *Module) refindKey(op string, sh pkcs11.SessionHandle) error {
	key, err := findKey(m.ctx, op, sh, m.cfg.TokenLabel, m.cfg.KeyLabel)
	if err != nil {
		return err
	}
	m.key.Store(uint64(key))
	return nil
}

// KeyID returns the stable, public identifier of the wrapping key:
//
//	pkcs11:token=<token label>;object=<key label>;id=<hex CKA_ID>;kcv=<6 hex>
//
// Labels are percent-encoded as in RFC 7512; id is empty when the key has
// no CKA_ID. kcv is a key check value (see keyCheckValue in gcm.go), so
// two different keys with the same labels on two tokens get different
// KeyIDs, and the same key gets the same KeyID on every Open.
func (m *Module) KeyID() string { return m.keyID }

// Mechanism returns "CKM_AES_GCM", the mechanism Wrap and Unwrap use.
func (m *Module) Mechanism() string { return "CKM_AES_GCM" }

// Ping checks that a session answers, is logged in and that the key
// handle is valid.
func (m *Module) Ping(ctx context.Context) error {
	const op = "ping"
	return m.do(ctx, op, func(sh pkcs11.SessionHandle, key pkcs11.ObjectHandle) error {
		info, err := m.ctx.GetSessionInfo(sh)
		if err != nil {
			return newError(op, nil, err, "token %q does not answer", m.cfg.TokenLabel)
		}
		if info.State != pkcs11.CKS_RO_USER_FUNCTIONS && info.State != pkcs11.CKS_RW_USER_FUNCTIONS {
			return newError(op, nil, pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN), "token %q is not logged in", m.cfg.TokenLabel)
		}
		if _, err := getAttr(m.ctx, sh, key, pkcs11.CKA_KEY_TYPE); err != nil {
			return newError(op, nil, err, "key %q on token %q is not usable", m.cfg.KeyLabel, m.cfg.TokenLabel)
		}
		return nil
	})
}

// Close waits for running operations, closes every session and releases
// the module (C_Finalize when it was the last user in the process that
// this package initialized). Operations after Close fail with ErrClosed.
// Close is idempotent.
func (m *Module) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	close(m.done)
	m.mu.Unlock()
	m.inflight.Wait()
	m.pool.drain()
	return m.lib.release()
}

// findToken returns the slot of the one initialized token labelled label.
// Slots whose token info cannot be read (SoftHSM reports
// CKR_GENERAL_ERROR for a token whose directory was removed) are skipped.
func findToken(c p11, op, path, label string) (uint, pkcs11.TokenInfo, error) {
	slots, err := c.GetSlotList(true)
	if err != nil {
		return 0, pkcs11.TokenInfo{}, newError(op, nil, err, "listing slots of module %s", path)
	}
	label = strings.TrimRight(label, " ")
	var (
		present []string
		found   []uint
		info    pkcs11.TokenInfo
	)
	for _, s := range slots {
		ti, err := c.GetTokenInfo(s)
		if err != nil || ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		l := strings.TrimRight(ti.Label, " \x00")
		present = append(present, l)
		if l == label {
			found = append(found, s)
			info = ti
		}
	}
	switch len(found) {
	case 1:
		return found[0], info, nil
	case 0:
		list := "none"
		if len(present) > 0 {
			list = strings.Join(present, ", ")
		}
		return 0, info, newError(op, ErrTokenNotFound, nil,
			"token %q not found in module %s (tokens present: %s)", label, path, list)
	default:
		return 0, info, newError(op, ErrTokenNotFound, nil,
			"%d tokens are labelled %q in module %s; the label must be unique", len(found), label, path)
	}
}

// checkPINFlags refuses a token whose user PIN is locked or not set,
// before any login attempt.
func checkPINFlags(op, token string, flags uint) error {
	switch {
	case flags&pkcs11.CKF_USER_PIN_LOCKED != 0:
		return newError(op, ErrPINLocked, nil, "user PIN of token %q is locked (the security officer must unlock it)", token)
	case flags&pkcs11.CKF_USER_PIN_INITIALIZED == 0:
		return newError(op, ErrPINIncorrect, nil, "token %q has no user PIN set (initialize it with the token's tools)", token)
	}
	return nil
}
