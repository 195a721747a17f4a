package softhsmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/kmsd/kmsd/hsm"
	"github.com/miekg/pkcs11"
)

// maxLabel is the size of CK_TOKEN_INFO.label.
const maxLabel = 32

// library is this package's own handle on libsofthsm2.so, initialized
// once and never finalized (see the package doc).
type library struct{ ctx *pkcs11.Ctx }

// setup runs once per process: directory, SOFTHSM2_CONF, C_Initialize.
func setup() {
	proc.module = ModulePath()
	dir, err := os.MkdirTemp("", "kmsd-softhsm-")
	if err != nil {
		proc.err = err
		return
	}
	proc.dir = dir
	proc.conf = filepath.Join(dir, "softhsm2.conf")
	proc.live = make(map[string]*Token)
	if err := ensureDir(); err != nil {
		proc.err = err
		return
	}
	if err := os.Setenv("SOFTHSM2_CONF", proc.conf); err != nil {
		proc.err = err
		return
	}
	ctx := pkcs11.New(proc.module)
	if ctx == nil {
		proc.err = fmt.Errorf("cannot load %s", proc.module)
		return
	}
	if err := ctx.Initialize(); err != nil {
		if errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
			err = errors.New("SoftHSM was initialized in this process before the first softhsmtest.New, " +
				"so it does not read our SOFTHSM2_CONF; create test tokens before opening any other SoftHSM token")
		}
		proc.err = fmt.Errorf("C_Initialize of %s: %w", proc.module, err)
		return
	}
	proc.lib = &library{ctx: ctx}
}

// confText is the SoftHSM configuration of the process directory.
func confText() []byte {
	return fmt.Appendf(nil, "# written by kmsd internal/softhsmtest\n"+
		"directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
		filepath.Join(proc.dir, "tokens"))
}

// ensureDir (re)creates the process directory and its configuration; the
// last token's cleanup removes them.
func ensureDir() error {
	if err := os.MkdirAll(filepath.Join(proc.dir, "tokens"), 0o700); err != nil {
		return err
	}
	want := confText()
	if have, err := os.ReadFile(proc.conf); err == nil && bytes.Equal(have, want) {
		return nil
	}
	return os.WriteFile(proc.conf, want, 0o600)
}

// tokenDirs lists the token directories SoftHSM has created.
func tokenDirs() ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(proc.dir, "tokens"))
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
		}
	}
	return dirs, nil
}

// create makes a token and its key. See New.
func create(label string) (*Token, error) {
	proc.once.Do(setup)
	if proc.err != nil {
		return nil, proc.err
	}
	proc.mu.Lock()
	defer proc.mu.Unlock()
	if err := ensureDir(); err != nil {
		return nil, err
	}
	tok := &Token{
		Dir:        proc.dir,
		ConfPath:   proc.conf,
		Label:      uniqueLabel(label, proc.live),
		KeyLabel:   KeyLabel,
		ModulePath: proc.module,
	}
	soPIN, err := randomPIN()
	if err != nil {
		return nil, err
	}
	if tok.PIN, err = randomPIN(); err != nil {
		return nil, err
	}
	before, err := tokenDirs()
	if err != nil {
		return nil, err
	}
	if err := proc.lib.initToken(tok.Label, soPIN, tok.PIN); err != nil {
		return nil, fmt.Errorf("creating token %q: %w", tok.Label, err)
	}
	after, err := tokenDirs()
	if err != nil {
		return nil, err
	}
	for _, d := range after {
		if !slices.Contains(before, d) {
			tok.tokenDir = filepath.Join(proc.dir, "tokens", d)
		}
	}
	proc.live[tok.Label] = tok // from here on, remove cleans it up
	if err := hsm.GenerateKey(context.Background(), tok.Config()); err != nil {
		return nil, errors.Join(err, removeLocked(tok))
	}
	return tok, nil
}

// initToken runs C_InitToken on a free slot and sets the user PIN.
func (l *library) initToken(label, soPIN, userPIN string) error {
	slot, err := l.slot(func(ti pkcs11.TokenInfo) bool { return ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 })
	if err != nil {
		return fmt.Errorf("no free slot: %w", err)
	}
	if err := l.ctx.InitToken(slot, soPIN, label); err != nil {
		return fmt.Errorf("C_InitToken: %w", err)
	}
	slot, err = l.slot(func(ti pkcs11.TokenInfo) bool {
		return ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0 && ti.Label == label
	})
	if err != nil {
		return fmt.Errorf("token not visible after C_InitToken: %w", err)
	}
	sh, err := l.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("C_OpenSession: %w", err)
	}
	defer func() { _ = l.ctx.CloseSession(sh) }()
	if err := l.ctx.Login(sh, pkcs11.CKU_SO, soPIN); err != nil {
		return fmt.Errorf("C_Login as SO: %w", err)
	}
	if err := l.ctx.InitPIN(sh, userPIN); err != nil {
		return fmt.Errorf("C_InitPIN: %w", err)
	}
	// Nobody else has a session on the new token, so logging out affects
	// no one.
	if err := l.ctx.Logout(sh); err != nil {
		return fmt.Errorf("C_Logout: %w", err)
	}
	return nil
}

// slot returns the first slot whose readable token info satisfies match.
// Slots of deleted tokens (CKR_GENERAL_ERROR) are skipped.
func (l *library) slot(match func(pkcs11.TokenInfo) bool) (uint, error) {
	slots, err := l.ctx.GetSlotList(true)
	if err != nil {
		return 0, err
	}
	for _, s := range slots {
		if ti, err := l.ctx.GetTokenInfo(s); err == nil && match(ti) {
			return s, nil
		}
	}
	return 0, fmt.Errorf("none of %d slots matches", len(slots))
}

// remove deletes a token created by New.
func remove(tok *Token) error {
	proc.mu.Lock()
	defer proc.mu.Unlock()
	return removeLocked(tok)
}

func removeLocked(tok *Token) error {
	delete(proc.live, tok.Label)
	var err error
	if tok.tokenDir != "" {
		err = os.RemoveAll(tok.tokenDir)
	}
	if len(proc.live) == 0 {
		err = errors.Join(err, os.RemoveAll(proc.dir))
	}
	return err
}
