package seal

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Cache defaults (spec/kes-api.md §7.2, with KES's default bug Q6 fixed).
const (
	DefaultCacheAny        = 5 * time.Minute
	DefaultCacheUnused     = 30 * time.Second
	DefaultCacheMaxEntries = 100000
)

// CacheConfig configures the hot cache (KES cache.expiry semantics).
// A negative Any or Unused disables that eviction.
type CacheConfig struct {
	Any        time.Duration // evict everything this often; 0 = 5m
	Unused     time.Duration // evict entries unused for this long; 0 = 30s
	MaxEntries int           // bound; 0 (or less) = 100000
}

// CacheStats are cumulative counters of a Cache, plus its current size.
type CacheStats struct {
	Hits      uint64 // Get answered from the cache
	Misses    uint64 // Get not answered from the cache (loaded or waited for a load)
	Loads     uint64 // calls of a load function
	Evictions uint64 // entries dropped by expiry, capacity, Invalidate, Purge or Close
	Entries   int    // entries now
}

// Cache holds unsealed keys by name (design.md §4, spec/kes-api.md §7.3).
// Safe for concurrent use. The zero value is not usable; use NewCache.
//
//   - A hit sets the entry's used flag and allocates nothing.
//   - Concurrent misses of one name call load once; the others wait.
//     Errors are not cached.
//   - Every Any, all entries are dropped. Every Unused/2, entries whose
//     used flag is clear are dropped and the flag of the others is
//     cleared: an entry survives while it is used once per Unused/2.
//   - At MaxEntries, inserting drops one entry, preferring an unused one.
//
// Dropped keys are not zeroed by the cache: a request may still be using
// them. Their material is wiped when the last reference goes (see Key and
// DESIGN.md).
type Cache struct {
	max int

	mu       sync.RWMutex
	entries  map[string]*cacheEntry
	inflight map[string]*loadCall
	closed   bool

	hits, misses, loads, evictions atomic.Uint64

	clk       clock
	reconf    chan reconfig
	onTick    func() // test hook, called after each expiry tick
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

type cacheEntry struct {
	key  *Key
	used atomic.Bool
}

// loadCall is one in-flight load that concurrent misses wait for.
type loadCall struct {
	done  chan struct{} // closed when key and err are set
	key   *Key
	err   error
	stale bool // set (under Cache.mu) by Invalidate/Purge: do not insert
}

var errLoadAborted = errors.New("seal: cache: load panicked or exited")

// NewCache returns a cache and starts its expiry ticker goroutine; Close
// stops it.
func NewCache(cfg CacheConfig) *Cache { return newCache(cfg, realClock{}, nil) }

func newCache(cfg CacheConfig, clk clock, onTick func()) *Cache {
	cfg = cfg.withDefaults()
	c := &Cache{
		max:      cfg.MaxEntries,
		onTick:   onTick,
		entries:  make(map[string]*cacheEntry),
		inflight: make(map[string]*loadCall),
		clk:      clk,
		reconf:   make(chan reconfig),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	go c.run(c.startTickers(cfg))
	return c
}

func (cfg CacheConfig) withDefaults() CacheConfig {
	if cfg.Any == 0 {
		cfg.Any = DefaultCacheAny
	}
	if cfg.Unused == 0 {
		cfg.Unused = DefaultCacheUnused
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = DefaultCacheMaxEntries
	}
	return cfg
}

// tickerSet is the expiry tickers of one configuration. A nil channel
// never fires.
type tickerSet struct {
	anyC, unusedC <-chan time.Time
	all           []ticker
}

func (ts tickerSet) stop() {
	for _, t := range ts.all {
		t.Stop()
	}
}

func (c *Cache) startTickers(cfg CacheConfig) tickerSet {
	var ts tickerSet
	if cfg.Any > 0 {
		t := c.clk.NewTicker(cfg.Any)
		ts.all, ts.anyC = append(ts.all, t), t.Chan()
	}
	if cfg.Unused > 0 {
		t := c.clk.NewTicker(max(cfg.Unused/2, 1))
		ts.all, ts.unusedC = append(ts.all, t), t.Chan()
	}
	return ts
}

type reconfig struct {
	cfg  CacheConfig
	done chan struct{}
}

// Reconfigure applies new expiry periods and a new bound (SIGHUP): the
// expiry tickers restart with the new periods; entries stay cached. A
// cache above the new bound shrinks to it at the next insert. After Close
// it does nothing.
func (c *Cache) Reconfigure(cfg CacheConfig) {
	cfg = cfg.withDefaults()
	c.mu.Lock()
	c.max = cfg.MaxEntries
	c.mu.Unlock()
	r := reconfig{cfg: cfg, done: make(chan struct{})}
	select {
	case c.reconf <- r:
		<-r.done
	case <-c.done:
	}
}

// run applies the expiry ticks and reconfigurations until Close.
func (c *Cache) run(ts tickerSet) {
	defer close(c.done)
	defer func() { ts.stop() }()
	for {
		select {
		case <-c.stop:
			return
		case r := <-c.reconf:
			ts.stop()
			ts = c.startTickers(r.cfg)
			close(r.done)
			continue
		case <-ts.anyC:
			c.evictAll()
		case <-ts.unusedC:
			c.evictUnused()
		}
		if c.onTick != nil {
			c.onTick()
		}
	}
}

// Get returns the cached key or calls load once for concurrent misses.
// A caller waiting for another caller's load gives up when ctx is done;
// if that other caller's load fails with its context's error, a waiter
// whose own ctx is alive loads again itself. After Close, Get calls load
// (still once for concurrent misses) and caches nothing.
func (c *Cache) Get(ctx context.Context, name string, load func(ctx context.Context) (*Key, error)) (*Key, error) {
	c.mu.RLock()
	e := c.entries[name]
	c.mu.RUnlock()
	if e != nil {
		if !e.used.Load() { // avoid a shared-cache-line write on every hit
			e.used.Store(true)
		}
		c.hits.Add(1)
		return e.key, nil
	}
	c.misses.Add(1)
	for {
		c.mu.Lock()
		if e := c.entries[name]; e != nil { // inserted since the read above
			e.used.Store(true)
			c.mu.Unlock()
			return e.key, nil
		}
		call := c.inflight[name]
		if call == nil {
			call = &loadCall{done: make(chan struct{})}
			c.inflight[name] = call
			c.mu.Unlock()
			return c.load(ctx, name, call, load)
		}
		c.mu.Unlock()
		select {
		case <-call.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if call.err == nil {
			return call.key, nil
		}
		if !isContextErr(call.err) || ctx.Err() != nil {
			return nil, call.err
		}
	}
}

// load runs fn as the single loader of name and publishes the result to
// the waiters, also if fn panics.
func (c *Cache) load(ctx context.Context, name string, call *loadCall, fn func(context.Context) (*Key, error)) (*Key, error) {
	c.loads.Add(1)
	returned := false
	defer func() {
		if !returned {
			call.key, call.err = nil, errLoadAborted
		}
		c.finish(name, call)
	}()
	k, err := fn(ctx)
	if err == nil && k == nil {
		err = errors.New("seal: cache: load returned no key")
	}
	if err != nil {
		k = nil
	}
	call.key, call.err = k, err
	returned = true
	return k, err
}

// finish removes call from the in-flight set, caches its key unless it
// failed or was invalidated meanwhile, and wakes the waiters.
func (c *Cache) finish(name string, call *loadCall) {
	c.mu.Lock()
	if c.inflight[name] == call {
		delete(c.inflight, name)
	}
	if call.err == nil && !call.stale && !c.closed {
		c.insert(name, call.key)
	}
	c.mu.Unlock()
	close(call.done)
}

// insert adds a used entry, making room first (down to the bound, which
// Reconfigure may have lowered). c.mu is held.
func (c *Cache) insert(name string, k *Key) {
	for len(c.entries) > 0 && len(c.entries) >= c.max { // at most len(c.entries) rounds
		c.evictOne()
	}
	e := &cacheEntry{key: k}
	e.used.Store(true) // the load was a use
	c.entries[name] = e
}

// evictOne drops one entry: the first unused one among a few sampled in
// map order (which Go randomises), else the first sampled. c.mu is held.
func (c *Cache) evictOne() {
	const samples = 8
	victim, n := "", 0
	for name, e := range c.entries {
		if n == 0 || !e.used.Load() {
			victim = name
		}
		if n++; !e.used.Load() || n == samples {
			break
		}
	}
	if n > 0 {
		delete(c.entries, victim)
		c.evictions.Add(1)
	}
}

// evictAll is the Any tick.
func (c *Cache) evictAll() {
	c.mu.Lock()
	c.evictions.Add(uint64(len(c.entries)))
	clear(c.entries)
	c.mu.Unlock()
}

// evictUnused is the Unused/2 tick: a second-chance sweep.
func (c *Cache) evictUnused() {
	c.mu.Lock()
	for name, e := range c.entries {
		if e.used.Load() {
			e.used.Store(false)
		} else {
			delete(c.entries, name)
			c.evictions.Add(1)
		}
	}
	c.mu.Unlock()
}

// Invalidate drops name's entry. A load of name that is in flight will
// not be cached (its callers still get its result), and later Gets load
// anew. Call it after the change that makes the entry stale (delete,
// rotation) is visible to load.
func (c *Cache) Invalidate(name string) {
	c.mu.Lock()
	if _, ok := c.entries[name]; ok {
		delete(c.entries, name)
		c.evictions.Add(1)
	}
	if call := c.inflight[name]; call != nil {
		call.stale = true
		delete(c.inflight, name)
	}
	c.mu.Unlock()
}

// Purge drops all entries and keeps in-flight loads from being cached,
// like Invalidate for every name.
func (c *Cache) Purge() {
	c.mu.Lock()
	c.purgeLocked()
	c.mu.Unlock()
}

func (c *Cache) purgeLocked() {
	c.evictions.Add(uint64(len(c.entries)))
	clear(c.entries)
	for _, call := range c.inflight {
		call.stale = true
	}
	clear(c.inflight)
}

// Close stops the expiry tickers and purges the cache. Later Gets work
// but cache nothing. Close is idempotent.
func (c *Cache) Close() {
	c.closeOnce.Do(func() {
		close(c.stop)
		<-c.done // run has stopped its tickers
		c.mu.Lock()
		c.closed = true
		c.purgeLocked()
		c.mu.Unlock()
	})
}

// Stats returns the counters and the current number of entries.
func (c *Cache) Stats() CacheStats {
	c.mu.RLock()
	n := len(c.entries)
	c.mu.RUnlock()
	return CacheStats{
		Hits:      c.hits.Load(),
		Misses:    c.misses.Load(),
		Loads:     c.loads.Load(),
		Evictions: c.evictions.Load(),
		Entries:   n,
	}
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// clock makes the expiry tickers replaceable in tests.
type clock interface {
	NewTicker(d time.Duration) ticker
}

type ticker interface {
	Chan() <-chan time.Time
	Stop()
}

type realClock struct{}

func (realClock) NewTicker(d time.Duration) ticker { return realTicker{time.NewTicker(d)} }

type realTicker struct{ t *time.Ticker }

func (t realTicker) Chan() <-chan time.Time { return t.t.C }
func (t realTicker) Stop()                  { t.t.Stop() }
