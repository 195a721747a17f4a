package hsm

import (
	"fmt"
	"os"

	"github.com/miekg/pkcs11"
)

// p11 is the subset of *pkcs11.Ctx that this package calls, plus newGCM,
// which builds CKM_AES_GCM parameters. Every cgo call of the package goes
// through it, so unit tests run against a fake (fake_test.go) and
// integration tests against SoftHSM2.
type p11 interface {
	Initialize(opts ...pkcs11.InitializeOption) error
	Finalize() error
	GetSlotList(tokenPresent bool) ([]uint, error)
	GetTokenInfo(slotID uint) (pkcs11.TokenInfo, error)
	OpenSession(slotID uint, flags uint) (pkcs11.SessionHandle, error)
	CloseSession(sh pkcs11.SessionHandle) error
	GetSessionInfo(sh pkcs11.SessionHandle) (pkcs11.SessionInfo, error)
	Login(sh pkcs11.SessionHandle, userType uint, pin string) error
	FindObjectsInit(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) error
	FindObjects(sh pkcs11.SessionHandle, max int) ([]pkcs11.ObjectHandle, bool, error)
	FindObjectsFinal(sh pkcs11.SessionHandle) error
	GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error)
	GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)
	EncryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error
	Encrypt(sh pkcs11.SessionHandle, message []byte) ([]byte, error)
	DecryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error
	Decrypt(sh pkcs11.SessionHandle, cipher []byte) ([]byte, error)

	// newGCM returns a CKM_AES_GCM mechanism and its parameters. The
	// parameters must be freed after the operation that used them.
	newGCM(iv, aad []byte, tagBits int) (*pkcs11.Mechanism, gcmParams)
}

// gcmParams is what this package uses of *pkcs11.GCMParams. IV reads the
// IV back from the C structure after C_Encrypt (some HSMs write their own);
// Free releases the C memory.
type gcmParams interface {
	IV() []byte
	Free()
}

// cgoCtx is the production p11: miekg/pkcs11 itself.
type cgoCtx struct{ *pkcs11.Ctx }

func (cgoCtx) newGCM(iv, aad []byte, tagBits int) (*pkcs11.Mechanism, gcmParams) {
	params := pkcs11.NewGCMParams(iv, aad, tagBits)
	return pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params), params
}

// loader turns a module path into a p11. Open uses loadModule; unit tests
// pass a loader that returns a fake.
type loader func(path string) (p11, error)

// loadModule dlopens a PKCS#11 module. miekg's New returns nil for a
// missing file and for a file that is not a loadable PKCS#11 module alike,
// so the file is checked first to tell the operator which one it is.
func loadModule(path string) (p11, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("module %s not found: %w", path, err)
	}
	ctx := pkcs11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("module %s exists but could not be loaded (not a PKCS#11 library, wrong architecture or missing dependencies)", path)
	}
	return cgoCtx{ctx}, nil
}
