package api

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// subscriberBuffer is how many events a slow subscriber may lag behind
// before further events to it are dropped (and counted).
const subscriberBuffer = 1024

// broadcaster fans NDJSON lines out to stream subscribers. Publishing
// never blocks: a subscriber whose buffer is full misses the event. The
// zero value is ready to use.
type broadcaster struct {
	mu      sync.RWMutex
	subs    map[chan []byte]struct{}
	n       atomic.Int32
	dropped atomic.Uint64
}

func (b *broadcaster) subscribe() chan []byte {
	ch := make(chan []byte, subscriberBuffer)
	b.mu.Lock()
	if b.subs == nil {
		b.subs = make(map[chan []byte]struct{})
	}
	b.subs[ch] = struct{}{}
	b.n.Add(1)
	b.mu.Unlock()
	return ch
}

func (b *broadcaster) unsubscribe(ch chan []byte) {
	b.mu.Lock()
	delete(b.subs, ch)
	b.n.Add(-1)
	b.mu.Unlock()
}

// active reports whether anyone is subscribed.
func (b *broadcaster) active() bool { return b.n.Load() > 0 }

// publish hands line (which ends in '\n' and must not be modified later)
// to every subscriber.
func (b *broadcaster) publish(line []byte) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	for ch := range b.subs {
		select {
		case ch <- line:
		default:
			b.dropped.Add(1)
		}
	}
}

// stream serves a /v1/log/* subscription: 200 application/x-ndjson,
// headers flushed at once, then one line per event, each flushed. It ends
// when the client goes away or the server is closed (KES Q3).
func (s *Server) stream(req *request, b *broadcaster, delivered prometheus.Counter) error {
	ch := b.subscribe()
	defer b.unsubscribe(ch)

	req.w.Header().Set("Content-Type", "application/x-ndjson")
	req.w.WriteHeader(http.StatusOK)
	ctl := http.NewResponseController(req.w)
	if ctl.Flush() != nil {
		return nil
	}
	for {
		select {
		case <-req.ctx.Done():
			return nil
		case <-s.done:
			return nil
		case line := <-ch:
			if _, err := req.w.Write(line); err != nil {
				return nil
			}
			if ctl.Flush() != nil {
				return nil
			}
			delivered.Inc()
		}
	}
}

// ErrorStream feeds /v1/log/error: server log records at or above its
// level are sent to subscribers as {"message":"<slog text line>"}. Create
// it before the logger, wrap the logger's handler with Wrap, and pass it
// to New as Config.ErrorLog.
type ErrorStream struct {
	level slog.Leveler
	b     broadcaster
}

// NewErrorStream returns a stream of records at level and above. A nil
// level means slog.LevelError.
func NewErrorStream(level slog.Leveler) *ErrorStream {
	if level == nil {
		level = slog.LevelError
	}
	return &ErrorStream{level: level}
}

// Wrap returns a handler that passes every record to h and also
// broadcasts records at the stream's level and above, formatted as by
// slog.TextHandler, to the stream's subscribers. Records are only
// formatted while someone is subscribed.
func (e *ErrorStream) Wrap(h slog.Handler) slog.Handler {
	text := slog.NewTextHandler(errorWriter{e}, &slog.HandlerOptions{Level: e.level})
	return &errorHandler{inner: h, text: text, stream: e}
}

func (e *ErrorStream) wants(l slog.Level) bool {
	return l >= e.level.Level() && e.b.active()
}

// errorWriter receives exactly one formatted record per Write from
// slog.TextHandler.
type errorWriter struct{ e *ErrorStream }

func (w errorWriter) Write(p []byte) (int, error) {
	n := len(p)
	if n > 0 && p[n-1] == '\n' {
		p = p[:n-1]
	}
	line, err := json.Marshal(struct {
		Message string `json:"message"`
	}{string(p)})
	if err != nil {
		return 0, err
	}
	w.e.b.publish(append(line, '\n'))
	return n, nil
}

type errorHandler struct {
	inner  slog.Handler
	text   slog.Handler
	stream *ErrorStream
}

func (h *errorHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l) || h.stream.wants(l)
}

func (h *errorHandler) Handle(ctx context.Context, r slog.Record) error {
	var err error
	if h.inner.Enabled(ctx, r.Level) {
		err = h.inner.Handle(ctx, r)
	}
	if h.stream.wants(r.Level) {
		_ = h.text.Handle(ctx, r)
	}
	return err
}

func (h *errorHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &errorHandler{inner: h.inner.WithAttrs(as), text: h.text.WithAttrs(as), stream: h.stream}
}

func (h *errorHandler) WithGroup(name string) slog.Handler {
	return &errorHandler{inner: h.inner.WithGroup(name), text: h.text.WithGroup(name), stream: h.stream}
}
