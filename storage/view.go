package storage

import (
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"
)

// View is a read-only, point-in-time view of the whole database, used to
// stream a snapshot while writes continue. It pins badger's versions
// until Release, so Release it promptly. A View is not safe for
// concurrent use by several goroutines, but it is safe to use while
// other goroutines Update the database.
type View struct {
	db       *DB
	txn      *badger.Txn
	gen      uint64
	released atomic.Bool
	err      error // set when the view could not be created
	index    uint64
	term     uint64
}

// Snapshot returns a point-in-time view. It is cheap (it opens a badger
// read transaction), does not block writers and is not blocked by
// readers. If the database is closed, every method of the returned View
// fails with ErrClosed.
func (db *DB) Snapshot() *View {
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.closed {
		v := &View{db: db, err: ErrClosed}
		v.released.Store(true)
		return v
	}
	v := &View{db: db, txn: db.bdb.NewTransaction(false), gen: db.gen}
	v.index, v.term, v.err = (&txn{t: v.txn}).applied()
	db.viewsMu.Lock()
	db.views[v] = struct{}{}
	db.viewsMu.Unlock()
	return v
}

// Applied returns the applied index and term as of the view.
func (v *View) Applied() (index, term uint64, err error) {
	if v.err != nil {
		return 0, 0, v.err
	}
	return v.index, v.term, nil
}

// Iterate calls fn for every caller-visible key in the view, in
// ascending order, until fn returns false or an error. The slices passed
// to fn are copies owned by fn.
func (v *View) Iterate(fn func(key, val []byte) (more bool, err error)) error {
	return v.scan(true, fn)
}

// Count returns the number of caller-visible keys in the view.
func (v *View) Count() (uint64, error) {
	var n uint64
	err := v.scan(false, func(_, _ []byte) (bool, error) { n++; return true, nil })
	return n, err
}

// scan holds the shared lock for the whole iteration, so Close and
// Restore (exclusive) cannot discard the transaction under it.
func (v *View) scan(values bool, fn func(key, val []byte) (bool, error)) error {
	v.db.mu.RLock()
	defer v.db.mu.RUnlock()
	if err := v.usable(); err != nil {
		return err
	}
	return iterate(v.txn, nil, nil, values, fn)
}

// usable must be called with db.mu held.
func (v *View) usable() error {
	switch {
	case v.err != nil:
		return v.err
	case v.db.closed, v.released.Load():
		return ErrClosed
	case v.gen != v.db.gen:
		return ErrViewInvalid
	}
	return nil
}

// Release discards the view. It is idempotent and must not run
// concurrently with the view's own Iterate or Count.
func (v *View) Release() {
	if v.released.CompareAndSwap(false, true) {
		v.db.viewsMu.Lock()
		delete(v.db.views, v)
		v.db.viewsMu.Unlock()
		v.txn.Discard()
	}
}

// discardViews releases every open view (Close, Restore); db.mu must be
// held exclusively, so no view is being iterated.
func (db *DB) discardViews() {
	db.viewsMu.Lock()
	open := make([]*View, 0, len(db.views))
	for v := range db.views {
		open = append(open, v)
	}
	db.viewsMu.Unlock()
	for _, v := range open {
		v.Release()
	}
}
