package storage

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func openTest(t *testing.T, dir string) *DB {
	t.Helper()
	db, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func mustUpdate(t *testing.T, db *DB, fn func(Txn) error) {
	t.Helper()
	if err := db.Update(fn); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

func get(t *testing.T, db *DB, key string) (string, error) {
	t.Helper()
	var v []byte
	err := db.View(func(tx Txn) error {
		var err error
		v, err = tx.Get([]byte(key))
		return err
	})
	return string(v), err
}

func TestCRUD(t *testing.T) {
	db := openTest(t, t.TempDir())
	tests := []struct {
		name    string
		op      func(Txn) error
		key     string
		want    string
		wantErr error
	}{
		{"set", func(tx Txn) error { return tx.Set([]byte("a"), []byte("1")) }, "a", "1", nil},
		{"overwrite", func(tx Txn) error { return tx.Set([]byte("a"), []byte("2")) }, "a", "2", nil},
		{"delete", func(tx Txn) error { return tx.Delete([]byte("a")) }, "a", "", ErrNotFound},
		{"delete absent", func(tx Txn) error { return tx.Delete([]byte("zz")) }, "zz", "", ErrNotFound},
		{"empty value", func(tx Txn) error { return tx.Set([]byte("e"), nil) }, "e", "", nil},
	}
	for i, tc := range tests {
		mustUpdate(t, db, tc.op)
		got, err := get(t, db, tc.key)
		if !errors.Is(err, tc.wantErr) || got != tc.want {
			t.Fatalf("Test %d (%s): got %q, %v; want %q, %v", i, tc.name, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestReservedKeys(t *testing.T) {
	db := openTest(t, t.TempDir())
	for i, key := range [][]byte{nil, {}, {0}, []byte("\x00kmsd/applied")} {
		err := db.Update(func(tx Txn) error { return tx.Set(key, []byte("x")) })
		if !errors.Is(err, ErrReservedKey) {
			t.Fatalf("Test %d: Set(%q) = %v, want ErrReservedKey", i, key, err)
		}
		err = db.Update(func(tx Txn) error { return tx.Delete(key) })
		if !errors.Is(err, ErrReservedKey) {
			t.Fatalf("Test %d: Delete(%q) = %v, want ErrReservedKey", i, key, err)
		}
	}
	mustUpdate(t, db, func(tx Txn) error { return tx.SetApplied(7, 2) })
	if _, err := get(t, db, "\x00kmsd/applied"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("reserved key readable through Get: %v", err)
	}
	// Iteration over everything must not show the applied record.
	n := 0
	_ = db.View(func(tx Txn) error {
		return tx.Iterate(nil, nil, func(k, v []byte) (bool, error) { n++; return true, nil })
	})
	if n != 0 {
		t.Fatalf("iterate saw %d reserved keys", n)
	}
}

func TestIterate(t *testing.T) {
	db := openTest(t, t.TempDir())
	mustUpdate(t, db, func(tx Txn) error {
		for _, k := range []string{"k/a", "k/b", "k/c", "k/d", "s/x", "j", "l"} {
			if err := tx.Set([]byte(k), []byte("v"+k)); err != nil {
				return err
			}
		}
		return nil
	})
	tests := []struct {
		prefix, start string
		limit         int
		want          []string
	}{
		{"k/", "", 0, []string{"k/a", "k/b", "k/c", "k/d"}},
		{"k/", "k/b", 0, []string{"k/b", "k/c", "k/d"}},
		{"k/", "k/bb", 0, []string{"k/c", "k/d"}},
		{"k/", "a", 0, []string{"k/a", "k/b", "k/c", "k/d"}}, // start before prefix
		{"k/", "z", 0, nil}, // start after prefix
		{"k/", "", 2, []string{"k/a", "k/b"}},
		{"s/", "", 0, []string{"s/x"}},
		{"", "", 0, []string{"j", "k/a", "k/b", "k/c", "k/d", "l", "s/x"}},
		{"q/", "", 0, nil},
	}
	for i, tc := range tests {
		var got []string
		err := db.View(func(tx Txn) error {
			return tx.Iterate([]byte(tc.prefix), []byte(tc.start), func(k, v []byte) (bool, error) {
				if string(v) != "v"+string(k) {
					return false, fmt.Errorf("value %q for %q", v, k)
				}
				got = append(got, string(k))
				return tc.limit == 0 || len(got) < tc.limit, nil
			})
		})
		if err != nil || fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Fatalf("Test %d: got %v, %v; want %v", i, got, err, tc.want)
		}
	}
	// An error from fn aborts and is returned unchanged.
	stop := errors.New("stop")
	err := db.View(func(tx Txn) error {
		return tx.Iterate(nil, nil, func(k, v []byte) (bool, error) { return true, stop })
	})
	if !errors.Is(err, stop) {
		t.Fatalf("Iterate error = %v", err)
	}
}

// TestAppliedSameTxn: the applied index is written by the same badger
// transaction as the data, so a failed (or crashed) transaction leaves
// both untouched, and a committed one makes both durable together.
func TestAppliedSameTxn(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if i, tm, err := db.Applied(); err != nil || i != 0 || tm != 0 {
		t.Fatalf("fresh Applied = %d, %d, %v", i, tm, err)
	}
	mustUpdate(t, db, func(tx Txn) error {
		if err := tx.Set([]byte("k/a"), []byte("1")); err != nil {
			return err
		}
		return tx.SetApplied(5, 1)
	})
	boom := errors.New("boom")
	err = db.Update(func(tx Txn) error {
		if err := tx.Set([]byte("k/b"), []byte("2")); err != nil {
			return err
		}
		if err := tx.SetApplied(6, 1); err != nil {
			return err
		}
		return boom // aborted: neither the data nor the index may persist
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = openTest(t, dir)
	if i, tm, err := db.Applied(); err != nil || i != 5 || tm != 1 {
		t.Fatalf("Applied after reopen = %d, %d, %v; want 5, 1", i, tm, err)
	}
	if v, err := get(t, db, "k/a"); err != nil || v != "1" {
		t.Fatalf("k/a = %q, %v", v, err)
	}
	if _, err := get(t, db, "k/b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("k/b from the aborted txn is visible: %v", err)
	}
}

func TestSnapshotIsolation(t *testing.T) {
	db := openTest(t, t.TempDir())
	mustUpdate(t, db, func(tx Txn) error {
		for i := range 100 {
			if err := tx.Set(fmt.Appendf(nil, "k/%03d", i), []byte("old")); err != nil {
				return err
			}
		}
		return tx.SetApplied(10, 1)
	})
	v := db.Snapshot()
	defer v.Release()

	// Writes continue concurrently while the view is iterated.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 100 {
			err := db.Update(func(tx Txn) error {
				if err := tx.Set(fmt.Appendf(nil, "k/%03d", i), []byte("new")); err != nil {
					return err
				}
				if err := tx.Set(fmt.Appendf(nil, "n/%03d", i), []byte("new")); err != nil {
					return err
				}
				return tx.SetApplied(uint64(11+i), 1)
			})
			if err != nil {
				t.Error(err)
				return
			}
		}
	}()
	n := 0
	err := v.Iterate(func(k, val []byte) (bool, error) {
		if string(val) != "old" {
			return false, fmt.Errorf("view saw %q=%q", k, val)
		}
		n++
		return true, nil
	})
	wg.Wait()
	if err != nil || n != 100 {
		t.Fatalf("Iterate: n=%d err=%v", n, err)
	}
	if c, err := v.Count(); err != nil || c != 100 {
		t.Fatalf("Count = %d, %v", c, err)
	}
	if i, tm, err := v.Applied(); err != nil || i != 10 || tm != 1 {
		t.Fatalf("view Applied = %d, %d, %v", i, tm, err)
	}
	if i, _, _ := db.Applied(); i != 110 {
		t.Fatalf("db Applied = %d, want 110", i)
	}
	v.Release()
	v.Release() // idempotent
	if err := v.Iterate(func(k, val []byte) (bool, error) { return true, nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("Iterate after Release = %v", err)
	}
}

func sliceNext(recs [][2]string, failAt int) func() ([]byte, []byte, bool, error) {
	i := 0
	return func() ([]byte, []byte, bool, error) {
		if i == failAt {
			return nil, nil, false, errors.New("source broke")
		}
		if i >= len(recs) {
			return nil, nil, false, nil
		}
		r := recs[i]
		i++
		return []byte(r[0]), []byte(r[1]), true, nil
	}
}

func dump(t *testing.T, db *DB) string {
	t.Helper()
	var b bytes.Buffer
	err := db.View(func(tx Txn) error {
		return tx.Iterate(nil, nil, func(k, v []byte) (bool, error) {
			fmt.Fprintf(&b, "%s=%s;", k, v)
			return true, nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestRestoreReplacesEverything(t *testing.T) {
	for _, inMem := range []bool{false, true} {
		t.Run(fmt.Sprintf("inmem=%v", inMem), func(t *testing.T) {
			dir := t.TempDir()
			db, err := Open(Options{Dir: dir, InMemory: inMem})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			mustUpdate(t, db, func(tx Txn) error {
				for _, k := range []string{"k/old1", "k/old2", "s/old"} {
					if err := tx.Set([]byte(k), []byte("x")); err != nil {
						return err
					}
				}
				return tx.SetApplied(50, 3)
			})
			old := db.Snapshot()
			var recs [][2]string
			for i := range 3000 { // several write batches
				recs = append(recs, [2]string{fmt.Sprintf("k/%05d", i), "v"})
			}
			if err := db.Restore(sliceNext(recs, -1), 40, 2); err != nil {
				t.Fatalf("Restore: %v", err)
			}
			if err := old.Iterate(func(k, v []byte) (bool, error) { return true, nil }); !errors.Is(err, ErrClosed) && !errors.Is(err, ErrViewInvalid) {
				t.Fatalf("old view still usable after restore: %v", err)
			}
			old.Release()
			if _, err := get(t, db, "k/old1"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("old key survived restore: %v", err)
			}
			var n int
			_ = db.View(func(tx Txn) error {
				return tx.Iterate(nil, nil, func(k, v []byte) (bool, error) { n++; return true, nil })
			})
			if n != len(recs) {
				t.Fatalf("restored %d records, want %d", n, len(recs))
			}
			if i, tm, err := db.Applied(); err != nil || i != 40 || tm != 2 {
				t.Fatalf("Applied = %d, %d, %v", i, tm, err)
			}
			if _, err := os.Stat(filepath.Join(dir, restoreMarker)); !os.IsNotExist(err) {
				t.Fatalf("marker left behind: %v", err)
			}
		})
	}
}

func TestRestoreMarker(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, db, func(tx Txn) error {
		if err := tx.Set([]byte("k/a"), []byte("1")); err != nil {
			return err
		}
		return tx.SetApplied(9, 1)
	})
	// The source fails half way: the old state is gone, so the error must
	// say the state is incomplete, and the marker must survive a restart.
	recs := [][2]string{{"k/x", "1"}, {"k/y", "2"}}
	err = db.Restore(sliceNext(recs, 1), 20, 2)
	if !errors.Is(err, ErrRestoreIncomplete) {
		t.Fatalf("Restore = %v, want ErrRestoreIncomplete", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Options{Dir: dir}); !errors.Is(err, ErrRestoreIncomplete) {
		t.Fatalf("Open after interrupted restore = %v, want ErrRestoreIncomplete", err)
	}
	// The operator (or cluster) opts in to discarding the partial state.
	db, err = Open(Options{Dir: dir, DropIncompleteRestore: true})
	if err != nil {
		t.Fatalf("Open with DropIncompleteRestore: %v", err)
	}
	defer db.Close()
	if i, _, err := db.Applied(); err != nil || i != 0 {
		t.Fatalf("Applied = %d, %v; want 0", i, err)
	}
	if s := dump(t, db); s != "" {
		t.Fatalf("state not empty: %s", s)
	}
	// And a normal reopen works again.
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := openTest(t, dir).Applied(); err != nil {
		t.Fatal(err)
	}
}

func TestRestoreRejectsReserved(t *testing.T) {
	db := openTest(t, t.TempDir())
	err := db.Restore(sliceNext([][2]string{{"\x00bad", "x"}}, -1), 1, 1)
	if !errors.Is(err, ErrReservedKey) || !errors.Is(err, ErrRestoreIncomplete) {
		t.Fatalf("Restore = %v", err)
	}
}

func TestClosed(t *testing.T) {
	db, err := Open(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	v := db.Snapshot() // left open on purpose: Close must discard it
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	checks := []error{
		db.Close(),
		db.View(func(Txn) error { return nil }),
		db.Update(func(Txn) error { return nil }),
		db.Restore(sliceNext(nil, -1), 1, 1),
		v.Iterate(func(k, val []byte) (bool, error) { return true, nil }),
	}
	if _, _, err := db.Applied(); true {
		checks = append(checks, err)
	}
	if _, _, err := db.Snapshot().Applied(); true {
		checks = append(checks, err)
	}
	for i, err := range checks {
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("check %d: %v, want ErrClosed", i, err)
		}
	}
	v.Release()
}

func TestGCLoopStops(t *testing.T) {
	db, err := Open(Options{Dir: t.TempDir(), GCInterval: 1})
	if err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, db, func(tx Txn) error { return tx.Set([]byte("a"), bytes.Repeat([]byte("x"), 4096)) })
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestNoSyncWritesReopen: without per-commit fsync, a clean close still
// persists every commit together with its applied index.
func TestNoSyncWritesReopen(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(Options{Dir: dir, NoSyncWrites: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		mustUpdate(t, db, func(tx Txn) error {
			if err := tx.Set([]byte(fmt.Sprint("k", i)), []byte(fmt.Sprint(i))); err != nil {
				return err
			}
			return tx.SetApplied(uint64(i+1), 1)
		})
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = openTest(t, dir)
	if idx, term, err := db.Applied(); err != nil || idx != 100 || term != 1 {
		t.Fatalf("applied after reopen = %d/%d, %v; want 100/1", idx, term, err)
	}
	if v, err := get(t, db, "k99"); err != nil || v != "99" {
		t.Fatalf("k99 = %q, %v", v, err)
	}
}
