package logfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for the zero fields of Options.
const (
	DefaultQueueSize  = 8192
	DefaultStallAfter = 2 * time.Second
	DefaultMinBackoff = 250 * time.Millisecond
	DefaultMaxBackoff = 5 * time.Second
	DefaultCheckEvery = time.Second
)

// A batch is at most this many lines or bytes (one write call).
const (
	maxBatchLines = 1024

	// Write coalescing under load (writer.go, linger).
	lingerLines   = 64
	lingerWindow  = 2 * time.Millisecond
	lingerFor     = time.Millisecond
	maxBatchBytes = 256 << 10
)

// ErrStalled is wrapped by State.Err while an open, stat or write has
// been running for longer than Options.StallAfter.
var ErrStalled = errors.New("logfile: I/O stalled")

// Options configure a Sink. Exactly one of Path and Writer is set.
type Options struct {
	// Path is the file the lines are appended to. Its directory is
	// created (0700) if missing; the file is created 0600 (an existing
	// file keeps its mode).
	Path string
	// Writer receives the lines when Path is empty (stdout, tests). It is
	// never closed or reopened.
	Writer io.Writer

	// QueueSize bounds the lines waiting for the writer. 0: 8192.
	QueueSize int
	// StallAfter: an I/O call running longer than this makes the sink
	// unhealthy until it returns. 0: 2s.
	StallAfter time.Duration
	// MinBackoff and MaxBackoff bound the retry delay after a failure;
	// it doubles per failed attempt. 0: 250ms and 5s.
	MinBackoff, MaxBackoff time.Duration
	// CheckEvery is how often (at most, and only when there is something
	// to write) the writer checks that Path still names the open file,
	// reopening it if not. 0: 1s.
	CheckEvery time.Duration
	// Clock is the time source. Nil: the wall clock.
	Clock Clock
	// OnChange, if set, is called when the sink turns unhealthy or
	// healthy again. It runs on the writer's or a caller's goroutine, with
	// no lock held, and must not block; it may log into the sink itself.
	OnChange func(State)
}

// State is a sink's health.
type State struct {
	Healthy bool
	// Err says why the sink is unhealthy; nil when healthy.
	Err error
	// Since is when the current state began (zero: healthy since New).
	Since time.Time
}

// Stats are a sink's counters since New.
type Stats struct {
	Written     uint64 // lines written
	Lost        uint64 // lines not queued, or queued but not written by Close
	WriteErrors uint64 // failed or stalled opens, checks and writes
	Queued      int    // lines waiting now
}

// Sink is a bounded asynchronous line writer. Create it with New; all
// methods are safe for concurrent use.
type Sink struct {
	lastWrite time.Time // real time of the last write (writer goroutine only)

	path       string
	out        io.Writer // Options.Writer
	clock      Clock
	stallAfter time.Duration
	minBackoff time.Duration
	maxBackoff time.Duration
	checkEvery time.Duration
	onChange   func(State)

	q        chan []byte
	reopenCh chan struct{} // capacity 1
	closing  chan struct{}
	done     chan struct{} // the writer returned

	mu        sync.RWMutex // Enqueue holds it shared, Close exclusively
	closed    bool
	closeOnce sync.Once

	written, lost, writeErrors atomic.Uint64

	stMu sync.Mutex
	st   State   // from the writer's last attempt (stalls are added by State)
	op   *opInfo // the running I/O call, nil when idle
	// stallNotified: OnChange heard of a stall and not yet of a recovery.
	stallNotified bool

	// Writer goroutine only.
	f       *os.File
	fi      os.FileInfo
	checked time.Time
	partial bool // the last write ended inside a line
	buf     []byte
}

// opInfo describes one I/O call for stall detection.
type opInfo struct {
	what     string
	start    time.Time
	reported bool // counted as a write error and notified
}

// New validates opts and starts the sink's writer. It does no I/O itself:
// the writer opens the file at once, and a failure shows as an unhealthy
// state (and is retried), not as an error here.
func New(opts Options) (*Sink, error) {
	if (opts.Path == "") == (opts.Writer == nil) {
		return nil, errors.New("logfile: exactly one of Path and Writer must be set")
	}
	if opts.QueueSize < 0 || opts.StallAfter < 0 || opts.MinBackoff < 0 || opts.MaxBackoff < 0 || opts.CheckEvery < 0 {
		return nil, errors.New("logfile: negative option")
	}
	s := &Sink{
		path:       opts.Path,
		out:        opts.Writer,
		clock:      opts.Clock,
		stallAfter: orDefault(opts.StallAfter, DefaultStallAfter),
		minBackoff: orDefault(opts.MinBackoff, DefaultMinBackoff),
		maxBackoff: orDefault(opts.MaxBackoff, DefaultMaxBackoff),
		checkEvery: orDefault(opts.CheckEvery, DefaultCheckEvery),
		onChange:   opts.OnChange,
		q:          make(chan []byte, orDefault(opts.QueueSize, DefaultQueueSize)),
		reopenCh:   make(chan struct{}, 1),
		closing:    make(chan struct{}),
		done:       make(chan struct{}),
		st:         State{Healthy: true},
	}
	if s.clock == nil {
		s.clock = realClock{}
	}
	s.maxBackoff = max(s.maxBackoff, s.minBackoff)
	go s.run()
	go s.watch()
	return s, nil
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// name is how errors refer to the sink's target.
func (s *Sink) name() string {
	if s.path != "" {
		return s.path
	}
	return "writer"
}

// Enqueue queues line (which must end in '\n' and must not be modified
// afterwards). If the queue is full it waits at most wait (0: not at all)
// for room. It reports whether the line was queued; a line that was not
// is counted in Stats.Lost. Enqueue never waits on I/O.
func (s *Sink) Enqueue(line []byte, wait time.Duration) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		s.lost.Add(1)
		return false
	}
	select {
	case s.q <- line:
		return true
	default:
	}
	if wait > 0 {
		t := s.clock.NewTimer(wait)
		defer t.Stop()
		select {
		case s.q <- line:
			return true
		case <-t.C():
		}
	}
	s.lost.Add(1)
	return false
}

// Write queues a copy of p as one line without waiting and always
// reports success: a line that does not fit is counted lost. So a
// slog.Handler writing into a Sink never blocks and never fails.
func (s *Sink) Write(p []byte) (int, error) {
	s.Enqueue(bytes.Clone(p), 0)
	return len(p), nil
}

// Reopen makes the writer close and reopen the file (logrotate's
// postrotate SIGHUP). It does not wait; a no-op for a Writer sink.
func (s *Sink) Reopen() {
	select {
	case s.reopenCh <- struct{}{}:
	default: // one is pending already
	}
}

// Healthy reports whether the last I/O succeeded and none is stalled.
func (s *Sink) Healthy() bool { return s.State().Healthy }

// State reports the sink's health. An I/O call running for longer than
// StallAfter makes it unhealthy with an error wrapping ErrStalled, even if
// the writer has not noticed yet.
func (s *Sink) State() State {
	now := s.clock.Now()
	s.stMu.Lock()
	op := s.op
	if op == nil || now.Sub(op.start) < s.stallAfter {
		defer s.stMu.Unlock()
		return s.st
	}
	d := now.Sub(op.start)
	st := State{
		Err:   fmt.Errorf("%w: %s %s running for %s", ErrStalled, op.what, s.name(), d.Round(time.Millisecond)),
		Since: op.start.Add(s.stallAfter),
	}
	tell := false
	if !op.reported {
		op.reported = true
		s.writeErrors.Add(1)
		// A transition only if the writer's own state is healthy.
		tell = s.st.Healthy && !s.stallNotified
		s.stallNotified = s.stallNotified || tell
	}
	s.stMu.Unlock()
	if tell {
		s.notify(st)
	}
	return st
}

// Stats returns the counters.
func (s *Sink) Stats() Stats {
	return Stats{
		Written:     s.written.Load(),
		Lost:        s.lost.Load(),
		WriteErrors: s.writeErrors.Load(),
		Queued:      len(s.q),
	}
}

// Close stops accepting lines and waits until the queued ones are written
// or ctx ends. Lines still queued then are counted lost and Close returns
// an error; a writer stuck in a write is abandoned (it exits once the call
// returns). A failing sink gets one more attempt, not its backoff.
func (s *Sink) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.closing)
	})
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
	}
	n := 0
	for {
		select {
		case <-s.q:
			n++
			continue
		default:
		}
		break
	}
	s.lost.Add(uint64(n))
	return fmt.Errorf("logfile: close %s: %d queued lines lost, writer still busy: %w", s.name(), n, ctx.Err())
}

func (s *Sink) notify(st State) {
	if s.onChange != nil {
		s.onChange(st)
	}
}

// watch makes sure a stall is noticed (counted, OnChange called) even if
// nobody asks for the state.
func (s *Sink) watch() {
	for {
		t := s.clock.NewTimer(s.stallAfter / 2)
		select {
		case <-t.C():
			s.State()
		case <-s.closing:
			t.Stop()
			return
		}
	}
}
