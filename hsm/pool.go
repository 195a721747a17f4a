package hsm

import (
	"context"

	"github.com/miekg/pkcs11"
)

// pool is a bounded, context-aware pool of PKCS#11 sessions.
//
// A session handle is owned by exactly one goroutine between get and put:
// PKCS#11 forbids concurrent use of a session, and SoftHSM crashes the
// process when it happens. Ownership moves through channels only, so the
// invariant holds by construction:
//
//	len(idle) + len(free) + (sessions checked out) == size
//
// free holds one token per session that may still be opened; sessions are
// opened lazily, up to size, only when no idle one is available. A broken
// session is closed and its token returned to free, so the next get opens
// a replacement.
type pool struct {
	idle  chan pkcs11.SessionHandle
	free  chan struct{}
	open  func(op string) (pkcs11.SessionHandle, error)
	close func(pkcs11.SessionHandle)
	done  <-chan struct{} // closed when the Module closes
}

func newPool(size int, done <-chan struct{}, open func(op string) (pkcs11.SessionHandle, error), closeFn func(pkcs11.SessionHandle)) *pool {
	p := &pool{
		idle:  make(chan pkcs11.SessionHandle, size),
		free:  make(chan struct{}, size),
		open:  open,
		close: closeFn,
		done:  done,
	}
	for range size {
		p.free <- struct{}{}
	}
	return p
}

// get returns a session for the caller's exclusive use until put. It
// prefers an idle session, opens a new one (op names the operation in
// errors) if the pool is not full, and otherwise waits for one to be put
// back, for ctx or for the Module to close.
func (p *pool) get(ctx context.Context, op string) (pkcs11.SessionHandle, error) {
	select {
	case sh := <-p.idle:
		return sh, nil
	default:
	}
	select {
	case sh := <-p.idle:
		return sh, nil
	case <-p.free:
		sh, err := p.open(op)
		if err != nil {
			p.free <- struct{}{}
			return 0, err
		}
		return sh, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-p.done:
		return 0, ErrClosed
	}
}

// put gives a session back. A broken session is closed and replaced
// lazily by a later get.
func (p *pool) put(sh pkcs11.SessionHandle, broken bool) {
	if broken {
		p.close(sh)
		p.free <- struct{}{}
		return
	}
	p.idle <- sh
}

// drain closes every idle session. Module.Close calls it once no
// operation is in flight, so every session is idle by then.
func (p *pool) drain() {
	for {
		select {
		case sh := <-p.idle:
			p.close(sh)
			p.free <- struct{}{}
		default:
			return
		}
	}
}
