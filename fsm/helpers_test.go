package fsm

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kmsd/kmsd/storage"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// recorder counts OnDelete and OnRestore calls.
type recorder struct {
	mu       sync.Mutex
	deleted  []string
	restores int
}

func (r *recorder) onDelete(name string) {
	r.mu.Lock()
	r.deleted = append(r.deleted, name)
	r.mu.Unlock()
}
func (r *recorder) onRestore() { r.mu.Lock(); r.restores++; r.mu.Unlock() }
func (r *recorder) deletes() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.deleted...)
}

type testFSM struct {
	*FSM
	db  *storage.DB
	dir string
	rec *recorder
}

func newTestFSM(t *testing.T, dir string) *testFSM {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	db, err := storage.Open(storage.Options{Dir: dir, Logger: quiet})
	if err != nil {
		t.Fatalf("storage.Open: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	rec := &recorder{}
	f, err := New(db, Config{Logger: quiet, OnDelete: rec.onDelete, OnRestore: rec.onRestore, TempDir: t.TempDir()})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return &testFSM{FSM: f, db: db, dir: dir, rec: rec}
}

func entry(t *testing.T, index uint64, c Command) *raft.Log {
	t.Helper()
	b, err := Encode(c)
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	return &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: b}
}

func (f *testFSM) apply(t *testing.T, index uint64, c Command) Result {
	t.Helper()
	r, ok := f.Apply(entry(t, index, c)).(Result)
	if !ok {
		t.Fatalf("Apply returned %T", r)
	}
	return r
}

// dump renders the whole store (and applied index) for equality checks.
func (f *testFSM) dump(t *testing.T) string {
	t.Helper()
	var b bytes.Buffer
	i, tm, err := f.db.Applied()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "applied=%d/%d\n", i, tm)
	err = f.db.View(func(tx storage.Txn) error {
		return tx.Iterate(nil, nil, func(k, v []byte) (bool, error) {
			fmt.Fprintf(&b, "%q=%x\n", k, v)
			return true, nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func rid(b byte) (id [16]byte) {
	for i := range id {
		id[i] = b
	}
	return id
}

func testKey(name string, id byte) Key {
	return Key{
		Name:      name,
		Algorithm: 1,
		Version:   1,
		Sealed:    []byte("sealed:" + name),
		CreatedAt: time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC),
		CreatedBy: "3ecfcdf38fcbe141ae26a1030f81e96b753365a46760ae6b578698a97c59fd22",
		RequestID: rid(id),
	}
}

// memSink is a raft.SnapshotSink over a buffer.
type memSink struct {
	bytes.Buffer
	cancelled, closed bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { s.closed = true; return nil }

func persist(t *testing.T, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	defer snap.Release()
	var sink memSink
	if err := snap.Persist(&sink); err != nil || !sink.closed {
		t.Fatalf("Persist: %v (closed=%v)", err, sink.closed)
	}
	return sink.Bytes()
}
