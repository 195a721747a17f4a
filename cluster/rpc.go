package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kmsd/kmsd/fsm"
)

// The internal RPC server runs on the mux's kmsd-rpc/1 listener. Every
// connection on it passed the mTLS handshake with the cluster CA: the
// peer is a cluster member (or the CLI with a node certificate).

// startRPC starts the internal HTTP server. Called once raft runs.
func (n *Node) startRPC() {
	mux := http.NewServeMux()
	mux.Handle("POST "+pathApply, n.handler(MaxCommandSize, maxRPCTimeout, n.serveApply))
	mux.Handle("POST "+pathBarrier, n.handler(maxSmallBody, maxRPCTimeout, n.serveBarrier))
	mux.Handle("POST "+pathJoin, n.handler(maxSmallBody, maxRPCTimeout, n.serveJoin))
	mux.Handle("GET "+pathStatus, n.handler(maxSmallBody, maxRPCTimeout, n.serveStatus))
	mux.Handle("POST "+pathRemove, n.handler(maxSmallBody, maxRPCTimeout, n.serveRemove))
	mux.Handle("POST "+pathTransfer, n.handler(maxSmallBody, maxRPCTimeout, n.serveTransfer))
	mux.Handle("GET "+pathSnapshot, n.handler(maxSmallBody, maxLongRPCTimeout, n.serveSnapshot))
	mux.Handle("POST "+pathRestore, n.handler(maxSnapshotBody, maxLongRPCTimeout, n.serveRestore))
	for key, h := range n.cfg.RPC {
		pattern, _ := extPattern(key) // validated in Config.validate
		mux.Handle(pattern, n.handler(maxExtBody, maxRPCTimeout, func(ctx context.Context, w http.ResponseWriter, r *http.Request) {
			h.ServeHTTP(w, r.WithContext(ctx))
		}))
	}
	n.rpcSrv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return n.baseCtx },
	}
	n.rpcDone = make(chan struct{})
	go func() {
		defer close(n.rpcDone)
		if err := n.rpcSrv.Serve(n.mux.rpc); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("node channel: RPC server stopped", "error", err)
		}
	}()
}

// extPattern turns a Config.RPC key into a ServeMux pattern under
// ExtPrefix. Accepted: "rek", "/cluster/v1/ext/rek", optionally with a
// method: "POST rek", "POST /cluster/v1/ext/rek".
func extPattern(key string) (string, error) {
	method, path, ok := strings.Cut(key, " ")
	if !ok {
		method, path = "", key
	}
	path = strings.TrimSpace(path)
	if !strings.HasPrefix(path, "/") {
		path = ExtPrefix + path
	}
	if !strings.HasPrefix(path, ExtPrefix) || len(path) == len(ExtPrefix) || strings.Contains(path, "{") {
		return "", fmt.Errorf("cluster: config: RPC endpoint %q must be a path under %s", key, ExtPrefix)
	}
	if method != "" {
		return method + " " + path, nil
	}
	return path, nil
}

// inflight counts running handlers so Shutdown can wait for them (they
// use the FSM, whose storage the caller closes after Shutdown).
type inflight struct {
	mu     sync.Mutex
	n      int
	closed bool
	idle   chan struct{}
}

func (f *inflight) enter() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.n++
	return true
}

func (f *inflight) leave() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n--
	if f.closed && f.n == 0 {
		close(f.idle)
	}
}

// close refuses new handlers and returns a channel closed once the
// running ones have returned.
func (f *inflight) close() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.closed {
		f.closed = true
		f.idle = make(chan struct{})
		if f.n == 0 {
			close(f.idle)
		}
	}
	return f.idle
}

type handlerFunc func(ctx context.Context, w http.ResponseWriter, r *http.Request)

// handler wraps an RPC handler: in-flight accounting, a body limit, a
// context bounded by the caller's Kmsd-Timeout (at most maxTimeout) and
// matching connection deadlines.
func (n *Node) handler(limit int64, maxTimeout time.Duration, fn handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !n.handlers.enter() {
			writeErr(w, ErrShutdown)
			return
		}
		defer n.handlers.leave()
		d := maxTimeout
		if maxTimeout <= maxRPCTimeout {
			d = defaultRPCTimeout
		}
		if v := r.Header.Get(hdrTimeout); v != "" {
			ms, err := strconv.ParseInt(v, 10, 64)
			if err != nil || ms <= 0 {
				writeErr(w, fmt.Errorf("%w: bad %s header %q", ErrInvalidArgument, hdrTimeout, v))
				return
			}
			d = min(time.Duration(ms)*time.Millisecond, maxTimeout)
		}
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		rc := http.NewResponseController(w)
		_ = rc.SetReadDeadline(time.Now().Add(d + 5*time.Second))
		_ = rc.SetWriteDeadline(time.Now().Add(d + 5*time.Second))
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		fn(ctx, w, r)
	})
}

// readBody reads a whole (limited) request body.
func readBody(r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return nil, errTooLarge
		}
		return nil, fmt.Errorf("%w: reading the body: %w", ErrInvalidArgument, err)
	}
	return b, nil
}

func decodeJSON(r *http.Request, v any) error {
	b, err := readBody(r)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	return nil
}

func forwarded(r *http.Request) bool { return r.Header.Get(hdrForwarded) != "" }

// serveApply: the leader side of write forwarding. The body is an
// encoded fsm command; it is proposed locally (never forwarded again).
func (n *Node) serveApply(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	b, err := readBody(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	if _, err := fsm.Decode(b); err != nil {
		writeErr(w, fmt.Errorf("cluster: apply: %w: %w", fsm.ErrInvalid, err))
		return
	}
	res, err := n.applyLocal(ctx, b)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, wireResult{Code: res.Code, Message: res.Message, Index: res.Index})
}

// serveBarrier: the leader's read index (see readIndex).
func (n *Node) serveBarrier(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	index, err := n.readIndex(ctx)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, barrierResponse{Index: index})
}

func (n *Node) serveJoin(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	var req joinRequest
	if err := decodeJSON(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	var err error
	switch {
	case forwarded(r):
		err = n.addVoterLocal(ctx, req.ID, req.Addr)
	case req.ID == n.cfg.NodeID:
		// A joiner whose peer list names itself under another address.
		err = fmt.Errorf("%w: node %q cannot join through itself", ErrInvalidArgument, req.ID)
	default:
		err = n.AddVoter(ctx, req.ID, req.Addr)
	}
	if err != nil {
		writeErr(w, err)
		return
	}
	n.log.Info("node joined", "id", req.ID, "addr", req.Addr, "remote", r.RemoteAddr)
	w.WriteHeader(http.StatusNoContent)
}

// serveStatus: this node's Status with its health report; with
// ?health=1 its ClusterStatus (every member's status and health).
func (n *Node) serveStatus(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("health") != "" {
		writeJSON(w, http.StatusOK, n.ClusterStatus(ctx))
		return
	}
	st := n.Status()
	st.Report = n.report(ctx)
	writeJSON(w, http.StatusOK, st)
}

func (n *Node) serveRemove(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	n.serveIDOp(ctx, w, r, n.removeLocal, n.RemoveServer)
}

func (n *Node) serveTransfer(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	n.serveIDOp(ctx, w, r, n.transferLocal, n.TransferLeadership)
}

// serveIDOp runs a leader-only operation on a node id: local when the
// request was already forwarded once (never forward again), otherwise
// through the public method, which forwards to the leader.
func (n *Node) serveIDOp(ctx context.Context, w http.ResponseWriter, r *http.Request, local, onLeader func(context.Context, string) error) {
	var req idRequest
	if err := decodeJSON(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	op := onLeader
	if forwarded(r) {
		op = local
	}
	if err := op(ctx, req.ID); err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// countingWriter remembers whether anything was written (after that, an
// error can only be reported by cutting the stream).
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	k, err := c.w.Write(p)
	c.n += int64(k)
	return k, err
}

func (n *Node) serveSnapshot(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/octet-stream")
	cw := &countingWriter{w: w}
	if _, err := n.WriteSnapshot(ctx, cw); err != nil {
		if cw.n == 0 {
			writeErr(w, err)
			return
		}
		n.log.Warn("snapshot download failed mid-stream", "remote", r.RemoteAddr, "error", err)
		panic(http.ErrAbortHandler) // the client sees a truncated stream
	}
}

func (n *Node) serveRestore(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	if err := n.restore(ctx, r.Body, forwarded(r)); err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			err = errTooLarge
		}
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
