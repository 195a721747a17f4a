package hsm_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/kmsd/kmsd/hsm"
	"github.com/kmsd/kmsd/internal/softhsmtest"
)

// TestSoftHSMObserve checks Config.Observe against real SoftHSM2: every
// operation is reported once with a plausible duration and the caller's
// error.
func TestSoftHSMObserve(t *testing.T) {
	tok := softhsmtest.New(t, "hsm-observe")
	var (
		mu  sync.Mutex
		ops []string
		ds  []time.Duration
		es  []error
	)
	cfg := tok.Config()
	cfg.Observe = func(op string, d time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		ops, ds, es = append(ops, op), append(ds, d), append(es, err)
	}
	ctx := context.Background()
	m, err := hsm.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ct, err := m.Wrap(ctx, make([]byte, 32), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Unwrap(ctx, ct, []byte("aad")); err != nil {
		t.Fatal(err)
	}
	ct[len(ct)-1] ^= 1
	if _, err := m.Unwrap(ctx, ct, []byte("aad")); !errors.Is(err, hsm.ErrNotAuthentic) {
		t.Fatalf("Unwrap of a modified ciphertext: %v", err)
	}
	if err := m.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"open", "wrap", "unwrap", "unwrap", "ping"}
	if len(ops) != len(want) {
		t.Fatalf("observed %v, want %v", ops, want)
	}
	for i := range want {
		if ops[i] != want[i] {
			t.Errorf("observation %d: %s, want %s", i, ops[i], want[i])
		}
		if ds[i] <= 0 || ds[i] > 10*time.Second {
			t.Errorf("%s took %v", ops[i], ds[i])
		}
		if wantErr := i == 3; (es[i] != nil) != wantErr {
			t.Errorf("%s: observed error %v", ops[i], es[i])
		}
		t.Logf("SoftHSM %s: %v", ops[i], ds[i])
	}
	if !errors.Is(es[3], hsm.ErrNotAuthentic) {
		t.Errorf("observed %v for a modified ciphertext, want ErrNotAuthentic", es[3])
	}
}
