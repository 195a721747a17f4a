package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/hashicorp/raft"
)

func populate(t *testing.T, f *testFSM) {
	t.Helper()
	cmds := []Command{
		&CreateKey{Key: testKey("a", 1)},
		&CreateKey{Key: testKey("b", 2)},
		&DeleteKey{Name: "a", RequestID: rid(3)},
		&PutStanza{KeyID: "hsm1", REKID: "rek1", Stanza: []byte("stanza-1")},
		&PutStanza{KeyID: "hsm2", REKID: "rek1", Stanza: []byte("stanza-2")},
		&CreateKey{Key: testKey("c", 4)},
	}
	for i, c := range cmds {
		f.apply(t, uint64(i+1), c)
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	src := newTestFSM(t, "")
	populate(t, src)
	snap := persist(t, src.FSM)

	dst := newTestFSM(t, "")
	dst.apply(t, 1, &CreateKey{Key: testKey("junk", 9)}) // must disappear
	if err := dst.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if a, b := src.dump(t), dst.dump(t); a != b {
		t.Fatalf("state differs after restore:\n%s\nvs\n%s", a, b)
	}
	if dst.AppliedIndex() != 6 || dst.rec.restores != 1 {
		t.Fatalf("applied %d restores %d", dst.AppliedIndex(), dst.rec.restores)
	}
	// Entries up to the snapshot index are skipped afterwards, new ones apply.
	if r := dst.apply(t, 6, &DeleteKey{Name: "c", RequestID: rid(5)}); r.Message != "already applied" {
		t.Fatalf("re-apply after restore: %+v", r)
	}
	if r := dst.apply(t, 7, &DeleteKey{Name: "c", RequestID: rid(5)}); r.Code != CodeOK {
		t.Fatalf("apply after restore: %+v", r)
	}

	info, err := VerifySnapshot(bytes.NewReader(snap))
	if err != nil {
		t.Fatalf("VerifySnapshot: %v", err)
	}
	want := "idx=6 term=1 recs=6 keys=2 tomb=1 stanzas=2 ids=[hsm1 hsm2] rek=rek1 ok=true"
	got := fmt.Sprintf("idx=%d term=%d recs=%d keys=%d tomb=%d stanzas=%d ids=%v rek=%s ok=%v",
		info.Index, info.Term, info.Records, info.Keys, info.Tombstones, info.Stanzas, info.StanzaKeyIDs, info.REKID, info.ChecksumOK)
	if got != want {
		t.Fatalf("VerifySnapshot = %s\nwant            %s", got, want)
	}
	hdr, err := ReadSnapshotHeader(bytes.NewReader(snap))
	if err != nil || hdr != info.SnapshotHeader {
		t.Fatalf("ReadSnapshotHeader = %+v, %v", hdr, err)
	}
}

// TestSnapshotDoesNotBlockApply: Apply continues between Snapshot and
// Persist, and the persisted stream is the state as of Snapshot().
func TestSnapshotDoesNotBlockApply(t *testing.T) {
	f := newTestFSM(t, "")
	populate(t, f)
	want := persist(t, f.FSM)
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	f.apply(t, 7, &CreateKey{Key: testKey("late", 7)})
	f.apply(t, 8, &DeleteKey{Name: "b", RequestID: rid(8)})
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sink.Bytes(), want) {
		t.Fatal("snapshot saw writes applied after Snapshot()")
	}
}

func TestSnapshotCorruptRejected(t *testing.T) {
	src := newTestFSM(t, "")
	populate(t, src)
	snap := persist(t, src.FSM)

	dst := newTestFSM(t, "")
	dst.apply(t, 1, &CreateKey{Key: testKey("keep", 1)})
	before := dst.dump(t)

	var cases []struct {
		name string
		b    []byte
		want error
	}
	add := func(name string, b []byte, want error) {
		cases = append(cases, struct {
			name string
			b    []byte
			want error
		}{name, b, want})
	}
	for _, pos := range []int{0, 9, 12, 20, 30, snapHdrLen + 1, len(snap) / 2, len(snap) - 33, len(snap) - 1} {
		b := bytes.Clone(snap)
		b[pos] ^= 0x01
		want := ErrSnapshotCorrupt
		if pos == 9 {
			want = ErrSnapshotVersion
		}
		add(fmt.Sprintf("flip byte %d", pos), b, want)
	}
	for _, n := range []int{0, 5, snapHdrLen, len(snap) / 2, len(snap) - 32, len(snap) - 1} {
		add(fmt.Sprintf("truncate to %d", n), snap[:n], ErrSnapshotCorrupt)
	}
	add("trailing byte", append(bytes.Clone(snap), 0), ErrSnapshotCorrupt)

	for i, tc := range cases {
		err := dst.Restore(io.NopCloser(bytes.NewReader(tc.b)))
		if !errors.Is(err, tc.want) {
			t.Fatalf("Test %d (%s): Restore = %v, want %v", i, tc.name, err, tc.want)
		}
		if _, err := VerifySnapshot(bytes.NewReader(tc.b)); !errors.Is(err, tc.want) {
			t.Fatalf("Test %d (%s): VerifySnapshot = %v", i, tc.name, err)
		}
		if after := dst.dump(t); after != before {
			t.Fatalf("Test %d (%s): state changed by a rejected snapshot", i, tc.name)
		}
	}
	if dst.rec.restores != 0 {
		t.Fatal("OnRestore called for a rejected snapshot")
	}
}

// TestSnapshotBadRecordRejected: a snapshot whose checksum is right but
// one record does not decode is still rejected before state changes.
func TestSnapshotBadRecordRejected(t *testing.T) {
	e := &enc{}
	e.b = encodeSnapHeader(SnapshotHeader{Version: snapVersion1, Index: 3, Term: 1, Records: 1})
	e.str("k/x")
	e.bytes([]byte{recordVersion1, 0xFF})
	b := append(e.b, sha256Sum(e.b)...)
	dst := newTestFSM(t, "")
	if err := dst.Restore(io.NopCloser(bytes.NewReader(b))); !errors.Is(err, ErrSnapshotCorrupt) {
		t.Fatalf("Restore = %v", err)
	}
	if dst.AppliedIndex() != 0 {
		t.Fatal("state touched")
	}
}

type failSink struct{ memSink }

func (s *failSink) Write(p []byte) (int, error) { return 0, errors.New("disk full") }

func TestPersistFailureCancels(t *testing.T) {
	f := newTestFSM(t, "")
	populate(t, f)
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	var sink failSink
	if err := snap.Persist(&sink); err == nil || !sink.cancelled || sink.closed {
		t.Fatalf("Persist = %v cancelled=%v closed=%v", err, sink.cancelled, sink.closed)
	}
	if err := f.db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Snapshot(); err == nil {
		t.Fatal("Snapshot on a closed store succeeded")
	}
}

// TestPersistConcurrentWithApply runs Persist while Apply keeps writing
// (race detector food) and checks the stream is the state at Snapshot().
func TestPersistConcurrentWithApply(t *testing.T) {
	f := newTestFSM(t, "")
	for i := range 200 {
		f.apply(t, uint64(i+1), &CreateKey{Key: testKey(fmt.Sprintf("p%03d", i), byte(i))})
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200 {
			b, _ := Encode(&DeleteKey{Name: fmt.Sprintf("p%03d", i), RequestID: rid(1)})
			f.Apply(&raft.Log{Index: uint64(201 + i), Term: 1, Type: raft.LogCommand, Data: b})
		}
	}()
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	<-done
	info, err := VerifySnapshot(bytes.NewReader(sink.Bytes()))
	if err != nil || info.Keys != 200 || info.Index != 200 {
		t.Fatalf("snapshot = %+v, %v", info, err)
	}
	if names, _ := f.ListKeys(""); len(names) != 0 || f.AppliedIndex() != 400 {
		t.Fatalf("after deletes: %d keys, applied %d", len(names), f.AppliedIndex())
	}
}
