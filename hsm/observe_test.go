package hsm

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
)

// observation is one call of Config.Observe.
type observation struct {
	op  string
	d   time.Duration
	err error
}

// recorder collects observations; safe for concurrent use.
type recorder struct {
	mu  sync.Mutex
	obs []observation
}

func (r *recorder) observe(op string, d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.obs = append(r.obs, observation{op, d, err})
}

// take returns the observations so far and forgets them.
func (r *recorder) take() []observation {
	r.mu.Lock()
	defer r.mu.Unlock()
	o := r.obs
	r.obs = nil
	return o
}

func TestObserve(t *testing.T) {
	e := newFakeEnv(t)
	var rec recorder
	e.cfg.Observe = rec.observe
	m := e.open(t)
	ctx := context.Background()
	if got := rec.take(); len(got) != 1 || got[0].op != "open" || got[0].err != nil || got[0].d <= 0 {
		t.Fatalf("after Open: %+v, want one successful open", got)
	}
	ct, err := m.Wrap(ctx, []byte("rek"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), ct...)
	bad[len(bad)-1] ^= 1
	e.h.delay = 5 * time.Millisecond

	// Every public operation is observed once, with the caller's error.
	cases := []struct {
		name    string
		run     func() error
		op      string
		wantErr error // nil: success; errAny: any error
	}{
		{"unwrap", func() error { _, err := m.Unwrap(ctx, ct, []byte("aad")); return err }, "unwrap", nil},
		{"unwrap not authentic", func() error { _, err := m.Unwrap(ctx, bad, []byte("aad")); return err }, "unwrap", ErrNotAuthentic},
		{"ping", func() error { return m.Ping(ctx) }, "ping", nil},
		{"wrap fails in the HSM", func() error {
			e.h.fail("Encrypt", pkcs11.Error(pkcs11.CKR_DATA_LEN_RANGE))
			_, err := m.Wrap(ctx, []byte("rek"), nil)
			return err
		}, "wrap", errAny},
		{"wrap retried on a fresh session", func() error {
			e.h.fail("Encrypt", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR)) // first attempt only
			_, err := m.Wrap(ctx, []byte("rek"), nil)
			return err
		}, "wrap", nil},
	}
	rec.take()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			if (err == nil) != (tc.wantErr == nil) {
				t.Fatalf("%s: err = %v", tc.name, err)
			}
			got := rec.take()
			if len(got) != 1 {
				t.Fatalf("observations: %+v, want exactly one", got)
			}
			o := got[0]
			if o.op != tc.op {
				t.Errorf("op = %q, want %q", o.op, tc.op)
			}
			if o.err != err {
				t.Errorf("observed error %v, caller got %v", o.err, err)
			}
			if tc.wantErr != nil && tc.wantErr != errAny && !errors.Is(o.err, tc.wantErr) {
				t.Errorf("observed error %v, want %v", o.err, tc.wantErr)
			}
			if tc.op != "ping" && o.d < e.h.delay { // ping does no crypto, so no fake delay
				t.Errorf("duration %v, below the HSM's %v delay", o.d, e.h.delay)
			}
		})
	}

	// Too short to be a ciphertext: refused before any HSM call.
	if _, err := m.Unwrap(ctx, []byte("short"), nil); !errors.Is(err, ErrNotAuthentic) {
		t.Fatal(err)
	}
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("a refused Unwrap was observed: %+v", got)
	}
	// A failed Open is observed too, and after Close operations report ErrClosed.
	bad2 := newFakeEnv(t)
	bad2.cfg.PIN = "9999"
	bad2.cfg.Observe = rec.observe
	if _, err := open(ctx, bad2.cfg, bad2.load); !errors.Is(err, ErrPINIncorrect) {
		t.Fatalf("open with a wrong PIN: %v", err)
	}
	if got := rec.take(); len(got) != 1 || got[0].op != "open" || !errors.Is(got[0].err, ErrPINIncorrect) {
		t.Fatalf("failed open: %+v", got)
	}
	m.Close()
	if err := m.Ping(ctx); !errors.Is(err, ErrClosed) {
		t.Fatal(err)
	}
	if got := rec.take(); len(got) != 1 || !errors.Is(got[0].err, ErrClosed) {
		t.Fatalf("ping after Close: %+v", got)
	}
}

// errAny marks a case that must fail with any error.
var errAny = errors.New("any error")
