package hsm

import (
	"sync"

	"github.com/miekg/pkcs11"
)

// library is one loaded PKCS#11 module, shared by every Module (and every
// GenerateKey call) of the process that names the same path. C_Initialize
// and C_Finalize are process-wide in PKCS#11, so they are reference
// counted here: the first user initializes, the last one finalizes, and
// two Modules on the same .so never finalize each other.
type library struct {
	path string
	ctx  p11
	refs int
	// owner is true when this package's C_Initialize succeeded. When it
	// returned CKR_CRYPTOKI_ALREADY_INITIALIZED, someone else in the
	// process (another library, a test helper) owns the initialization
	// and this package never calls C_Finalize.
	owner bool
}

// libraries maps a module path to its library. Entries are never removed:
// the module stays loaded (dlopen'ed) until the process exits, because
// unloading a library that links OpenSSL (SoftHSM does) can leave
// dangling exit handlers behind. A later Open after the last Close calls
// C_Initialize again on the same handle.
var libraries = struct {
	sync.Mutex
	m map[string]*library
}{m: make(map[string]*library)}

// acquire returns the initialized library for path, loading it with load
// on first use.
func acquire(path string, load loader) (*library, error) {
	libraries.Lock()
	defer libraries.Unlock()
	lib := libraries.m[path]
	if lib == nil {
		ctx, err := load(path)
		if err != nil {
			return nil, newError("open", ErrModuleNotFound, nil, "%v", err)
		}
		lib = &library{path: path, ctx: ctx}
		libraries.m[path] = lib
	}
	if lib.refs == 0 {
		err := lib.ctx.Initialize()
		switch {
		case err == nil:
			lib.owner = true
		case hasCode(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED):
			lib.owner = false
		default:
			return nil, newError("open", nil, err, "C_Initialize of module %s failed", path)
		}
	}
	lib.refs++
	return lib, nil
}

// release drops one reference; the last one finalizes the module if this
// package initialized it.
func (lib *library) release() error {
	libraries.Lock()
	defer libraries.Unlock()
	lib.refs--
	if lib.refs > 0 || !lib.owner {
		return nil
	}
	lib.owner = false
	if err := lib.ctx.Finalize(); err != nil {
		return newError("close", nil, err, "C_Finalize of module %s failed", lib.path)
	}
	return nil
}
