package hsm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
)

func TestPoolExclusiveUnderLoad(t *testing.T) {
	for _, size := range []int{1, 4} {
		t.Run(fmt.Sprint("size", size), func(t *testing.T) {
			e := newFakeEnv(t)
			e.h.delay = 20 * time.Microsecond
			e.cfg.MaxSessions = size
			m := e.open(t)
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			for g := range 64 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 20 {
						pt := []byte(fmt.Sprintf("secret %d/%d", g, i))
						ct, err := m.Wrap(context.Background(), pt, []byte("aad"))
						if err != nil {
							errs <- err
							return
						}
						got, err := m.Unwrap(context.Background(), ct, []byte("aad"))
						if err != nil || !bytes.Equal(got, pt) {
							errs <- fmt.Errorf("unwrap: %q, %v", got, err)
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if v := e.h.violations.Load(); v != 0 {
				t.Fatalf("%d concurrent uses of one session", v)
			}
			open, opened, _, alloc, freed, logins := e.h.counts()
			if open > size || opened > size {
				t.Errorf("sessions open %d, ever opened %d; pool size %d", open, opened, size)
			}
			if alloc != freed {
				t.Errorf("GCM params: %d allocated, %d freed", alloc, freed)
			}
			if logins != 1 {
				t.Errorf("C_Login called %d times, want 1", logins)
			}
		})
	}
}

func TestPoolOpensLazily(t *testing.T) {
	e := newFakeEnv(t)
	e.cfg.MaxSessions = 8
	m := e.open(t)
	for range 10 {
		if _, err := m.Wrap(context.Background(), []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, opened, _, _, _, _ := e.h.counts(); opened != 1 {
		t.Fatalf("sequential use opened %d sessions, want 1", opened)
	}
}

func TestPoolSizeCappedByToken(t *testing.T) {
	tests := []struct {
		name      string
		want, max uint
		size      int
	}{
		{"token smaller", 4, 2, 2},
		{"token larger", 3, 10, 3},
		{"token unlimited", 4, pkcs11.CK_EFFECTIVELY_INFINITE, 4},
		{"token unknown", 5, pkcs11.CK_UNAVAILABLE_INFORMATION, 5},
	}
	for _, tt := range tests {
		if got := poolSize(int(tt.want), tt.max); got != tt.size {
			t.Errorf("%s: poolSize(%d, %d) = %d, want %d", tt.name, tt.want, tt.max, got, tt.size)
		}
	}

	e := newFakeEnv(t)
	e.tok.max = 2
	e.h.delay = 50 * time.Microsecond
	m := e.open(t)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := m.Wrap(context.Background(), []byte("x"), nil); err != nil {
				t.Error(err) // CKR_SESSION_COUNT if the pool went above the token's maximum
			}
		}()
	}
	wg.Wait()
	if _, opened, _, _, _, _ := e.h.counts(); opened > 2 {
		t.Fatalf("opened %d sessions on a token allowing 2", opened)
	}
}

// holdSession blocks one Wrap inside C_Encrypt and returns a function that
// releases it and waits for it to finish.
func holdSession(t *testing.T, e *fakeEnv, m *Module) (release func()) {
	t.Helper()
	e.h.block = make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := m.Wrap(context.Background(), []byte("held"), nil); err != nil {
			t.Errorf("held wrap: %v", err)
		}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for e.h.active.Load() == 0 { // wait until it is inside C_Encrypt
		if time.Now().After(deadline) {
			t.Fatal("the held operation never reached C_Encrypt")
		}
		time.Sleep(time.Millisecond)
	}
	return func() { close(e.h.block); <-done }
}

func TestPoolWaitHonoursContext(t *testing.T) {
	e := newFakeEnv(t)
	e.cfg.MaxSessions = 1
	m := e.open(t)
	release := holdSession(t, e, m)
	defer release()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := m.Wrap(ctx, []byte("x"), nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wrap with a busy pool: %v, want context.DeadlineExceeded", err)
	}
}

func TestCloseWakesWaitersAndWaitsForRunningOps(t *testing.T) {
	e := newFakeEnv(t)
	e.cfg.MaxSessions = 1
	m, err := open(context.Background(), e.cfg, e.load)
	if err != nil {
		t.Fatal(err)
	}
	release := holdSession(t, e, m)

	waiter := make(chan error, 1)
	go func() { _, err := m.Unwrap(context.Background(), make([]byte, 40), nil); waiter <- err }()
	time.Sleep(10 * time.Millisecond) // let it block in the pool

	closed := make(chan error, 1)
	go func() { closed <- m.Close() }()
	if err := <-waiter; !errors.Is(err, ErrClosed) {
		t.Fatalf("waiter: %v, want ErrClosed", err)
	}
	select {
	case <-closed:
		t.Fatal("Close returned while an operation was running")
	case <-time.After(20 * time.Millisecond):
	}
	release()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if open, _, _, _, _, _ := e.h.counts(); open != 0 {
		t.Fatalf("%d sessions still open after Close", open)
	}
	if _, err := m.Wrap(context.Background(), []byte("x"), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Wrap after Close: %v, want ErrClosed", err)
	}
	if err := m.Ping(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ping after Close: %v, want ErrClosed", err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestBrokenSessionIsReplaced(t *testing.T) {
	for _, code := range []uint{pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_SESSION_CLOSED} {
		t.Run(pkcs11.Error(code).Error(), func(t *testing.T) {
			e := newFakeEnv(t)
			m := e.open(t)
			e.h.fail("Encrypt", pkcs11.Error(code))
			ct, err := m.Wrap(context.Background(), []byte("x"), nil)
			if err != nil {
				t.Fatalf("Wrap did not retry on a fresh session: %v", err)
			}
			if _, err := m.Unwrap(context.Background(), ct, nil); err != nil {
				t.Fatal(err)
			}
			_, opened, closed, _, _, _ := e.h.counts()
			if opened != 2 || closed != 1 {
				t.Fatalf("opened %d, closed %d sessions; want the broken one closed and one new", opened, closed)
			}
		})
	}
}

func TestBrokenTwiceFails(t *testing.T) {
	e := newFakeEnv(t)
	m := e.open(t)
	e.h.fail("Encrypt", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR), pkcs11.Error(pkcs11.CKR_DEVICE_ERROR))
	_, err := m.Wrap(context.Background(), []byte("x"), nil)
	if !hasCode(err, pkcs11.CKR_DEVICE_ERROR) {
		t.Fatalf("err = %v, want CKR_DEVICE_ERROR after one retry", err)
	}
	if _, err := m.Wrap(context.Background(), []byte("x"), nil); err != nil {
		t.Fatalf("pool did not recover: %v", err)
	}
}

func TestReloginAfterAllSessionsLost(t *testing.T) {
	e := newFakeEnv(t)
	e.cfg.MaxSessions = 1
	m := e.open(t)
	// The token was reset: every session is gone, and so is the login.
	e.h.mu.Lock()
	for sh := range e.h.sessions {
		delete(e.h.sessions, sh)
	}
	e.tok.loggedIn = false
	e.h.mu.Unlock()
	if _, err := m.Wrap(context.Background(), []byte("x"), nil); err != nil {
		t.Fatalf("Wrap after a token reset: %v", err)
	}
	if _, _, _, _, _, logins := e.h.counts(); logins != 2 {
		t.Fatalf("C_Login called %d times, want 2 (open + after reset)", logins)
	}
}

func TestStaleKeyHandleIsRefound(t *testing.T) {
	e := newFakeEnv(t)
	m := e.open(t)
	e.h.mu.Lock()
	e.key.handle = 9999 // the token renumbered its objects
	e.h.mu.Unlock()
	if err := m.Ping(context.Background()); err != nil {
		t.Fatalf("Ping with a stale key handle: %v", err)
	}
	if _, err := m.Wrap(context.Background(), []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
}

// TestFakeDetectsSharedSession proves that TestPoolExclusiveUnderLoad can
// fail: two goroutines on one session are seen by the fake.
func TestFakeDetectsSharedSession(t *testing.T) {
	h := newFake()
	h.addToken("tok", "1")
	h.delay = 5 * time.Millisecond
	sh, err := h.OpenSession(0, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = h.Encrypt(sh, nil) }()
	}
	wg.Wait()
	if h.violations.Load() == 0 {
		t.Fatal("the fake did not notice a session used by two goroutines")
	}
}
