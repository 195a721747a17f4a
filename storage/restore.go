package storage

import (
	"fmt"
	"os"
	"path/filepath"
)

// Restore replaces the entire state with the records produced by next,
// then records index and term as the applied position.
//
// next returns one record per call and ok == false at the end; an error
// from next aborts the restore. Records must not use the reserved 0x00
// namespace.
//
// Restore excludes every other access for its duration. It is crash-safe
// in the following sense: before the old state is dropped a marker file
// is made durable in Dir, and it is removed only after the last record
// and the applied index are durable. A crash in between leaves the marker,
// and Open then refuses the directory (ErrRestoreIncomplete) instead of
// serving a half-restored state. An error returned after the old state
// was dropped wraps ErrRestoreIncomplete too: the database must not be
// used until a Restore succeeds.
func (db *DB) Restore(next func() (key, val []byte, ok bool, err error), index, term uint64) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed {
		return ErrClosed
	}
	if err := db.setMarker(); err != nil {
		return fmt.Errorf("storage: restore: marker: %w", err)
	}
	// From here on the state is being replaced.
	db.gen++
	db.discardViews()
	if err := db.load(next, index, term); err != nil {
		db.logger.Error("restore failed; state is incomplete", "error", err)
		return fmt.Errorf("%w: %w", ErrRestoreIncomplete, err)
	}
	if db.dir != "" {
		if err := removeSynced(filepath.Join(db.dir, restoreMarker)); err != nil {
			return fmt.Errorf("%w: remove marker: %w", ErrRestoreIncomplete, err)
		}
	}
	return nil
}

func (db *DB) setMarker() error {
	if db.dir == "" {
		return nil
	}
	f, err := os.OpenFile(filepath.Join(db.dir, restoreMarker), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return syncDir(db.dir)
}

// load drops everything and writes the new records in batches. Must be
// called with db.mu held for writing.
func (db *DB) load(next func() ([]byte, []byte, bool, error), index, term uint64) error {
	if err := db.bdb.DropAll(); err != nil {
		return fmt.Errorf("drop all: %w", err)
	}
	wb := db.bdb.NewWriteBatch()
	defer wb.Cancel()
	for {
		key, val, ok, err := next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if isReserved(key) {
			return ErrReservedKey
		}
		// WriteBatch keeps references until flushed: hand it copies.
		if err := wb.Set(append([]byte(nil), key...), append([]byte(nil), val...)); err != nil {
			return fmt.Errorf("write batch: %w", err)
		}
	}
	if err := wb.Set(appliedKey, encodeApplied(index, term)); err != nil {
		return fmt.Errorf("write batch: %w", err)
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	if db.dir != "" {
		// SyncWrites makes every batch commit durable; Sync again to be
		// explicit before the marker goes away.
		if err := db.bdb.Sync(); err != nil {
			return fmt.Errorf("sync: %w", err)
		}
	}
	return nil
}
