package storage

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// Txn is a transaction passed to DB.View and DB.Update. It must not be
// used after the function it was passed to returns.
//
// Keys whose first byte is 0x00, and the empty key, are reserved: Set and
// Delete reject them with ErrReservedKey and Iterate skips them.
type Txn interface {
	// Get returns a copy of the value stored under key, or ErrNotFound.
	Get(key []byte) ([]byte, error)
	// Set stores val under key. Both slices are copied.
	Set(key, val []byte) error
	// Delete removes key. Deleting an absent key is not an error.
	Delete(key []byte) error
	// Iterate calls fn for every key with the given prefix that is >=
	// start (a full key; nil means from the first key with the prefix),
	// in ascending byte order, until fn returns more == false or an
	// error. The slices passed to fn are copies owned by fn.
	Iterate(prefix, start []byte, fn func(key, val []byte) (more bool, err error)) error
	// SetApplied records the raft index and term this transaction
	// applies. Because it is part of the same transaction as the data,
	// the data and the index are durable together or not at all.
	SetApplied(index, term uint64) error
}

type txn struct {
	t  *badger.Txn
	rw bool
}

func (x *txn) Get(key []byte) ([]byte, error) {
	if isReserved(key) {
		return nil, ErrNotFound
	}
	item, err := x.t.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("storage: get: %w", err)
	}
	v, err := item.ValueCopy(nil)
	if err != nil {
		return nil, fmt.Errorf("storage: get: %w", err)
	}
	return v, nil
}

func (x *txn) Set(key, val []byte) error {
	if isReserved(key) {
		return ErrReservedKey
	}
	return x.set(key, val)
}

func (x *txn) set(key, val []byte) error {
	// badger keeps the slices until commit: copy so callers may reuse.
	if err := x.t.Set(bytes.Clone(key), bytes.Clone(val)); err != nil {
		if errors.Is(err, badger.ErrTxnTooBig) {
			return fmt.Errorf("%w: %w", ErrTxnTooBig, err)
		}
		return fmt.Errorf("storage: set: %w", err)
	}
	return nil
}

func (x *txn) Delete(key []byte) error {
	if isReserved(key) {
		return ErrReservedKey
	}
	if err := x.t.Delete(bytes.Clone(key)); err != nil {
		if errors.Is(err, badger.ErrTxnTooBig) {
			return fmt.Errorf("%w: %w", ErrTxnTooBig, err)
		}
		return fmt.Errorf("storage: delete: %w", err)
	}
	return nil
}

func (x *txn) SetApplied(index, term uint64) error {
	return x.set(appliedKey, encodeApplied(index, term))
}

func (x *txn) applied() (index, term uint64, err error) {
	item, err := x.t.Get(appliedKey)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("storage: applied: %w", err)
	}
	v, err := item.ValueCopy(nil)
	if err != nil {
		return 0, 0, fmt.Errorf("storage: applied: %w", err)
	}
	return decodeApplied(v)
}

func (x *txn) Iterate(prefix, start []byte, fn func(key, val []byte) (bool, error)) error {
	return iterate(x.t, prefix, start, true, fn)
}

// iterate walks the visible keys of t with the given prefix from start.
// With values false, fn receives nil values (key-only scan).
func iterate(t *badger.Txn, prefix, start []byte, values bool, fn func(key, val []byte) (bool, error)) error {
	opts := badger.DefaultIteratorOptions
	opts.Prefix = prefix
	opts.PrefetchValues = values
	opts.PrefetchSize = 64
	it := t.NewIterator(opts)
	defer it.Close()

	seek := prefix
	if bytes.Compare(start, seek) > 0 {
		seek = start
	}
	for it.Seek(seek); it.ValidForPrefix(prefix); it.Next() {
		item := it.Item()
		if isReserved(item.Key()) {
			continue
		}
		key := item.KeyCopy(nil)
		var val []byte
		if values {
			v, err := item.ValueCopy(nil)
			if err != nil {
				return fmt.Errorf("storage: iterate: %w", err)
			}
			val = v
		}
		more, err := fn(key, val)
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
	}
	return nil
}
