package logfile

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// run is the writer goroutine: it owns the file and every I/O call.
// Healthy, it waits for lines (or a reopen, or Close) and writes them;
// failing, it retries after a backoff that doubles from MinBackoff to
// MaxBackoff, keeping the failed batch (lines behind it wait in the
// queue, and new ones are lost once the queue is full).
func (s *Sink) run() {
	defer close(s.done)
	defer s.closeFile()
	var b [][]byte
	failing := !s.attempt(&b) // open eagerly: a bad path shows at once
	backoff := s.minBackoff
	for {
		if failing {
			t := s.clock.NewTimer(backoff)
			select {
			case <-t.C():
			case <-s.reopenCh:
				s.closeFile()
			case <-s.closing:
				t.Stop()
				s.finish(&b)
				return
			}
			t.Stop()
			backoff = min(2*backoff, s.maxBackoff)
			s.fill(&b)
			if failing = !s.attempt(&b); !failing {
				backoff = s.minBackoff
			}
			continue
		}
		select {
		case line := <-s.q:
			b = append(b, line)
			s.fill(&b)
			s.linger(&b)
		case <-s.reopenCh:
			s.closeFile()
		case <-s.closing:
			s.finish(&b)
			return
		}
		failing = !s.attempt(&b)
	}
}

// linger coalesces writes under load: when the previous write was less
// than lingerWindow ago and the batch is small, it waits lingerFor (real
// time) and fills the batch again. At thousands of events per second this
// turns one write syscall per few lines into one per dozens; at a low
// rate it costs nothing (the last write is long past). A line reaches
// the file at most lingerFor later; requests never wait for it.
func (s *Sink) linger(b *[][]byte) {
	if len(*b) >= lingerLines || time.Since(s.lastWrite) >= lingerWindow {
		return
	}
	time.Sleep(lingerFor)
	s.fill(b)
}

// fill moves queued lines into the batch, without waiting, up to the
// batch limits.
func (s *Sink) fill(b *[][]byte) {
	size := 0
	for _, l := range *b {
		size += len(l)
	}
	for len(*b) < maxBatchLines && size < maxBatchBytes {
		select {
		case line := <-s.q:
			*b = append(*b, line)
			size += len(line)
		default:
			return
		}
	}
}

// finish writes what is queued once Close was called: no new lines can
// arrive. The first failure ends it; what is left is counted lost.
func (s *Sink) finish(b *[][]byte) {
	for {
		s.fill(b)
		if len(*b) == 0 {
			return
		}
		if !s.attempt(b) {
			n := len(*b)
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
			*b = nil
			return
		}
	}
}

// attempt makes sure the file is open and names Path, then writes the
// batch, removing what was written. It records the outcome in the state.
func (s *Sink) attempt(b *[][]byte) bool {
	if s.path != "" {
		if err := s.ensureFile(); err != nil {
			s.failed(err)
			return false
		}
	}
	if len(*b) == 0 {
		s.healthy()
		return true
	}
	w := s.out
	if s.f != nil {
		w = s.f
	}
	s.buf = s.buf[:0]
	prefix := 0
	if s.partial {
		// The last write broke off inside a line: end that fragment, so
		// the lines after it parse.
		s.buf = append(s.buf, '\n')
		prefix = 1
	}
	for _, l := range *b {
		s.buf = append(s.buf, l...)
	}
	op := s.begin("write")
	n, err := w.Write(s.buf)
	s.end(op)
	s.lastWrite = time.Now()
	s.account(b, n-prefix, n >= prefix)
	if err == nil && n < len(s.buf) {
		err = io.ErrShortWrite
	}
	if err != nil {
		s.failed(fmt.Errorf("logfile: write %s: %w", s.name(), err))
		s.closeFile()
		return false
	}
	s.healthy()
	return true
}

// account counts the lines the first n bytes covered as written and
// drops them from the batch. prefixDone is false if not even the
// fragment-ending newline was written.
func (s *Sink) account(b *[][]byte, n int, prefixDone bool) {
	if !prefixDone {
		return
	}
	s.partial = false
	done := 0
	for _, l := range *b {
		if n < len(l) {
			s.partial = n > 0
			break
		}
		n -= len(l)
		done++
	}
	s.written.Add(uint64(done))
	*b = append((*b)[:0], (*b)[done:]...)
}

// ensureFile opens Path if no file is open, and reopens it when the path
// no longer names the open file (deleted, renamed, replaced) — checked at
// most every CheckEvery.
func (s *Sink) ensureFile() error {
	now := s.clock.Now()
	if s.f != nil && now.Sub(s.checked) >= s.checkEvery {
		op := s.begin("stat")
		fi, err := os.Stat(s.path)
		s.end(op)
		s.checked = now
		if err != nil || !os.SameFile(fi, s.fi) {
			s.closeFile()
		}
	}
	if s.f != nil {
		return nil
	}
	op := s.begin("open")
	defer s.end(op)
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return fmt.Errorf("logfile: %w", err)
	}
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("logfile: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("logfile: %w", err)
	}
	s.f, s.fi, s.checked = f, fi, now
	return nil
}

func (s *Sink) closeFile() {
	if s.f != nil {
		_ = s.f.Close()
		s.f, s.fi = nil, nil
	}
}

// begin and end bracket one I/O call for stall detection.
func (s *Sink) begin(what string) *opInfo {
	op := &opInfo{what: what, start: s.clock.Now()}
	s.stMu.Lock()
	s.op = op
	s.stMu.Unlock()
	return op
}

func (s *Sink) end(op *opInfo) {
	s.stMu.Lock()
	if s.op == op {
		s.op = nil
	}
	s.stMu.Unlock()
}

// failed records a failed attempt; OnChange hears of the first failure
// (unless it heard of a stall already).
func (s *Sink) failed(err error) {
	s.writeErrors.Add(1)
	s.stMu.Lock()
	was := s.st.Healthy
	s.st.Err = err
	if was {
		s.st.Healthy, s.st.Since = false, s.clock.Now()
	}
	tell := was && !s.stallNotified
	s.stallNotified = false
	st := s.st
	s.stMu.Unlock()
	if tell {
		s.notify(st)
	}
}

// healthy records a successful attempt; OnChange hears of the recovery
// (from a failure, or from a stall it heard of).
func (s *Sink) healthy() {
	s.stMu.Lock()
	tell := !s.st.Healthy || s.stallNotified
	if !s.st.Healthy {
		s.st = State{Healthy: true, Since: s.clock.Now()}
	}
	s.stallNotified = false
	st := s.st
	s.stMu.Unlock()
	if tell {
		s.notify(st)
	}
}
