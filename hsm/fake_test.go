package hsm

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
)

// fakeHSM is an in-memory PKCS#11 token set implementing p11. It does real
// AES-GCM, enforces the PKCS#11 rules this package relies on (one login per
// token, login dropped with the last session) and records violations of
// session exclusivity and unfreed GCM parameters.
type fakeHSM struct {
	mu          sync.Mutex
	initErr     error // returned by Initialize, e.g. CKR_CRYPTOKI_ALREADY_INITIALIZED
	initCalls   int
	finalCalls  int
	tokens      []*fakeToken // slot ID = index
	sessions    map[pkcs11.SessionHandle]*fakeSession
	next        uint
	opened      int // sessions ever opened
	closed      int // sessions ever closed
	loginCalls  int
	gcms        map[*pkcs11.Mechanism]*fakeGCM
	allocated   int
	freed       int
	failures    map[string][]error // per method: errors returned by the next calls
	badSessInfo bool               // GetSessionInfo fails (a dying device)

	hsmIV           bool // the HSM picks its own IV and reports it via IV()
	hsmIVUnreported bool // the HSM picks its own IV but IV() returns the caller's
	tagErr          uint // code for a tag mismatch; 0 means CKR_GENERAL_ERROR (SoftHSM)
	delay           time.Duration
	block           chan struct{} // if set, Encrypt waits on it

	inUse      sync.Map // SessionHandle -> struct{}
	violations atomic.Int32
	active     atomic.Int32
	maxActive  atomic.Int32
}

type fakeToken struct {
	label    string
	pin      string
	flags    uint
	max      uint
	loggedIn bool
	keys     []*fakeKey
}

type fakeKey struct {
	handle pkcs11.ObjectHandle
	aead   cipher.AEAD
	attrs  map[uint][]byte
}

type fakeSession struct {
	slot uint
	op   *fakeOp
	find []pkcs11.ObjectHandle
}

type fakeOp struct {
	encrypt bool
	key     *fakeKey
	gcm     *fakeGCM
}

type fakeGCM struct {
	h        *fakeHSM
	iv, aad  []byte
	reported []byte
	freed    bool
}

func (g *fakeGCM) IV() []byte { return bytes.Clone(g.reported) }

func (g *fakeGCM) Free() {
	g.h.mu.Lock()
	defer g.h.mu.Unlock()
	if !g.freed {
		g.freed = true
		g.h.freed++
	}
}

func newFake() *fakeHSM {
	return &fakeHSM{
		sessions: make(map[pkcs11.SessionHandle]*fakeSession),
		gcms:     make(map[*pkcs11.Mechanism]*fakeGCM),
		failures: make(map[string][]error),
		next:     100,
	}
}

// addToken adds an initialized token with a user PIN.
func (h *fakeHSM) addToken(label, pin string) *fakeToken {
	h.mu.Lock()
	defer h.mu.Unlock()
	t := &fakeToken{label: label, pin: pin, flags: pkcs11.CKF_TOKEN_INITIALIZED | pkcs11.CKF_USER_PIN_INITIALIZED}
	h.tokens = append(h.tokens, t)
	return t
}

// addKey adds an AES-256 wrapping key; extra overrides attributes.
func (h *fakeHSM) addKey(t *fakeToken, label string, extra ...*pkcs11.Attribute) *fakeKey {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.newKeyLocked(t, append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_ID, []byte{}),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
	}, extra...))
}

func (h *fakeHSM) newKeyLocked(t *fakeToken, tmpl []*pkcs11.Attribute) *fakeKey {
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	block, _ := aes.NewCipher(raw)
	aead, _ := cipher.NewGCM(block)
	k := &fakeKey{handle: pkcs11.ObjectHandle(h.next), aead: aead, attrs: make(map[uint][]byte)}
	h.next++
	for _, a := range tmpl {
		k.attrs[a.Type] = a.Value
	}
	var zero [16]byte
	k.attrs[pkcs11.CKA_CHECK_VALUE] = make([]byte, 16)
	block.Encrypt(k.attrs[pkcs11.CKA_CHECK_VALUE], zero[:])
	k.attrs[pkcs11.CKA_CHECK_VALUE] = k.attrs[pkcs11.CKA_CHECK_VALUE][:3]
	t.keys = append(t.keys, k)
	return k
}

// fail makes the next calls of method return errs, in order.
func (h *fakeHSM) fail(method string, errs ...error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.failures[method] = append(h.failures[method], errs...)
}

func (h *fakeHSM) injected(method string) error {
	q := h.failures[method]
	if len(q) == 0 {
		return nil
	}
	h.failures[method] = q[1:]
	return q[0]
}

// enter marks sh in use for the duration of a call and records a
// violation if another goroutine is using it.
func (h *fakeHSM) enter(sh pkcs11.SessionHandle) func() {
	if _, busy := h.inUse.LoadOrStore(sh, struct{}{}); busy {
		h.violations.Add(1)
		return func() {}
	}
	n := h.active.Add(1)
	for {
		m := h.maxActive.Load()
		if n <= m || h.maxActive.CompareAndSwap(m, n) {
			break
		}
	}
	return func() { h.active.Add(-1); h.inUse.Delete(sh) }
}

func (h *fakeHSM) session(sh pkcs11.SessionHandle) (*fakeSession, error) {
	s := h.sessions[sh]
	if s == nil {
		return nil, pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID)
	}
	return s, nil
}

func (h *fakeHSM) key(s *fakeSession, o pkcs11.ObjectHandle) (*fakeKey, error) {
	for _, k := range h.tokens[s.slot].keys {
		if k.handle == o {
			return k, nil
		}
	}
	return nil, pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID)
}

func (h *fakeHSM) Initialize(...pkcs11.InitializeOption) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.initCalls++
	return h.initErr
}

func (h *fakeHSM) Finalize() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.finalCalls++
	return nil
}

func (h *fakeHSM) GetSlotList(bool) ([]uint, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.injected("GetSlotList"); err != nil {
		return nil, err
	}
	var slots []uint
	for i := range h.tokens {
		slots = append(slots, uint(i))
	}
	return slots, nil
}

func (h *fakeHSM) GetTokenInfo(slot uint) (pkcs11.TokenInfo, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.injected("GetTokenInfo"); err != nil {
		return pkcs11.TokenInfo{}, err
	}
	t := h.tokens[slot]
	max := t.max
	if max == 0 {
		max = pkcs11.CK_EFFECTIVELY_INFINITE
	}
	return pkcs11.TokenInfo{Label: t.label, Flags: t.flags, MaxSessionCount: max}, nil
}

func (h *fakeHSM) OpenSession(slot uint, flags uint) (pkcs11.SessionHandle, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.injected("OpenSession"); err != nil {
		return 0, err
	}
	if flags&pkcs11.CKF_SERIAL_SESSION == 0 {
		return 0, pkcs11.Error(pkcs11.CKR_SESSION_PARALLEL_NOT_SUPPORTED)
	}
	n := 0
	for _, s := range h.sessions {
		if s.slot == slot {
			n++
		}
	}
	if max := h.tokens[slot].max; max != 0 && uint(n) >= max {
		return 0, pkcs11.Error(pkcs11.CKR_SESSION_COUNT)
	}
	sh := pkcs11.SessionHandle(h.next)
	h.next++
	h.sessions[sh] = &fakeSession{slot: slot}
	h.opened++
	return sh, nil
}

func (h *fakeHSM) CloseSession(sh pkcs11.SessionHandle) error {
	defer h.enter(sh)()
	h.mu.Lock()
	defer h.mu.Unlock()
	s, err := h.session(sh)
	if err != nil {
		return err
	}
	delete(h.sessions, sh)
	h.closed++
	for _, o := range h.sessions {
		if o.slot == s.slot {
			return nil
		}
	}
	h.tokens[s.slot].loggedIn = false // the last session logs out
	return nil
}

func (h *fakeHSM) GetSessionInfo(sh pkcs11.SessionHandle) (pkcs11.SessionInfo, error) {
	defer h.enter(sh)()
	h.mu.Lock()
	defer h.mu.Unlock()
	s, err := h.session(sh)
	if err != nil {
		return pkcs11.SessionInfo{}, err
	}
	if h.badSessInfo {
		return pkcs11.SessionInfo{}, pkcs11.Error(pkcs11.CKR_DEVICE_ERROR)
	}
	state := uint(pkcs11.CKS_RO_PUBLIC_SESSION)
	if h.tokens[s.slot].loggedIn {
		state = pkcs11.CKS_RO_USER_FUNCTIONS
	}
	return pkcs11.SessionInfo{SlotID: s.slot, State: state}, nil
}

func (h *fakeHSM) Login(sh pkcs11.SessionHandle, userType uint, pin string) error {
	defer h.enter(sh)()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.loginCalls++
	s, err := h.session(sh)
	if err != nil {
		return err
	}
	if err := h.injected("Login"); err != nil {
		return err
	}
	t := h.tokens[s.slot]
	switch {
	case t.loggedIn:
		return pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)
	case userType != pkcs11.CKU_USER:
		return pkcs11.Error(pkcs11.CKR_USER_TYPE_INVALID)
	case pin != t.pin:
		return pkcs11.Error(pkcs11.CKR_PIN_INCORRECT)
	}
	t.loggedIn = true
	return nil
}

func (h *fakeHSM) FindObjectsInit(sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) error {
	defer h.enter(sh)()
	h.mu.Lock()
	defer h.mu.Unlock()
	s, err := h.session(sh)
	if err != nil {
		return err
	}
	s.find = nil
	for _, k := range h.tokens[s.slot].keys {
		match := true
		for _, a := range tmpl {
			if !bytes.Equal(k.attrs[a.Type], a.Value) {
				match = false
			}
		}
		if match {
			s.find = append(s.find, k.handle)
		}
	}
	return nil
}

func (h *fakeHSM) FindObjects(sh pkcs11.SessionHandle, max int) ([]pkcs11.ObjectHandle, bool, error) {
	defer h.enter(sh)()
	h.mu.Lock()
	defer h.mu.Unlock()
	s, err := h.session(sh)
	if err != nil {
		return nil, false, err
	}
	n := min(max, len(s.find))
	out := s.find[:n]
	s.find = s.find[n:]
	return out, false, nil
}

func (h *fakeHSM) FindObjectsFinal(sh pkcs11.SessionHandle) error {
	defer h.enter(sh)()
	return nil
}

func (h *fakeHSM) GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error) {
	defer h.enter(sh)()
	h.mu.Lock()
	defer h.mu.Unlock()
	s, err := h.session(sh)
	if err != nil {
		return nil, err
	}
	k, err := h.key(s, o)
	if err != nil {
		return nil, err
	}
	var out []*pkcs11.Attribute
	for _, want := range a {
		v, ok := k.attrs[want.Type]
		if !ok {
			return nil, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_TYPE_INVALID)
		}
		out = append(out, pkcs11.NewAttribute(want.Type, v))
	}
	return out, nil
}

func (h *fakeHSM) GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	defer h.enter(sh)()
	h.mu.Lock()
	defer h.mu.Unlock()
	s, err := h.session(sh)
	if err != nil {
		return 0, err
	}
	if len(m) != 1 || m[0].Mechanism != pkcs11.CKM_AES_KEY_GEN {
		return 0, pkcs11.Error(pkcs11.CKR_MECHANISM_INVALID)
	}
	return h.newKeyLocked(h.tokens[s.slot], tmpl).handle, nil
}

func (h *fakeHSM) newGCM(iv, aad []byte, tagBits int) (*pkcs11.Mechanism, gcmParams) {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, nil)
	g := &fakeGCM{h: h, iv: bytes.Clone(iv), aad: bytes.Clone(aad)}
	h.gcms[m] = g
	h.allocated++
	return m, g
}

func (h *fakeHSM) cryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle, encrypt bool) error {
	defer h.enter(sh)()
	h.mu.Lock()
	defer h.mu.Unlock()
	s, err := h.session(sh)
	if err != nil {
		return err
	}
	if s.op != nil {
		return pkcs11.Error(pkcs11.CKR_OPERATION_ACTIVE)
	}
	k, err := h.key(s, o)
	if err != nil {
		return pkcs11.Error(pkcs11.CKR_KEY_HANDLE_INVALID)
	}
	g := h.gcms[m[0]]
	if g == nil || g.freed {
		return pkcs11.Error(pkcs11.CKR_MECHANISM_PARAM_INVALID)
	}
	s.op = &fakeOp{encrypt: encrypt, key: k, gcm: g}
	return nil
}

func (h *fakeHSM) EncryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	return h.cryptInit(sh, m, o, true)
}

func (h *fakeHSM) DecryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	return h.cryptInit(sh, m, o, false)
}

// takeOp ends the session's operation, as C_Encrypt/C_Decrypt do.
func (h *fakeHSM) takeOp(sh pkcs11.SessionHandle, encrypt bool, method string) (*fakeOp, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s, err := h.session(sh)
	if err != nil {
		return nil, err
	}
	op := s.op
	s.op = nil
	if op == nil || op.encrypt != encrypt {
		return nil, pkcs11.Error(pkcs11.CKR_OPERATION_NOT_INITIALIZED)
	}
	if err := h.injected(method); err != nil {
		return nil, err
	}
	return op, nil
}

func (h *fakeHSM) Encrypt(sh pkcs11.SessionHandle, msg []byte) ([]byte, error) {
	defer h.enter(sh)()
	if h.block != nil {
		<-h.block
	}
	time.Sleep(h.delay)
	op, err := h.takeOp(sh, true, "Encrypt")
	if err != nil {
		return nil, err
	}
	iv := op.gcm.iv
	op.gcm.reported = iv
	if h.hsmIV || h.hsmIVUnreported {
		iv = make([]byte, 12)
		_, _ = rand.Read(iv)
		if h.hsmIV {
			op.gcm.reported = iv
		}
	}
	return op.key.aead.Seal(nil, iv, msg, op.gcm.aad), nil
}

func (h *fakeHSM) Decrypt(sh pkcs11.SessionHandle, ct []byte) ([]byte, error) {
	defer h.enter(sh)()
	time.Sleep(h.delay)
	op, err := h.takeOp(sh, false, "Decrypt")
	if err != nil {
		return nil, err
	}
	pt, err := op.key.aead.Open(nil, op.gcm.iv, ct, op.gcm.aad)
	if err != nil {
		if h.tagErr != 0 {
			return nil, pkcs11.Error(h.tagErr)
		}
		return nil, pkcs11.Error(pkcs11.CKR_GENERAL_ERROR)
	}
	return pt, nil
}

// counts returns (sessions open now, opened, closed, params allocated,
// params freed, logins that succeeded or were tried).
func (h *fakeHSM) counts() (open, opened, closed, alloc, freed, logins int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.sessions), h.opened, h.closed, h.allocated, h.freed, h.loginCalls
}

// fakeEnv is one fake module with one token "tok" (PIN "1234") holding key
// "wrap", registered under a path unique to the test.
type fakeEnv struct {
	h    *fakeHSM
	tok  *fakeToken
	key  *fakeKey
	cfg  Config
	load loader
}

// fakeEnvs makes every fake module path unique: the process-wide library
// registry never forgets a path, so a repeated test (-count=N) must not
// find the previous run's fake under the same name.
var fakeEnvs atomic.Int64

func newFakeEnv(t *testing.T) *fakeEnv {
	t.Helper()
	h := newFake()
	tok := h.addToken("tok", "1234")
	key := h.addKey(tok, "wrap")
	return &fakeEnv{
		h:    h,
		tok:  tok,
		key:  key,
		cfg:  Config{ModulePath: fmt.Sprintf("/fake/%s-%d.so", t.Name(), fakeEnvs.Add(1)), TokenLabel: "tok", PIN: "1234", KeyLabel: "wrap"},
		load: func(string) (p11, error) { return h, nil },
	}
}

func (e *fakeEnv) open(t *testing.T) *Module {
	t.Helper()
	m, err := open(context.Background(), e.cfg, e.load)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}
