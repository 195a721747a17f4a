package fsm

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"

	"github.com/kmsd/kmsd/storage"
)

// Config configures an FSM. The zero value is valid.
type Config struct {
	// Logger receives the FSM's logs. nil = slog.Default().
	Logger *slog.Logger
	// OnDelete, if set, is called with the name of every key a DeleteKey
	// removed, after the deleting transaction committed and before the
	// applied index is published (so once WaitApplied returns for that
	// index, OnDelete has run). It runs on raft's apply goroutine: it must
	// be quick and must not call back into raft.
	OnDelete func(name string)
	// OnRestore, if set, is called after a snapshot replaced the whole
	// state: every cache derived from the state must be purged.
	OnRestore func()
	// TempDir is where Restore spools an incoming snapshot while it is
	// verified. "" = os.TempDir(). Put it on the data disk in production.
	TempDir string
}

// FSM is kmsd's replicated state machine. It implements raft.FSM and
// raft.BatchingFSM over a storage.DB, and read accessors for the local
// replica. See DESIGN.md for the invariants.
type FSM struct {
	db  *storage.DB
	cfg Config
	log *slog.Logger

	// mu serialises Apply/ApplyBatch/Restore. raft already calls them
	// from one goroutine; the mutex makes direct use (tests, tools) safe.
	mu sync.Mutex

	applied     atomic.Uint64 // index of the last entry applied (persisted)
	appliedTerm atomic.Uint64

	waitMu sync.Mutex
	waitCh chan struct{} // closed and replaced whenever applied moves
}

var (
	_ raft.FSM         = (*FSM)(nil)
	_ raft.BatchingFSM = (*FSM)(nil)
)

// New returns an FSM over db, seeded with the applied index stored in db.
func New(db *storage.DB, cfg Config) (*FSM, error) {
	if db == nil {
		return nil, errors.New("fsm: new: nil storage")
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	f := &FSM{db: db, cfg: cfg, log: logger.With("component", "fsm"), waitCh: make(chan struct{})}
	index, term, err := db.Applied()
	if err != nil {
		return nil, fmt.Errorf("fsm: new: %w", err)
	}
	f.applied.Store(index)
	f.appliedTerm.Store(term)
	return f, nil
}

// Apply applies one committed log entry. See ApplyBatch.
func (f *FSM) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies committed log entries in one storage transaction
// that also records the last entry's index and term.
//
// Entries at or below the applied index are skipped: with
// NoSnapshotRestoreOnStart raft replays the log after its last snapshot
// on every start, and they are already in storage. Each command entry
// yields a Result (CodeOK for skipped and ignored entries); other entry
// types (configuration changes) yield nil but still advance the index.
//
// Panics if an entry does not decode or storage cannot commit: a replica
// that cannot apply the log exactly must stop rather than diverge.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	f.mu.Lock()
	defer f.mu.Unlock()

	cmds := f.decodeAll(logs)
	results := make([]any, len(logs))
	var deleted []string
	err := f.db.Update(func(tx storage.Txn) error {
		var err error
		deleted, err = f.applyTxn(tx, logs, cmds, results)
		return err
	})
	if errors.Is(err, storage.ErrTxnTooBig) && len(logs) > 1 {
		// Too much for one transaction: apply one entry per transaction.
		// Deterministic: every replica uses the same limits.
		for i, l := range logs {
			results[i] = f.applyOneLocked(l, cmds[i])
		}
		return results
	}
	if err != nil {
		f.fatal("apply: storage transaction failed", err, logs)
	}
	f.publish(logs, deleted)
	return results
}

func (f *FSM) applyOneLocked(l *raft.Log, cmd Command) any {
	logs, cmds := []*raft.Log{l}, []Command{cmd}
	results := make([]any, 1)
	var deleted []string
	err := f.db.Update(func(tx storage.Txn) error {
		var err error
		deleted, err = f.applyTxn(tx, logs, cmds, results)
		return err
	})
	if err != nil {
		f.fatal("apply: storage transaction failed", err, logs)
	}
	f.publish(logs, deleted)
	return results[0]
}

// decodeAll decodes the command entries that are not yet applied. A
// decoding failure is fatal (see ApplyBatch).
func (f *FSM) decodeAll(logs []*raft.Log) []Command {
	applied := f.applied.Load()
	cmds := make([]Command, len(logs))
	for i, l := range logs {
		if l.Index <= applied || l.Type != raft.LogCommand {
			continue
		}
		c, err := Decode(l.Data)
		if err != nil {
			f.fatal("apply: undecodable log entry (upgrade this node?)", err, logs[i:i+1])
		}
		cmds[i] = c
	}
	return cmds
}

// applyTxn runs the handlers of logs inside tx, fills results and
// returns the names of deleted keys. It is the deterministic core: its
// only inputs are the entries and the state read through tx.
func (f *FSM) applyTxn(tx storage.Txn, logs []*raft.Log, cmds []Command, results []any) ([]string, error) {
	applied := f.applied.Load()
	var deleted []string
	var last *raft.Log
	for i, l := range logs {
		if l.Index <= applied {
			if l.Type == raft.LogCommand {
				results[i] = Result{Code: CodeOK, Message: "already applied", Index: l.Index}
			}
			continue
		}
		last = l
		if cmds[i] == nil {
			continue // not a command entry
		}
		res, del, err := dispatch(tx, cmds[i])
		if err != nil {
			return nil, err
		}
		res.Index = l.Index
		results[i] = res
		if del != "" {
			deleted = append(deleted, del)
		}
	}
	if last == nil {
		return nil, nil
	}
	return deleted, tx.SetApplied(last.Index, last.Term)
}

// publish runs the post-commit effects, then makes the new applied index
// visible and wakes WaitApplied callers.
func (f *FSM) publish(logs []*raft.Log, deleted []string) {
	if f.cfg.OnDelete != nil {
		for _, name := range deleted {
			f.cfg.OnDelete(name)
		}
	}
	last := logs[len(logs)-1]
	if last.Index <= f.applied.Load() {
		return
	}
	f.setApplied(last.Index, last.Term)
}

func (f *FSM) setApplied(index, term uint64) {
	f.appliedTerm.Store(term)
	f.applied.Store(index)
	f.waitMu.Lock()
	close(f.waitCh)
	f.waitCh = make(chan struct{})
	f.waitMu.Unlock()
}

func (f *FSM) fatal(msg string, err error, logs []*raft.Log) {
	first, last := logs[0].Index, logs[len(logs)-1].Index
	f.log.Error(msg, "error", err, "first_index", first, "last_index", last)
	panic(fmt.Sprintf("fsm: %s (entries %d..%d): %v", msg, first, last, err))
}
