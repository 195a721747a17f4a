package logfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// recorder collects OnChange calls.
type recorder struct {
	mu     sync.Mutex
	states []State
}

func (r *recorder) add(st State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.states = append(r.states, st)
}

// healthSeq is the sequence of Healthy values reported so far.
func (r *recorder) healthSeq() []bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []bool
	for _, st := range r.states {
		out = append(out, st.Healthy)
	}
	return out
}

func newSink(t *testing.T, opts Options) (*Sink, *fakeClock, *recorder) {
	t.Helper()
	clk, rec := newFakeClock(), new(recorder)
	opts.Clock, opts.OnChange = clk, rec.add
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Close(ctx)
	})
	return s, clk, rec
}

func line(format string, args ...any) []byte { return []byte(fmt.Sprintf(format, args...) + "\n") }

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func closeSink(t *testing.T, s *Sink) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func TestNewValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"neither", Options{}},
		{"both", Options{Path: "/tmp/x", Writer: io.Discard}},
		{"negative queue", Options{Writer: io.Discard, QueueSize: -1}},
		{"negative stall", Options{Writer: io.Discard, StallAfter: -time.Second}},
	} {
		if _, err := New(tc.opts); err == nil {
			t.Errorf("%s: New accepted %+v", tc.name, tc.opts)
		}
	}
}

// Lines reach the file in order, the directory and the file get private
// modes, and Close drains everything queued.
func TestWriteAndCloseDrains(t *testing.T) {
	path := filepath.Join(t.TempDir(), "logs", "sub", "audit.log")
	s, _, _ := newSink(t, Options{Path: path})
	const n = 5000
	var want strings.Builder
	for i := range n {
		l := line(`{"i":%d}`, i)
		want.Write(l)
		if !s.Enqueue(l, 0) {
			t.Fatalf("line %d not queued", i)
		}
	}
	closeSink(t, s)
	if got := readFile(t, path); got != want.String() {
		t.Fatalf("file has %d bytes, want %d (first difference matters)", len(got), want.Len())
	}
	if st := s.Stats(); st.Written != n || st.Lost != 0 || st.WriteErrors != 0 || st.Queued != 0 {
		t.Errorf("stats %+v, want %d written, nothing lost", st, n)
	}
	for p, want := range map[string]os.FileMode{path: 0o600, filepath.Dir(path): 0o700, filepath.Dir(filepath.Dir(path)): 0o700} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
	// Closed: nothing is accepted, and the refusal is counted.
	if s.Enqueue(line("late"), time.Second) {
		t.Error("Enqueue after Close accepted a line")
	}
	if st := s.Stats(); st.Lost != 1 {
		t.Errorf("lost %d after a late line, want 1", st.Lost)
	}
}

// gateWriter blocks every Write until the test releases it.
type gateWriter struct {
	entered chan struct{} // one value per Write call
	release chan struct{}
	mu      sync.Mutex
	buf     bytes.Buffer
}

func newGateWriter() *gateWriter {
	return &gateWriter{entered: make(chan struct{}, 100), release: make(chan struct{})}
}

func (g *gateWriter) Write(p []byte) (int, error) {
	g.entered <- struct{}{}
	<-g.release
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.buf.Write(p)
}

func (g *gateWriter) String() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.buf.String()
}

func waitEntered(t *testing.T, g *gateWriter) {
	t.Helper()
	select {
	case <-g.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the writer never called Write")
	}
}

// A full queue refuses lines at once (or after the given wait), counts
// them lost, and never blocks the io.Writer adapter.
func TestQueueFull(t *testing.T) {
	g := newGateWriter()
	s, clk, _ := newSink(t, Options{Writer: g, QueueSize: 4})
	s.Enqueue(line("0"), 0)
	waitEntered(t, g) // the writer holds line 0 in a blocked Write
	for i := 1; i <= 4; i++ {
		if !s.Enqueue(line("%d", i), 0) {
			t.Fatalf("line %d refused with room in the queue", i)
		}
	}
	if s.Enqueue(line("5"), 0) {
		t.Fatal("a full queue accepted a line")
	}
	start := time.Now()
	for range 100 {
		if n, err := s.Write([]byte("adapter\n")); n != 8 || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("100 Writes into a full sink took %v", d)
	}
	if st := s.Stats(); st.Lost != 101 || st.Queued != 4 {
		t.Errorf("stats %+v, want 101 lost, 4 queued", st)
	}

	// A wait ends when the clock says so.
	res := make(chan bool, 1)
	go func() { res <- s.Enqueue(line("waited-out"), time.Second) }()
	eventually(t, "the waiting Enqueue gives up", clk, 250*time.Millisecond, func() bool {
		select {
		case ok := <-res:
			if ok {
				t.Error("a line was queued into a full queue")
			}
			return true
		default:
			return false
		}
	})
	// ... or when room appears.
	go func() { res <- s.Enqueue(line("waited-in"), time.Hour) }()
	time.Sleep(20 * time.Millisecond)
	close(g.release)
	select {
	case ok := <-res:
		if !ok {
			t.Error("a waiting line was refused although the writer drained the queue")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting Enqueue did not return")
	}
	closeSink(t, s)
	want := "0\n1\n2\n3\n4\nwaited-in\n"
	if got := g.String(); got != want {
		t.Errorf("written %q, want %q", got, want)
	}
	if st := s.Stats(); st.Written != 6 || st.Lost != 102 {
		t.Errorf("stats %+v, want 6 written, 102 lost", st)
	}
}

// A write that does not return makes the sink unhealthy after
// StallAfter, noticed by the watchdog without anyone asking, and healthy
// again once it returns.
func TestStalledWrite(t *testing.T) {
	g := newGateWriter()
	s, clk, rec := newSink(t, Options{Writer: g, StallAfter: 2 * time.Second})
	s.Enqueue(line("x"), 0)
	waitEntered(t, g)
	clk.Advance(1900 * time.Millisecond)
	if !s.Healthy() {
		t.Fatal("unhealthy before StallAfter")
	}
	eventually(t, "the watchdog reports the stall", clk, 100*time.Millisecond, func() bool {
		return len(rec.healthSeq()) > 0
	})
	st := s.State()
	if st.Healthy || !errors.Is(st.Err, ErrStalled) || !strings.Contains(st.Err.Error(), "write writer running for") {
		t.Errorf("state %+v, want a stalled write", st)
	}
	if n := s.Stats().WriteErrors; n != 1 {
		t.Errorf("%d write errors for one stall, want 1", n)
	}
	close(g.release)
	eventually(t, "healthy after the write returned", nil, 0, s.Healthy)
	eventually(t, "the recovery is reported", nil, 0, func() bool { return len(rec.healthSeq()) == 2 })
	if got := rec.healthSeq(); got[0] || !got[1] {
		t.Errorf("OnChange saw %v, want [false true]", got)
	}
}

// A FIFO without a reader blocks open(2): the sink shows the stall, and
// recovers once a reader appears.
func TestStalledOpenFIFO(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	var reader *os.File
	t.Cleanup(func() {
		if reader == nil { // release a writer stuck in open
			if r, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
				defer r.Close()
			}
		}
	})
	s, clk, _ := newSink(t, Options{Path: path, StallAfter: 2 * time.Second})
	eventually(t, "the stalled open is visible", clk, 500*time.Millisecond, func() bool { return !s.Healthy() })
	st := s.State()
	if !errors.Is(st.Err, ErrStalled) || !strings.Contains(st.Err.Error(), "open "+path) {
		t.Errorf("state %+v, want a stalled open of %s", st, path)
	}
	if !s.Enqueue(line("queued while stalled"), 0) {
		t.Fatal("a stalled sink refused a line with room in the queue")
	}
	r, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	reader = r
	defer r.Close()
	eventually(t, "healthy once a reader opened the FIFO", nil, 0, s.Healthy)
	_ = r.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, 64)
	n, err := io.ReadAtLeast(r, got, len("queued while stalled\n"))
	if err != nil || string(got[:n]) != "queued while stalled\n" {
		t.Errorf("FIFO read %q, %v", got[:n], err)
	}
}

// Real faults on real files, each of which also stops root: the sink
// turns unhealthy naming the error, keeps the failed line, counts what
// does not fit, and recovers by itself once the fault is removed.
func TestFaultsAndRecovery(t *testing.T) {
	const queue = 8
	for _, tc := range []struct {
		name    string
		path    func(dir string) string
		setup   func(t *testing.T, dir string) // before New
		inject  func(t *testing.T, dir string) // after the first line was written
		wantErr string
		fix     func(t *testing.T, dir string)
		result  func(dir string) string // the file that has the lines after the fix
	}{
		{
			name: "parent directory replaced by a regular file",
			path: func(dir string) string { return filepath.Join(dir, "logs", "audit.log") },
			inject: func(t *testing.T, dir string) {
				must(t, os.RemoveAll(filepath.Join(dir, "logs")))
				must(t, os.WriteFile(filepath.Join(dir, "logs"), nil, 0o600))
			},
			wantErr: "not a directory",
			fix:     func(t *testing.T, dir string) { must(t, os.Remove(filepath.Join(dir, "logs"))) },
			result:  func(dir string) string { return filepath.Join(dir, "logs", "audit.log") },
		},
		{
			name: "file replaced by a directory",
			path: func(dir string) string { return filepath.Join(dir, "audit.log") },
			inject: func(t *testing.T, dir string) {
				must(t, os.Remove(filepath.Join(dir, "audit.log")))
				must(t, os.Mkdir(filepath.Join(dir, "audit.log"), 0o700))
			},
			wantErr: "is a directory",
			fix:     func(t *testing.T, dir string) { must(t, os.Remove(filepath.Join(dir, "audit.log"))) },
			result:  func(dir string) string { return filepath.Join(dir, "audit.log") },
		},
		{
			name: "disk full (a symlink to /dev/full)",
			path: func(dir string) string { return filepath.Join(dir, "audit.log") },
			setup: func(t *testing.T, dir string) {
				must(t, os.Symlink(filepath.Join(dir, "real.log"), filepath.Join(dir, "audit.log")))
			},
			inject: func(t *testing.T, dir string) {
				if _, err := os.Stat("/dev/full"); err != nil {
					t.Skipf("no /dev/full: %v", err)
				}
				must(t, os.Remove(filepath.Join(dir, "audit.log")))
				must(t, os.Symlink("/dev/full", filepath.Join(dir, "audit.log")))
			},
			wantErr: "no space left on device",
			fix: func(t *testing.T, dir string) {
				must(t, os.Remove(filepath.Join(dir, "audit.log")))
				must(t, os.Symlink(filepath.Join(dir, "real.log"), filepath.Join(dir, "audit.log")))
			},
			result: func(dir string) string { return filepath.Join(dir, "real.log") },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			s, clk, rec := newSink(t, Options{Path: tc.path(dir), QueueSize: queue, CheckEvery: time.Second})
			s.Enqueue(line("first"), 0)
			eventually(t, "the first line is written", nil, 0, func() bool { return s.Stats().Written == 1 })

			tc.inject(t, dir)
			clk.Advance(time.Second) // the path check is due
			s.Enqueue(line("failed"), 0)
			eventually(t, "the fault is visible", nil, 0, func() bool { return !s.Healthy() })
			st := s.State()
			if st.Err == nil || !strings.Contains(st.Err.Error(), tc.wantErr) {
				t.Errorf("state %+v, want an error containing %q", st, tc.wantErr)
			}
			if st.Since.IsZero() {
				t.Error("an unhealthy state without Since")
			}
			accepted := 0
			for i := range queue + 3 {
				if s.Enqueue(line("during-%d", i), 0) {
					accepted++
				}
			}
			if accepted != queue {
				t.Errorf("%d lines queued while failing, want the queue size %d", accepted, queue)
			}

			tc.fix(t, dir)
			eventually(t, "the sink recovers by itself", clk, 500*time.Millisecond, s.Healthy)
			eventually(t, "the kept lines are written", nil, 0, func() bool { return s.Stats().Written == 2+queue })
			closeSink(t, s)
			stats := s.Stats()
			if stats.Lost != 3 || stats.WriteErrors < 1 {
				t.Errorf("stats %+v, want 3 lost and at least one write error", stats)
			}
			got := readFile(t, tc.result(dir))
			for _, want := range []string{"failed\n", "during-0\n", fmt.Sprintf("during-%d\n", queue-1)} {
				if !strings.Contains(got, want) {
					t.Errorf("%s lacks %q after recovery:\n%s", tc.result(dir), want, got)
				}
			}
			if strings.Contains(got, fmt.Sprintf("during-%d\n", queue)) {
				t.Errorf("a line counted lost was written:\n%s", got)
			}
			if seq := rec.healthSeq(); len(seq) < 2 || seq[0] || !seq[len(seq)-1] {
				t.Errorf("OnChange saw %v, want unhealthy first and healthy last", seq)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// logrotate: rename + Reopen moves the writer to a new file; a rename
// or delete without Reopen is noticed by the path check.
func TestReopenAfterRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	s, clk, _ := newSink(t, Options{Path: path, CheckEvery: time.Second})
	write := func(l string, n uint64) {
		t.Helper()
		s.Enqueue(line("%s", l), 0)
		eventually(t, l+" is written", nil, 0, func() bool { return s.Stats().Written == n })
	}
	write("one", 1)
	must(t, os.Rename(path, path+".1"))
	s.Reopen()
	eventually(t, "Reopen creates the file", nil, 0, func() bool { _, err := os.Stat(path); return err == nil })
	write("two", 2)

	must(t, os.Rename(path, path+".2")) // no SIGHUP
	clk.Advance(time.Second)
	write("three", 3)

	must(t, os.Remove(path))
	clk.Advance(time.Second)
	write("four", 4)
	closeSink(t, s)

	for file, want := range map[string]string{path + ".1": "one\n", path + ".2": "two\n", path: "four\n"} {
		if got := readFile(t, file); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
}

// failWriter fails its first n writes after writing part of the data.
type failWriter struct {
	mu    sync.Mutex
	fails int
	cut   int // bytes written by a failing write
	buf   bytes.Buffer
}

func (w *failWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fails > 0 {
		w.fails--
		n := min(w.cut, len(p))
		w.buf.Write(p[:n])
		return n, syscall.EIO
	}
	return w.buf.Write(p)
}

func (w *failWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// A write that breaks off inside a line is retried from that line, after
// a newline ending the fragment, so every later line still parses.
func TestPartialWriteRetried(t *testing.T) {
	// One line, so the batches do not depend on when the writer wakes up.
	w := &failWriter{fails: 2, cut: 7}
	s, clk, _ := newSink(t, Options{Writer: w})
	s.Enqueue(line("aaaaaaaaaa"), 0)
	eventually(t, "the line is written", clk, 250*time.Millisecond, func() bool { return s.Stats().Written == 1 })
	s.Enqueue(line("bbbb"), 0)
	eventually(t, "the next line is written", clk, 250*time.Millisecond, func() bool { return s.Stats().Written == 2 })
	closeSink(t, s)
	// 1st write: "aaaaaaa" (cut inside the line); 2nd: "\naaaaaa" (the
	// fragment ended, the line cut again); 3rd: "\naaaaaaaaaa\n"; then
	// "bbbb\n". Every complete line parses; fragments are lines of their own.
	if got, want := w.String(), "aaaaaaa\naaaaaa\naaaaaaaaaa\nbbbb\n"; got != want {
		t.Errorf("output %q, want %q", got, want)
	}
	if st := s.Stats(); st.WriteErrors != 2 || st.Lost != 0 {
		t.Errorf("stats %+v, want 2 write errors, nothing lost", st)
	}
}

// Close gives up at its deadline when the writer is stuck, counting what
// is still queued as lost.
func TestCloseDeadline(t *testing.T) {
	g := newGateWriter()
	s, _, _ := newSink(t, Options{Writer: g})
	s.Enqueue(line("stuck"), 0)
	waitEntered(t, g)
	for i := range 3 {
		s.Enqueue(line("queued-%d", i), 0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.Close(ctx)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close = %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v with a 50ms deadline", d)
	}
	if st := s.Stats(); st.Lost != 3 {
		t.Errorf("stats %+v, want the 3 queued lines lost", st)
	}
	close(g.release)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the writer did not exit after its write returned")
	}
	if st := s.Stats(); st.Written != 1 {
		t.Errorf("stats %+v, want the stuck line written once its write returned", st)
	}
}
