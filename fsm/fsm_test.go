package fsm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestApplyCommands(t *testing.T) {
	f := newTestFSM(t, "")
	a := testKey("a", 1)
	tests := []struct {
		name string
		cmd  Command
		want Code
	}{
		{"create a", &CreateKey{Key: a}, CodeOK},
		{"create a retry same request id", &CreateKey{Key: a}, CodeOK},
		{"create a other request id", &CreateKey{Key: testKey("a", 2)}, CodeKeyExists},
		{"create a zero request id", &CreateKey{Key: testKey("a", 0)}, CodeKeyExists},
		{"create empty name", &CreateKey{Key: testKey("", 3)}, CodeInvalid},
		{"create b", &CreateKey{Key: testKey("b", 4)}, CodeOK},
		{"delete absent", &DeleteKey{Name: "zz", RequestID: rid(5)}, CodeKeyNotFound},
		{"delete a", &DeleteKey{Name: "a", RequestID: rid(6)}, CodeOK},
		{"delete a retry same request id", &DeleteKey{Name: "a", RequestID: rid(6)}, CodeOK},
		{"delete a other request id", &DeleteKey{Name: "a", RequestID: rid(7)}, CodeKeyNotFound},
		{"delete empty name", &DeleteKey{Name: ""}, CodeInvalid},
		{"recreate a", &CreateKey{Key: testKey("a", 8)}, CodeOK},
		{"delete a again, old id", &DeleteKey{Name: "a", RequestID: rid(6)}, CodeOK},
		{"put stanza 1", &PutStanza{KeyID: "hsm1", REKID: "rek", Stanza: []byte{1}}, CodeOK},
		{"put stanza 2", &PutStanza{KeyID: "hsm2", REKID: "rek", Stanza: []byte{2}}, CodeOK},
		{"replace stanza 1", &PutStanza{KeyID: "hsm1", REKID: "rek", Stanza: []byte{3}}, CodeOK},
		{"stanza other REK", &PutStanza{KeyID: "hsm3", REKID: "other", Stanza: []byte{4}}, CodeInvalid},
		{"stanza empty key id", &PutStanza{REKID: "rek", Stanza: []byte{4}}, CodeInvalid},
		{"stanza empty rek id", &PutStanza{KeyID: "x", Stanza: []byte{4}}, CodeInvalid},
		{"stanza empty", &PutStanza{KeyID: "x", REKID: "rek"}, CodeInvalid},
	}
	for i, tc := range tests {
		index := uint64(i + 1)
		got := f.apply(t, index, tc.cmd)
		if got.Code != tc.want || got.Index != index {
			t.Fatalf("Test %d (%s): got %+v, want code %d at index %d", i, tc.name, got, tc.want, index)
		}
		if f.AppliedIndex() != index {
			t.Fatalf("Test %d (%s): AppliedIndex = %d", i, tc.name, f.AppliedIndex())
		}
	}

	if _, err := f.GetKey("a"); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("GetKey(a) = %v", err)
	}
	got, err := f.GetKey("b")
	if err != nil || fmt.Sprint(got) != fmt.Sprint(testKey("b", 4)) {
		t.Fatalf("GetKey(b) = %+v, %v", got, err)
	}
	if names, err := f.ListKeys(""); err != nil || fmt.Sprint(names) != "[b]" {
		t.Fatalf("ListKeys = %v, %v", names, err)
	}
	st, err := f.Stanzas()
	if err != nil || len(st) != 2 || st[0].KeyID != "hsm1" || st[0].Stanza[0] != 3 || st[1].KeyID != "hsm2" {
		t.Fatalf("Stanzas = %+v, %v", st, err)
	}
	if id, err := f.REKID(); err != nil || id != "rek" {
		t.Fatalf("REKID = %q, %v", id, err)
	}
	if d := f.rec.deletes(); fmt.Sprint(d) != "[a a]" {
		t.Fatalf("OnDelete calls = %v", d)
	}
	if r := (Result{Code: CodeKeyExists}); !errors.Is(r.Err(), ErrKeyExists) {
		t.Fatal("Result.Err mapping")
	}
}

func TestOnDeleteAfterCommit(t *testing.T) {
	f := newTestFSM(t, "")
	var sawGone, sawApplied bool
	f.cfg.OnDelete = func(name string) {
		_, err := f.GetKey(name)
		sawGone = errors.Is(err, ErrKeyNotFound)
		sawApplied = f.AppliedIndex() == 2
	}
	f.apply(t, 1, &CreateKey{Key: testKey("a", 1)})
	f.apply(t, 2, &DeleteKey{Name: "a", RequestID: rid(2)})
	if !sawGone {
		t.Fatal("OnDelete ran before the delete was visible")
	}
	if sawApplied {
		t.Fatal("OnDelete ran after the applied index was published")
	}
}

func TestListKeys(t *testing.T) {
	f := newTestFSM(t, "")
	for i, n := range []string{"app-2", "app-1", "db", "app-10", "b"} {
		f.apply(t, uint64(i+1), &CreateKey{Key: testKey(n, byte(i+1))})
	}
	tests := []struct {
		prefix, start string
		limit         int
		want, next    string
	}{
		{"", "", 0, "[app-1 app-10 app-2 b db]", ""},
		{"app-", "", 0, "[app-1 app-10 app-2]", ""},
		{"app-", "", 2, "[app-1 app-10]", "app-2"},
		{"app-", "app-2", 2, "[app-2]", ""},
		{"x", "", 0, "[]", ""},
	}
	for i, tc := range tests {
		names, next, err := f.ListKeysPage(tc.prefix, tc.start, tc.limit)
		if err != nil || fmt.Sprint(names) != tc.want || next != tc.next {
			t.Fatalf("Test %d: got %v next %q err %v; want %s next %q", i, names, next, err, tc.want, tc.next)
		}
	}
}

// TestSkipApplied: entries at or below the applied index (raft replays
// them after a restart) change nothing and fire no callbacks.
func TestSkipApplied(t *testing.T) {
	dir := t.TempDir()
	f := newTestFSM(t, dir)
	cmds := []Command{
		&CreateKey{Key: testKey("a", 1)},
		&CreateKey{Key: testKey("b", 2)},
		&DeleteKey{Name: "a", RequestID: rid(3)},
		&CreateKey{Key: testKey("c", 4)},
		&DeleteKey{Name: "b", RequestID: rid(5)},
	}
	for i, c := range cmds {
		f.apply(t, uint64(i+1), c)
	}
	before := f.dump(t)
	nDel := len(f.rec.deletes())

	// Restart: close storage, reopen, new FSM.
	if err := f.db.Close(); err != nil {
		t.Fatal(err)
	}
	f = newTestFSM(t, dir)
	if f.AppliedIndex() != 5 {
		t.Fatalf("AppliedIndex after reopen = %d, want 5", f.AppliedIndex())
	}
	// Replay 3..5 one by one and as a batch.
	for i := 2; i < 5; i++ {
		r := f.apply(t, uint64(i+1), cmds[i])
		if r.Code != CodeOK || r.Index != uint64(i+1) {
			t.Fatalf("replayed %d: %+v", i+1, r)
		}
	}
	var batch []*raft.Log
	for i := 2; i < 5; i++ {
		batch = append(batch, entry(t, uint64(i+1), cmds[i]))
	}
	f.ApplyBatch(batch)
	if after := f.dump(t); after != before {
		t.Fatalf("replay changed state:\n%s\nvs\n%s", before, after)
	}
	if n := len(f.rec.deletes()); n != 0 || nDel != 2 {
		t.Fatalf("OnDelete calls on replay: %d (before restart %d)", n, nDel)
	}
	// A batch straddling the applied index applies only the new tail.
	batch = append(batch, entry(t, 6, &DeleteKey{Name: "c", RequestID: rid(6)}))
	res := f.ApplyBatch(batch)
	if r := res[3].(Result); r.Code != CodeOK || r.Index != 6 {
		t.Fatalf("new entry in replay batch: %+v", r)
	}
	if d := f.rec.deletes(); fmt.Sprint(d) != "[c]" || f.AppliedIndex() != 6 {
		t.Fatalf("deletes %v applied %d", d, f.AppliedIndex())
	}
}

func TestApplyBatchMixed(t *testing.T) {
	f := newTestFSM(t, "")
	ign := append([]byte{0xFE}, "future"...)
	logs := []*raft.Log{
		entry(t, 1, &CreateKey{Key: testKey("a", 1)}),
		{Index: 2, Term: 1, Type: raft.LogConfiguration, Data: []byte("cfg")},
		entry(t, 3, &DeleteKey{Name: "a", RequestID: rid(2)}),
		{Index: 4, Term: 2, Type: raft.LogCommand, Data: ign},
		entry(t, 5, &CreateKey{Key: testKey("a", 3)}),
	}
	logs[4].Term = 2
	res := f.ApplyBatch(logs)
	want := []string{"0@1", "<nil>", "0@3", "0@4", "0@5"}
	for i, r := range res {
		s := fmt.Sprint(r)
		if r, ok := r.(Result); ok {
			s = fmt.Sprintf("%d@%d", r.Code, r.Index)
		}
		if s != want[i] {
			t.Fatalf("result %d = %s, want %s", i, s, want[i])
		}
	}
	if i, tm := f.Applied(); i != 5 || tm != 2 {
		t.Fatalf("Applied = %d/%d", i, tm)
	}
	if k, err := f.GetKey("a"); err != nil || k.RequestID != rid(3) {
		t.Fatalf("GetKey = %+v, %v", k, err)
	}
	// A batch of only a configuration entry still advances the index.
	f.ApplyBatch([]*raft.Log{{Index: 6, Term: 2, Type: raft.LogConfiguration}})
	if f.AppliedIndex() != 6 {
		t.Fatalf("AppliedIndex = %d", f.AppliedIndex())
	}
}

func TestApplyPanicsOnGarbage(t *testing.T) {
	f := newTestFSM(t, "")
	for i, data := range [][]byte{nil, {0x7F, 1}, {byte(CmdCreateKey), 9}, {byte(CmdDeleteKey), 1, 200}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Fatalf("Test %d: Apply(%x) did not panic", i, data)
				}
			}()
			f.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: data})
		}()
		if f.AppliedIndex() != 0 {
			t.Fatalf("Test %d: applied index moved", i)
		}
	}
}

func TestWaitApplied(t *testing.T) {
	f := newTestFSM(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if err := f.WaitApplied(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitApplied = %v", err)
	}
	if err := f.WaitApplied(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- f.WaitApplied(ctx, 3)
	}()
	for i := uint64(1); i <= 3; i++ {
		f.apply(t, i, &CreateKey{Key: testKey(fmt.Sprint(i), byte(i))})
	}
	if err := <-done; err != nil {
		t.Fatalf("WaitApplied: %v", err)
	}
}

func TestLargeBatchSplits(t *testing.T) {
	f := newTestFSM(t, "")
	// ~64 entries of ~20 KiB exceed one badger transaction (~600 KiB).
	var logs []*raft.Log
	for i := range 64 {
		k := testKey(fmt.Sprintf("k%02d", i), byte(i+1))
		k.Sealed = []byte(strings.Repeat("x", 20<<10))
		logs = append(logs, entry(t, uint64(i+1), &CreateKey{Key: k}))
	}
	res := f.ApplyBatch(logs)
	for i, r := range res {
		if r.(Result).Code != CodeOK {
			t.Fatalf("result %d: %+v", i, r)
		}
	}
	if names, _ := f.ListKeys(""); len(names) != 64 || f.AppliedIndex() != 64 {
		t.Fatalf("%d keys, applied %d", len(names), f.AppliedIndex())
	}
}

func TestNew(t *testing.T) {
	if _, err := New(nil, Config{}); err == nil {
		t.Fatal("New(nil) succeeded")
	}
}
