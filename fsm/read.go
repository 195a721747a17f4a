package fsm

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/kmsd/kmsd/storage"
)

// GetKey returns the key record name from the local replica, or
// ErrKeyNotFound. The local replica may lag the leader: a caller that must
// not report "not found" for a committed key waits on a read barrier first.
func (f *FSM) GetKey(name string) (Key, error) {
	var k Key
	err := f.db.View(func(tx storage.Txn) error {
		b, err := tx.Get(keyKey(name))
		if errors.Is(err, storage.ErrNotFound) || name == "" {
			return ErrKeyNotFound
		}
		if err != nil {
			return err
		}
		k, err = decodeKeyRecord(b)
		return err
	})
	return k, err
}

// ListKeys returns the names of all keys starting with prefix, sorted.
func (f *FSM) ListKeys(prefix string) ([]string, error) {
	names, _, err := f.ListKeysPage(prefix, "", 0)
	return names, err
}

// ListKeysPage returns at most limit (0 = no limit) names starting with
// prefix that are >= start, sorted, and the name to pass as start to get
// the next page ("" when there is none).
func (f *FSM) ListKeysPage(prefix, start string, limit int) (names []string, next string, err error) {
	p := keyKey(prefix)
	var s []byte
	if start != "" {
		s = keyKey(start)
	}
	err = f.db.View(func(tx storage.Txn) error {
		return tx.Iterate(p, s, func(k, _ []byte) (bool, error) {
			name := strings.TrimPrefix(string(k), prefixKey)
			if limit > 0 && len(names) == limit {
				next = name
				return false, nil
			}
			names = append(names, name)
			return true, nil
		})
	})
	if err != nil {
		return nil, "", fmt.Errorf("fsm: list keys: %w", err)
	}
	return names, next, nil
}

// Stanzas returns every seal stanza recorded in the replicated state,
// sorted by KeyID.
func (f *FSM) Stanzas() ([]PutStanza, error) {
	var out []PutStanza
	err := f.db.View(func(tx storage.Txn) error {
		return tx.Iterate([]byte(prefixStanza), nil, func(_, v []byte) (bool, error) {
			s, err := decodeStanzaRecord(v)
			out = append(out, s)
			return err == nil, err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("fsm: stanzas: %w", err)
	}
	return out, nil
}

// REKID returns the id of the cluster's REK, or "" if no stanza has been
// recorded yet.
func (f *FSM) REKID() (string, error) {
	var id string
	err := f.db.View(func(tx storage.Txn) error {
		b, err := tx.Get([]byte(keyREKID))
		if errors.Is(err, storage.ErrNotFound) {
			return nil
		}
		id = string(b)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("fsm: rek id: %w", err)
	}
	return id, nil
}

// AppliedIndex returns the raft index of the last entry applied to (and
// persisted in) the local state. It is a single atomic load.
func (f *FSM) AppliedIndex() uint64 { return f.applied.Load() }

// Applied returns the index and term of the last applied entry. The term
// is loaded first; it is never newer than the index's entry's term.
func (f *FSM) Applied() (index, term uint64) {
	term = f.appliedTerm.Load()
	return f.applied.Load(), term
}

// WaitApplied returns nil once AppliedIndex() >= index, or ctx's error.
// It sleeps on a channel closed by every apply: no polling.
//
// Note that raft does not pass every log entry to the FSM (leader no-op
// and barrier entries never reach it), so index must be the index of an
// entry the FSM sees — typically another replica's AppliedIndex — and not
// a raw raft commit index. See cluster/DESIGN.md.
func (f *FSM) WaitApplied(ctx context.Context, index uint64) error {
	for {
		f.waitMu.Lock()
		ch := f.waitCh
		f.waitMu.Unlock()
		if f.applied.Load() >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("fsm: wait for index %d (applied %d): %w", index, f.applied.Load(), ctx.Err())
		}
	}
}
