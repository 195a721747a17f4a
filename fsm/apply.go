package fsm

import (
	"errors"
	"fmt"

	"github.com/kmsd/kmsd/storage"
)

// handler applies one decoded command inside tx. It returns the result
// (without Index), the name of a deleted key (for OnDelete) and an error
// only for storage failures, which are fatal. Domain outcomes travel in
// Result.Code. Handlers must be deterministic: no clock, no randomness,
// no I/O besides tx.
type handler func(tx storage.Txn, c Command) (res Result, deleted string, err error)

// handlers is the dispatch table. Adding a command: a type constant in
// types.go, an Encode case and a decoder in command.go, a golden vector
// in testdata/, and an entry here.
var handlers = map[CommandType]handler{
	CmdCreateKey: applyCreateKey,
	CmdDeleteKey: applyDeleteKey,
	CmdPutStanza: applyPutStanza,
}

func dispatch(tx storage.Txn, c Command) (Result, string, error) {
	if _, ok := c.(*Ignored); ok {
		return Result{Code: CodeOK, Message: "ignored unknown command"}, "", nil
	}
	h, ok := handlers[c.Type()]
	if !ok { // unreachable: Decode only yields known types or *Ignored
		return Result{Code: CodeInvalid, Message: fmt.Sprintf("no handler for type %d", c.Type())}, "", nil
	}
	return h(tx, c)
}

func invalid(msg string) Result { return Result{Code: CodeInvalid, Message: msg} }

func applyCreateKey(tx storage.Txn, c Command) (Result, string, error) {
	k := &c.(*CreateKey).Key
	if k.Name == "" {
		return invalid("empty key name"), "", nil
	}
	old, err := tx.Get(keyKey(k.Name))
	switch {
	case err == nil:
		rec, err := decodeKeyRecord(old)
		if err != nil {
			return Result{}, "", err
		}
		// A retry of the create that made this key (same proposer
		// request id) succeeds without change. A zero id matches nothing.
		if k.RequestID != ([16]byte{}) && rec.RequestID == k.RequestID {
			return Result{Code: CodeOK}, "", nil
		}
		return Result{Code: CodeKeyExists}, "", nil
	case !errors.Is(err, storage.ErrNotFound):
		return Result{}, "", err
	}
	if err := tx.Set(keyKey(k.Name), encodeKeyRecord(k)); err != nil {
		return Result{}, "", err
	}
	return Result{Code: CodeOK}, "", tx.Delete(tombstoneKey(k.Name))
}

func applyDeleteKey(tx storage.Txn, c Command) (Result, string, error) {
	d := c.(*DeleteKey)
	if d.Name == "" {
		return invalid("empty key name"), "", nil
	}
	_, err := tx.Get(keyKey(d.Name))
	if errors.Is(err, storage.ErrNotFound) {
		return deleteRetry(tx, d)
	}
	if err != nil {
		return Result{}, "", err
	}
	if err := tx.Delete(keyKey(d.Name)); err != nil {
		return Result{}, "", err
	}
	if err := tx.Set(tombstoneKey(d.Name), encodeTombstone(d.RequestID)); err != nil {
		return Result{}, "", err
	}
	return Result{Code: CodeOK}, d.Name, nil
}

// deleteRetry resolves a delete of an absent key: it is a retry of the
// delete that removed it (same non-zero request id, recorded in the
// tombstone) → CodeOK; otherwise CodeKeyNotFound.
func deleteRetry(tx storage.Txn, d *DeleteKey) (Result, string, error) {
	b, err := tx.Get(tombstoneKey(d.Name))
	if errors.Is(err, storage.ErrNotFound) {
		return Result{Code: CodeKeyNotFound}, "", nil
	}
	if err != nil {
		return Result{}, "", err
	}
	id, err := decodeTombstone(b)
	if err != nil {
		return Result{}, "", err
	}
	if d.RequestID != ([16]byte{}) && id == d.RequestID {
		return Result{Code: CodeOK}, "", nil
	}
	return Result{Code: CodeKeyNotFound}, "", nil
}

func applyPutStanza(tx storage.Txn, c Command) (Result, string, error) {
	s := c.(*PutStanza)
	switch {
	case s.KeyID == "":
		return invalid("empty HSM key id"), "", nil
	case s.REKID == "":
		return invalid("empty REK id"), "", nil
	case len(s.Stanza) == 0:
		return invalid("empty stanza"), "", nil
	}
	cur, err := tx.Get([]byte(keyREKID))
	switch {
	case err == nil:
		if string(cur) != s.REKID {
			return invalid(fmt.Sprintf("stanza wraps REK %q, the cluster's REK is %q", s.REKID, cur)), "", nil
		}
	case errors.Is(err, storage.ErrNotFound):
		if err := tx.Set([]byte(keyREKID), []byte(s.REKID)); err != nil {
			return Result{}, "", err
		}
	default:
		return Result{}, "", err
	}
	return Result{Code: CodeOK}, "", tx.Set(stanzaKey(s.KeyID), encodeStanzaRecord(s))
}
