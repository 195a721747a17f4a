package seal

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock hands out tickers that fire only when the test says so.
type fakeClock struct {
	mu      sync.Mutex
	tickers map[time.Duration]*fakeTicker
}

type fakeTicker struct {
	c       chan time.Time
	stopped atomic.Bool
}

func (t *fakeTicker) Chan() <-chan time.Time { return t.c }
func (t *fakeTicker) Stop()                  { t.stopped.Store(true) }

func (f *fakeClock) NewTicker(d time.Duration) ticker {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := &fakeTicker{c: make(chan time.Time)}
	f.tickers[d] = t
	return t
}

// testCache is a Cache driven by a fake clock.
type testCache struct {
	*Cache
	clk    *fakeClock
	ticked chan struct{}
}

func newTestCache(t *testing.T, cfg CacheConfig) *testCache {
	t.Helper()
	tc := &testCache{clk: &fakeClock{tickers: map[time.Duration]*fakeTicker{}}, ticked: make(chan struct{})}
	tc.Cache = newCache(cfg, tc.clk, func() { tc.ticked <- struct{}{} })
	t.Cleanup(tc.Close)
	return tc
}

// tick fires the ticker of period d and waits until the cache handled it.
func (tc *testCache) tick(t *testing.T, d time.Duration) {
	t.Helper()
	tc.clk.mu.Lock()
	tk := tc.clk.tickers[d]
	tc.clk.mu.Unlock()
	if tk == nil {
		t.Fatalf("no ticker of period %v (have %v)", d, tc.clk.tickers)
	}
	tk.c <- time.Time{}
	<-tc.ticked
}

// loader counts calls and returns a fixed key per name.
type loader struct {
	calls atomic.Int64
	keys  sync.Map // name -> *Key
}

func (l *loader) load(name string) func(context.Context) (*Key, error) {
	return func(context.Context) (*Key, error) {
		l.calls.Add(1)
		k, _ := l.keys.LoadOrStore(name, mustNewKey())
		return k.(*Key), nil
	}
}

func mustNewKey() *Key {
	k, err := NewKey(AES256, nil)
	if err != nil {
		panic(err)
	}
	return k
}

func (tc *testCache) has(name string) bool {
	tc.mu.RLock()
	defer tc.mu.RUnlock()
	_, ok := tc.entries[name]
	return ok
}

func TestCacheHitMiss(t *testing.T) {
	tc := newTestCache(t, CacheConfig{})
	var l loader
	ctx := context.Background()
	k1, err := tc.Get(ctx, "a", l.load("a"))
	if err != nil {
		t.Fatal(err)
	}
	k2, err := tc.Get(ctx, "a", l.load("a"))
	if err != nil || k1 != k2 {
		t.Fatalf("second Get: %v, same %v", err, k1 == k2)
	}
	if _, err := tc.Get(ctx, "b", l.load("b")); err != nil {
		t.Fatal(err)
	}
	want := CacheStats{Hits: 1, Misses: 2, Loads: 2, Entries: 2}
	if got := tc.Stats(); got != want || l.calls.Load() != 2 {
		t.Fatalf("stats %+v, want %+v; calls %d", got, want, l.calls.Load())
	}
}

func TestCacheDefaults(t *testing.T) {
	tc := newTestCache(t, CacheConfig{})
	if tc.clk.tickers[5*time.Minute] == nil || tc.clk.tickers[15*time.Second] == nil || len(tc.clk.tickers) != 2 {
		t.Fatalf("tickers %v, want 5m (any) and 15s (unused/2)", tc.clk.tickers)
	}
	if tc.max != 100000 {
		t.Fatalf("max %d", tc.max)
	}
	off := newTestCache(t, CacheConfig{Any: -1, Unused: -1, MaxEntries: 3})
	if len(off.clk.tickers) != 0 || off.max != 3 {
		t.Fatalf("negative durations: tickers %v, max %d", off.clk.tickers, off.max)
	}
	odd := newTestCache(t, CacheConfig{Any: time.Hour, Unused: 3 * time.Second})
	if odd.clk.tickers[time.Hour] == nil || odd.clk.tickers[1500*time.Millisecond] == nil {
		t.Fatalf("tickers %v", odd.clk.tickers)
	}
}

func TestCacheHitAllocs(t *testing.T) {
	tc := newTestCache(t, CacheConfig{})
	var l loader
	ctx := context.Background()
	load := l.load("key")
	if _, err := tc.Get(ctx, "key", load); err != nil {
		t.Fatal(err)
	}
	name := "key"
	allocs := testing.AllocsPerRun(1000, func() {
		if _, err := tc.Get(ctx, name, load); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("a cache hit allocates %v times", allocs)
	}
}

func TestCacheExpiryAny(t *testing.T) {
	tc := newTestCache(t, CacheConfig{Any: time.Minute, Unused: -1})
	var l loader
	ctx := context.Background()
	for _, n := range []string{"a", "b", "c"} {
		tc.Get(ctx, n, l.load(n))
	}
	tc.Get(ctx, "a", l.load("a")) // used: does not matter for Any
	tc.tick(t, time.Minute)
	if s := tc.Stats(); s.Entries != 0 || s.Evictions != 3 {
		t.Fatalf("after Any: %+v", s)
	}
	tc.Get(ctx, "a", l.load("a"))
	if l.calls.Load() != 4 {
		t.Fatalf("calls %d, want a reload after Any", l.calls.Load())
	}
}

func TestCacheExpiryUnused(t *testing.T) {
	tc := newTestCache(t, CacheConfig{Any: -1, Unused: time.Minute})
	half := 30 * time.Second
	var l loader
	ctx := context.Background()
	get := func(n string) { tc.Get(ctx, n, l.load(n)) }

	get("a") // loaded: counts as a use
	get("b")
	tc.tick(t, half) // both used: survive, flags cleared
	if !tc.has("a") || !tc.has("b") {
		t.Fatal("entries used in the window were evicted")
	}
	get("a") // hit: a used again
	tc.tick(t, half)
	if !tc.has("a") || tc.has("b") {
		t.Fatalf("after a window without use of b: a %v b %v", tc.has("a"), tc.has("b"))
	}
	tc.tick(t, half)
	if tc.has("a") {
		t.Fatal("a survived a window without use")
	}
	if s := tc.Stats(); s.Evictions != 2 || s.Entries != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestCacheMaxEntries(t *testing.T) {
	tc := newTestCache(t, CacheConfig{Any: -1, Unused: time.Minute, MaxEntries: 3})
	var l loader
	ctx := context.Background()
	get := func(n string) { tc.Get(ctx, n, l.load(n)) }
	get("a")
	get("b")
	get("c")
	tc.tick(t, 30*time.Second) // clears every used flag
	get("a")
	get("c")
	get("d") // full: evicts b, the only unused entry
	if !tc.has("a") || tc.has("b") || !tc.has("c") || !tc.has("d") {
		t.Fatalf("a %v b %v c %v d %v", tc.has("a"), tc.has("b"), tc.has("c"), tc.has("d"))
	}
	for i := range 20 {
		get(fmt.Sprint("x", i))
	}
	if s := tc.Stats(); s.Entries != 3 || s.Evictions != 21 {
		t.Fatalf("stats %+v", s)
	}
}

// blockingLoad returns a load that signals started and waits for release.
func blockingLoad(started chan<- struct{}, release <-chan struct{}, k *Key, err error) func(context.Context) (*Key, error) {
	return func(ctx context.Context) (*Key, error) {
		started <- struct{}{}
		select {
		case <-release:
			return k, err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// waitFor polls cond; it is for reaching a state, not for timing.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i > 1e6 {
			t.Fatalf("never reached: %s", what)
		}
		runtime.Gosched()
	}
}

// waiting reports the number of Gets that missed.
func (tc *testCache) waiting(n uint64) func() bool {
	return func() bool { return tc.Stats().Misses >= n }
}

func TestCacheSingleFlight(t *testing.T) {
	tc := newTestCache(t, CacheConfig{})
	ctx := context.Background()
	key := mustNewKey()
	started, release := make(chan struct{}, 10), make(chan struct{})
	var loads atomic.Int64
	load := func(ctx context.Context) (*Key, error) {
		loads.Add(1)
		return blockingLoad(started, release, key, nil)(ctx)
	}
	const n = 8
	var wg sync.WaitGroup
	results := make(chan *Key, n)
	for range n {
		wg.Go(func() {
			k, err := tc.Get(ctx, "k", load)
			if err != nil {
				t.Error(err)
			}
			results <- k
		})
	}
	<-started
	waitFor(t, "all Gets missed", tc.waiting(n))
	close(release)
	wg.Wait()
	close(results)
	for k := range results {
		if k != key {
			t.Fatal("a caller got another key")
		}
	}
	if loads.Load() != 1 {
		t.Fatalf("%d loads for %d concurrent misses", loads.Load(), n)
	}
	if s := tc.Stats(); s.Loads != 1 || s.Entries != 1 || s.Misses != n {
		t.Fatalf("stats %+v", s)
	}
}

func TestCacheErrorsNotCached(t *testing.T) {
	tc := newTestCache(t, CacheConfig{})
	ctx := context.Background()
	boom := errors.New("store down")
	calls := 0
	fail := func(context.Context) (*Key, error) { calls++; return nil, boom }
	for range 2 {
		if _, err := tc.Get(ctx, "k", fail); !errors.Is(err, boom) {
			t.Fatalf("Get: %v", err)
		}
	}
	if calls != 2 || tc.Stats().Entries != 0 {
		t.Fatalf("calls %d, stats %+v", calls, tc.Stats())
	}
	// A nil key without error is an error, not a cached nil.
	if _, err := tc.Get(ctx, "k", func(context.Context) (*Key, error) { return nil, nil }); err == nil {
		t.Fatal("nil key accepted")
	}
	if tc.Stats().Entries != 0 {
		t.Fatal("nil key cached")
	}
}

func TestCacheSharedError(t *testing.T) {
	tc := newTestCache(t, CacheConfig{})
	ctx := context.Background()
	boom := errors.New("store down")
	started, release := make(chan struct{}, 2), make(chan struct{})
	errs := make(chan error, 2)
	load := blockingLoad(started, release, nil, boom)
	go func() { _, err := tc.Get(ctx, "k", load); errs <- err }()
	<-started
	go func() { _, err := tc.Get(ctx, "k", load); errs <- err }()
	waitFor(t, "second Get waits", tc.waiting(2))
	close(release)
	for range 2 {
		if err := <-errs; !errors.Is(err, boom) {
			t.Fatalf("Get: %v", err)
		}
	}
	if tc.Stats().Loads != 1 {
		t.Fatalf("stats %+v", tc.Stats())
	}
}

func TestCacheWaiterContext(t *testing.T) {
	tc := newTestCache(t, CacheConfig{})
	started, release := make(chan struct{}, 2), make(chan struct{})
	defer close(release)
	key := mustNewKey()
	load := blockingLoad(started, release, key, nil)
	go tc.Get(context.Background(), "k", load)
	<-started
	// A waiter whose context ends gives up without waiting for the load.
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := tc.Get(ctx, "k", load); errc <- err }()
	waitFor(t, "waiter waits", tc.waiting(2))
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("waiter: %v", err)
	}
}

// TestCacheLeaderCancelled: when the loading caller's context ends, a
// waiter with a live context loads again instead of failing.
func TestCacheLeaderCancelled(t *testing.T) {
	tc := newTestCache(t, CacheConfig{})
	started, release := make(chan struct{}, 2), make(chan struct{})
	key := mustNewKey()
	load := blockingLoad(started, release, key, nil)
	lctx, cancel := context.WithCancel(context.Background())
	lerr := make(chan error, 1)
	go func() { _, err := tc.Get(lctx, "k", load); lerr <- err }()
	<-started
	got := make(chan *Key, 1)
	go func() {
		k, err := tc.Get(context.Background(), "k", load)
		if err != nil {
			t.Error(err)
		}
		got <- k
	}()
	waitFor(t, "waiter waits", tc.waiting(2))
	cancel()
	if err := <-lerr; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader: %v", err)
	}
	<-started // the waiter became the loader
	close(release)
	if k := <-got; k != key {
		t.Fatal("waiter got another key")
	}
	if s := tc.Stats(); s.Loads != 2 || s.Entries != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestCacheLoadPanics(t *testing.T) {
	tc := newTestCache(t, CacheConfig{})
	started, release := make(chan struct{}, 1), make(chan struct{})
	panicking := func(ctx context.Context) (*Key, error) {
		started <- struct{}{}
		<-release
		panic("load bug")
	}
	recovered := make(chan any, 1)
	go func() {
		defer func() { recovered <- recover() }()
		tc.Get(context.Background(), "k", panicking)
	}()
	<-started
	errc := make(chan error, 1)
	go func() { _, err := tc.Get(context.Background(), "k", panicking); errc <- err }()
	waitFor(t, "waiter waits", tc.waiting(2))
	close(release)
	if r := <-recovered; r != "load bug" {
		t.Fatalf("recovered %v", r)
	}
	if err := <-errc; !errors.Is(err, errLoadAborted) {
		t.Fatalf("waiter: %v", err)
	}
	// The name is usable again.
	var l loader
	if _, err := tc.Get(context.Background(), "k", l.load("k")); err != nil {
		t.Fatal(err)
	}
}

// TestCacheInvalidateDuringLoad: a load that started before Invalidate
// must not insert its (possibly stale) key after it.
func TestCacheInvalidateDuringLoad(t *testing.T) {
	for _, purge := range []bool{false, true} {
		t.Run(fmt.Sprintf("purge=%v", purge), func(t *testing.T) {
			tc := newTestCache(t, CacheConfig{})
			ctx := context.Background()
			stale, fresh := mustNewKey(), mustNewKey()
			started, release := make(chan struct{}, 1), make(chan struct{})
			got := make(chan *Key, 1)
			go func() {
				k, _ := tc.Get(ctx, "k", blockingLoad(started, release, stale, nil))
				got <- k
			}()
			<-started
			if purge {
				tc.Purge()
			} else {
				tc.Invalidate("k")
			}
			// A Get after Invalidate does not join the stale load (if it
			// did, it would wait for release below: bound the wait).
			tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			k, err := tc.Get(tctx, "k", func(context.Context) (*Key, error) { return fresh, nil })
			if err != nil || k != fresh {
				t.Fatalf("Get after Invalidate: %v, fresh %v", err, k == fresh)
			}
			close(release)
			if k := <-got; k != stale {
				t.Fatal("the stale loader's caller did not get its own result")
			}
			// The stale result did not overwrite the fresh entry.
			k, _ = tc.Get(ctx, "k", func(context.Context) (*Key, error) { t.Fatal("unexpected load"); return nil, nil })
			if k != fresh {
				t.Fatal("stale key inserted after Invalidate")
			}

			// Same without a concurrent fresh load: nothing is cached.
			tc.Invalidate("k")
			release2 := make(chan struct{})
			go func() {
				k, _ := tc.Get(ctx, "k", blockingLoad(started, release2, stale, nil))
				got <- k
			}()
			<-started
			tc.Invalidate("k")
			close(release2)
			<-got
			if tc.has("k") {
				t.Fatal("stale key inserted after Invalidate")
			}
		})
	}
}

func TestCacheInvalidatePurge(t *testing.T) {
	tc := newTestCache(t, CacheConfig{})
	var l loader
	ctx := context.Background()
	for _, n := range []string{"a", "b", "c"} {
		tc.Get(ctx, n, l.load(n))
	}
	ka, _ := tc.Get(ctx, "a", l.load("a"))
	tc.Invalidate("a")
	tc.Invalidate("missing")
	if tc.has("a") || !tc.has("b") {
		t.Fatal("Invalidate dropped the wrong entries")
	}
	// A key dropped from the cache keeps working for whoever holds it.
	if _, err := ka.Encrypt(nil, []byte("in flight"), nil); err != nil {
		t.Fatalf("invalidated key wiped under its user: %v", err)
	}
	tc.Purge()
	if s := tc.Stats(); s.Entries != 0 || s.Evictions != 3 {
		t.Fatalf("stats %+v", s)
	}
}

func TestCacheClose(t *testing.T) {
	tc := newTestCache(t, CacheConfig{Any: time.Minute, Unused: time.Minute})
	var l loader
	ctx := context.Background()
	tc.Get(ctx, "a", l.load("a"))
	tc.Close()
	tc.Close() // idempotent
	for d, tk := range tc.clk.tickers {
		if !tk.stopped.Load() {
			t.Errorf("ticker %v not stopped", d)
		}
	}
	select {
	case <-tc.done:
	default:
		t.Fatal("ticker goroutine still running")
	}
	// After Close, Get still answers but caches nothing.
	for range 2 {
		if _, err := tc.Get(ctx, "a", l.load("a")); err != nil {
			t.Fatal(err)
		}
	}
	if s := tc.Stats(); s.Entries != 0 || l.calls.Load() != 3 {
		t.Fatalf("stats %+v, calls %d", s, l.calls.Load())
	}
}

// TestKeyWipedWhenUnreachable: a Key dropped by everyone (the cache
// included) is wiped by its runtime cleanup.
func TestKeyWipedWhenUnreachable(t *testing.T) {
	wiped := make(chan *material, 16)
	old := materialCleanup
	materialCleanup = func(m *material) { m.zero(); wiped <- m }
	defer func() { materialCleanup = old }()

	tc := newTestCache(t, CacheConfig{})
	k := mustNewKey()
	m := k.m
	tc.Get(context.Background(), "k", func(context.Context) (*Key, error) { return k, nil })
	k = nil
	tc.Invalidate("k")
	for i := 0; ; i++ {
		runtime.GC()
		select {
		case got := <-wiped:
			if got != m {
				continue
			}
			if m.secret != [32]byte{} || m.alg != 0 {
				t.Fatal("material not zeroed")
			}
			return
		case <-time.After(10 * time.Millisecond):
			if i > 200 {
				t.Fatal("cleanup never ran")
			}
		}
	}
}

func BenchmarkCacheHit(b *testing.B) {
	c := NewCache(CacheConfig{})
	defer c.Close()
	ctx := context.Background()
	k := mustNewKey()
	load := func(context.Context) (*Key, error) { return k, nil }
	c.Get(ctx, "key", load)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Get(ctx, "key", load); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestNewCacheRealClock: the exported constructor with real tickers starts
// and stops cleanly (no timing is asserted).
func TestNewCacheRealClock(t *testing.T) {
	c := NewCache(CacheConfig{Any: time.Hour, Unused: time.Hour})
	var l loader
	if _, err := c.Get(context.Background(), "k", l.load("k")); err != nil {
		t.Fatal(err)
	}
	if s := c.Stats(); s.Entries != 1 {
		t.Fatalf("stats %+v", s)
	}
	c.Close()
	select {
	case <-c.done:
	default:
		t.Fatal("ticker goroutine still running after Close")
	}
}

func TestCacheReconfigure(t *testing.T) {
	tc := newTestCache(t, CacheConfig{Any: time.Minute, Unused: 10 * time.Second})
	var l loader
	ctx := context.Background()
	if _, err := tc.Get(ctx, "k", l.load("k")); err != nil {
		t.Fatal(err)
	}
	old := tc.clk.tickers[time.Minute]
	tc.Reconfigure(CacheConfig{Any: 2 * time.Minute, Unused: -1})
	if !old.stopped.Load() || !tc.clk.tickers[5*time.Second].stopped.Load() {
		t.Fatal("the old tickers were not stopped")
	}
	if got := tc.Stats().Entries; got != 1 {
		t.Fatalf("entries after Reconfigure = %d, want 1 (entries stay)", got)
	}
	tc.tick(t, 2*time.Minute) // the new period evicts everything
	if got := tc.Stats().Entries; got != 0 {
		t.Fatalf("entries after the new Any tick = %d, want 0", got)
	}
	tc.Close()
	tc.Reconfigure(CacheConfig{}) // after Close: returns, does nothing
}

// TestCacheReconfigureShrinks: a smaller MaxEntries (SIGHUP) applies at
// the next insert, even with time-based expiry off.
func TestCacheReconfigureShrinks(t *testing.T) {
	tc := newTestCache(t, CacheConfig{Any: -1, Unused: -1, MaxEntries: 5})
	defer tc.Close()
	var l loader
	ctx := context.Background()
	for i := range 5 {
		n := fmt.Sprint("k", i)
		if _, err := tc.Get(ctx, n, l.load(n)); err != nil {
			t.Fatal(err)
		}
	}
	tc.Reconfigure(CacheConfig{Any: -1, Unused: -1, MaxEntries: 2})
	if _, err := tc.Get(ctx, "new", l.load("new")); err != nil {
		t.Fatal(err)
	}
	if got := tc.Stats().Entries; got != 2 {
		t.Fatalf("entries after Reconfigure(MaxEntries: 2) and one insert = %d, want 2", got)
	}
	if !tc.has("new") {
		t.Fatal("the inserted key is not cached")
	}
}
