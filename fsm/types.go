package fsm

import (
	"errors"
	"time"
)

// CommandType is the first byte of every raft log entry kmsd writes.
// Bit 0x80 marks a command as ignorable: a node that does not know the
// type skips it instead of halting (Consul's forward-compatibility rule).
type CommandType uint8

// Command types. The numeric values are frozen: they are part of the raft
// log format and pinned by the golden vectors in testdata/.
const (
	CmdCreateKey CommandType = 1 // create or import a master key
	CmdDeleteKey CommandType = 2 // delete a master key
	CmdPutStanza CommandType = 3 // record a node's seal stanza (wrapped REK)

	IgnorableFlag CommandType = 0x80
)

// Command is a replicated state change. Concrete commands are *CreateKey,
// *DeleteKey and *PutStanza; Encode/Decode map them to and from bytes.
type Command interface {
	Type() CommandType
}

// Key is the replicated record of one master key. The secret material is
// only ever held sealed under the cluster REK (see package seal); nothing
// in this struct is secret in clear.
type Key struct {
	Name      string
	Algorithm uint8     // 1 = AES256, 2 = ChaCha20 (same numbers as seal.Algorithm)
	Version   uint32    // key version, 1 for now (no rotation yet)
	Sealed    []byte    // material sealed by seal.Keyring.SealKey(Name, Version, ...)
	CreatedAt time.Time // UTC, stamped by the proposing node
	CreatedBy string    // hex identity of the creator
	Imported  bool      // true when the material came from /v1/key/import
	RequestID [16]byte  // proposer-generated id; resolves ambiguous retries
}

// CreateKey creates (or imports) Key. Applying it fails with
// CodeKeyExists unless a key of that name exists with the same RequestID,
// in which case it succeeds without change (an idempotent retry).
type CreateKey struct{ Key Key }

// DeleteKey removes the key Name. Fails with CodeKeyNotFound if absent.
type DeleteKey struct {
	Name      string
	RequestID [16]byte
}

// PutStanza records the seal stanza of one HSM key in the replicated
// state. Stanza is the opaque encoding of seal.Stanza; KeyID is the HSM
// key's id (the record's key) and REKID the fingerprint of the REK it
// wraps. Applying fails with CodeInvalid if REKID differs from the REK id
// already recorded: a cluster has exactly one REK.
type PutStanza struct {
	KeyID  string
	REKID  string
	Stanza []byte
}

func (*CreateKey) Type() CommandType { return CmdCreateKey }
func (*DeleteKey) Type() CommandType { return CmdDeleteKey }
func (*PutStanza) Type() CommandType { return CmdPutStanza }

// Code is the outcome of applying a command. Codes, not Go errors, cross
// the raft log and the forwarding wire.
type Code uint8

// Result codes. Frozen numeric values.
const (
	CodeOK          Code = 0
	CodeKeyExists   Code = 1
	CodeKeyNotFound Code = 2
	CodeInvalid     Code = 3
	CodeInternal    Code = 4
)

// Result is what Apply returns for one command.
type Result struct {
	Code    Code
	Message string // human detail for CodeInvalid/CodeInternal; never secret
	Index   uint64 // raft index the command was applied at
}

// Domain errors. Result.Err maps codes to these; compare with errors.Is.
var (
	ErrKeyExists   = errors.New("fsm: key already exists")
	ErrKeyNotFound = errors.New("fsm: key does not exist")
	ErrInvalid     = errors.New("fsm: invalid command")
	ErrInternal    = errors.New("fsm: internal error")
)

// Err returns nil for CodeOK and the matching sentinel (wrapped with the
// message, if any) otherwise.
func (r Result) Err() error {
	var base error
	switch r.Code {
	case CodeOK:
		return nil
	case CodeKeyExists:
		base = ErrKeyExists
	case CodeKeyNotFound:
		base = ErrKeyNotFound
	case CodeInvalid:
		base = ErrInvalid
	default:
		base = ErrInternal
	}
	if r.Message == "" {
		return base
	}
	return &resultError{base: base, msg: r.Message}
}

type resultError struct {
	base error
	msg  string
}

func (e *resultError) Error() string { return e.base.Error() + ": " + e.msg }
func (e *resultError) Unwrap() error { return e.base }
