package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Errors returned by the package. Compare with errors.Is.
var (
	// ErrNotFound is returned by Txn.Get for an absent key.
	ErrNotFound = errors.New("storage: key not found")
	// ErrClosed is returned by every method called after Close.
	ErrClosed = errors.New("storage: closed")
	// ErrReservedKey is returned when a caller writes a key in the
	// reserved 0x00 namespace or an empty key.
	ErrReservedKey = errors.New("storage: reserved or empty key")
	// ErrRestoreIncomplete means a Restore was interrupted (crash or
	// failure after the old state was dropped). The state on disk is a
	// partial mix and must not be served. Open refuses such a directory
	// unless Options.DropIncompleteRestore is set.
	ErrRestoreIncomplete = errors.New("storage: an interrupted restore left the state incomplete")
	// ErrViewInvalid is returned by View methods when a Restore replaced
	// the state after the view was taken.
	ErrViewInvalid = errors.New("storage: view invalidated by a restore")
	// ErrTxnTooBig is returned by Update when the transaction exceeds
	// badger's batch limit (about 600 KiB with our memtable size).
	ErrTxnTooBig = errors.New("storage: transaction too big")
)

// reserved keys (namespace 0x00, invisible to callers).
var appliedKey = []byte("\x00kmsd/applied")

// restoreMarker is the file, inside Dir, that exists while a Restore is
// replacing the state. It lives outside badger because DropAll removes
// every key.
const restoreMarker = "RESTORE-IN-PROGRESS"

// Options configures Open. The zero value is not usable: set Dir or
// InMemory.
type Options struct {
	// Dir is the badger directory. Created if missing. Ignored when
	// InMemory is set.
	Dir string
	// InMemory keeps everything in memory (tests). Durability options
	// do not apply.
	InMemory bool
	// Logger receives badger's warnings and errors. nil = slog.Default().
	Logger *slog.Logger
	// GCInterval is how often the value log garbage collector runs.
	// 0 = 5 minutes; negative disables it.
	GCInterval time.Duration
	// DropIncompleteRestore makes Open discard all state (leaving an
	// empty database with applied index 0) when it finds the marker of an
	// interrupted Restore, instead of failing with ErrRestoreIncomplete.
	// The caller is then responsible for re-installing a snapshot (the
	// cluster package does so by letting raft restore its latest one).
	DropIncompleteRestore bool
	// NoSyncWrites skips the fsync on every commit. Only for state that
	// is derived from a durable log which can rebuild it (the FSM: raft's
	// fsynced log and snapshots). A process crash loses nothing (writes are
	// in the OS page cache); a power loss or kernel crash may lose the
	// latest commits, always as a consistent prefix with the applied index
	// committed in the same transaction, so the caller can tell how far
	// the durable state reaches. Restore syncs explicitly either way.
	NoSyncWrites bool
}

// DB is an open badger database. Its methods are safe for concurrent
// use. View and Update run concurrently with each other; Restore excludes
// both.
type DB struct {
	bdb    *badger.DB
	dir    string // "" when in memory
	logger *slog.Logger

	// mu guards closed and serialises Restore (write lock) against every
	// other access (read lock): badger's DropAll is not safe with
	// concurrent reads.
	mu     sync.RWMutex
	closed bool
	gen    uint64 // bumped by Restore; Views from older generations fail

	viewsMu sync.Mutex
	views   map[*View]struct{} // open snapshot views, discarded on Close/Restore

	stopGC context.CancelFunc
	gcDone chan struct{}
}

// Open opens (creating if needed) the database described by opts.
func Open(opts Options) (*DB, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("component", "storage")
	if !opts.InMemory && opts.Dir == "" {
		return nil, errors.New("storage: open: Dir is required unless InMemory")
	}
	dir := ""
	if !opts.InMemory {
		dir = opts.Dir
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("storage: open: %w", err)
		}
	}
	bdb, err := badger.Open(badgerOptions(opts, dir, logger))
	if err != nil {
		return nil, fmt.Errorf("storage: open %s: %w", dir, err)
	}
	db := &DB{bdb: bdb, dir: dir, logger: logger, views: make(map[*View]struct{})}
	if err := db.checkRestoreMarker(opts.DropIncompleteRestore); err != nil {
		_ = bdb.Close()
		return nil, err
	}
	db.startGC(opts.GCInterval)
	return db, nil
}

func badgerOptions(opts Options, dir string, logger *slog.Logger) badger.Options {
	bo := badger.DefaultOptions(dir).
		WithInMemory(opts.InMemory).
		WithMemTableSize(4 << 20).
		WithNumMemtables(2).
		WithBlockCacheSize(4 << 20).
		WithIndexCacheSize(2 << 20).
		WithValueLogFileSize(16 << 20).
		WithValueThreshold(64 << 10). // must stay below the max batch size (15% of MemTableSize)
		WithNumCompactors(2).
		WithSyncWrites(!opts.InMemory && !opts.NoSyncWrites). // see Options.NoSyncWrites
		WithLogger(badgerLogger{logger}).
		WithLoggingLevel(badger.WARNING).
		WithMetricsEnabled(false)
	return bo
}

// checkRestoreMarker refuses (or cleans up) a directory left behind by an
// interrupted Restore.
func (db *DB) checkRestoreMarker(drop bool) error {
	if db.dir == "" {
		return nil
	}
	marker := filepath.Join(db.dir, restoreMarker)
	if _, err := os.Stat(marker); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("storage: open: %w", err)
	}
	if !drop {
		return fmt.Errorf("%w (marker %s)", ErrRestoreIncomplete, marker)
	}
	db.logger.Warn("discarding state left by an interrupted restore", "dir", db.dir)
	if err := db.bdb.DropAll(); err != nil {
		return fmt.Errorf("storage: open: drop incomplete restore: %w", err)
	}
	return removeSynced(marker)
}

// Close stops the GC loop, discards open views and closes badger.
// Further calls return ErrClosed.
func (db *DB) Close() error {
	db.mu.Lock()
	if db.closed {
		db.mu.Unlock()
		return ErrClosed
	}
	db.closed = true
	db.discardViews()
	db.mu.Unlock()

	db.stopGC()
	<-db.gcDone
	if err := db.bdb.Close(); err != nil {
		return fmt.Errorf("storage: close: %w", err)
	}
	return nil
}

// View runs fn in a read-only transaction.
func (db *DB) View(fn func(Txn) error) error {
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.closed {
		return ErrClosed
	}
	return db.bdb.View(func(t *badger.Txn) error { return fn(&txn{t: t}) })
}

// Update runs fn in a read-write transaction and commits it (with an
// fsync) if fn returns nil. Writes made by fn are visible to later reads
// inside fn.
func (db *DB) Update(fn func(Txn) error) error {
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.closed {
		return ErrClosed
	}
	err := db.bdb.Update(func(t *badger.Txn) error { return fn(&txn{t: t, rw: true}) })
	if errors.Is(err, badger.ErrTxnTooBig) {
		return fmt.Errorf("%w: %w", ErrTxnTooBig, err)
	}
	return err
}

// Applied returns the raft index and term last recorded with
// Txn.SetApplied, or zeros for a fresh database.
func (db *DB) Applied() (index, term uint64, err error) {
	err = db.View(func(t Txn) error {
		index, term, err = t.(*txn).applied()
		return err
	})
	return index, term, err
}

func encodeApplied(index, term uint64) []byte {
	b := make([]byte, 16)
	binary.BigEndian.PutUint64(b[:8], index)
	binary.BigEndian.PutUint64(b[8:], term)
	return b
}

func decodeApplied(b []byte) (index, term uint64, err error) {
	if len(b) != 16 {
		return 0, 0, fmt.Errorf("storage: applied record has %d bytes, want 16", len(b))
	}
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:]), nil
}

func isReserved(key []byte) bool { return len(key) == 0 || key[0] == 0x00 }

// removeSynced removes path and fsyncs its directory so the removal is
// durable.
func removeSynced(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// badgerLogger routes badger's logging to slog. Info and debug output is
// dropped (WithLoggingLevel(WARNING) already filters most of it).
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.l.Error(trim(fmt.Sprintf(f, a...))) }
func (b badgerLogger) Warningf(f string, a ...any) { b.l.Warn(trim(fmt.Sprintf(f, a...))) }
func (badgerLogger) Infof(string, ...any)          {}
func (badgerLogger) Debugf(string, ...any)         {}

func trim(s string) string { return string(bytes.TrimRight([]byte(s), "\n")) }
