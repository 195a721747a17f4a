package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/kmsd/kmsd/fsm"
)

// Internal RPC paths (node channel, ALPN kmsd-rpc/1). Versioned: a
// future incompatible change gets /cluster/v2/.
const (
	pathApply    = "/cluster/v1/apply"
	pathBarrier  = "/cluster/v1/barrier"
	pathJoin     = "/cluster/v1/join"
	pathStatus   = "/cluster/v1/status"
	pathRemove   = "/cluster/v1/remove"
	pathTransfer = "/cluster/v1/transfer"
	pathSnapshot = "/cluster/v1/snapshot"
	pathRestore  = "/cluster/v1/restore"
	// ExtPrefix is where Config.RPC handlers are mounted.
	ExtPrefix = "/cluster/v1/ext/"
)

// Request headers.
const (
	// hdrTimeout carries the caller's remaining budget in milliseconds, so
	// the serving node answers before the caller gives up.
	hdrTimeout = "Kmsd-Timeout"
	// hdrForwarded marks a request one node forwarded to the leader: the
	// receiver runs it locally or answers not_leader, never forwards it
	// again (no forwarding loops).
	hdrForwarded = "Kmsd-Forwarded"
)

// Body limits of the RPC server.
const (
	maxSmallBody    = 16 << 10
	maxExtBody      = 1 << 20
	maxSnapshotBody = 8 << 30
	maxStatusBody   = 4 << 20 // client side: a status response
	maxErrorBody    = 64 << 10
)

// Server-side bounds of a request's own timeout.
const (
	defaultRPCTimeout = defaultTimeout
	maxRPCTimeout     = time.Minute
	maxLongRPCTimeout = time.Hour // snapshot save/restore
)

// errTooLarge marks a request body over its limit.
var errTooLarge = fmt.Errorf("%w: request body too large", ErrInvalidArgument)

// wireCodes maps errors to their codes on the wire and back. Order
// matters: the first sentinel an error matches wins (an unknown outcome
// caused by shutdown is "unknown_outcome", not "shutdown").
var wireCodes = []struct {
	code   string
	status int
	errs   []error
}{
	{"unknown_outcome", http.StatusInternalServerError, []error{ErrUnknownOutcome}},
	{"foreign_snapshot", http.StatusConflict, []error{ErrForeignSnapshot}},
	{"snapshot_corrupt", http.StatusBadRequest, []error{fsm.ErrSnapshotCorrupt}},
	{"snapshot_version", http.StatusBadRequest, []error{fsm.ErrSnapshotVersion}},
	{"invalid", http.StatusBadRequest, []error{fsm.ErrInvalid, ErrInvalidArgument}},
	{"unknown_member", http.StatusNotFound, []error{ErrUnknownMember}},
	{"not_leader", http.StatusServiceUnavailable, []error{ErrNotLeader}},
	{"no_leader", http.StatusServiceUnavailable, []error{ErrNoLeader}},
	{"shutdown", http.StatusServiceUnavailable, []error{ErrShutdown}},
	{"timeout", http.StatusGatewayTimeout, []error{ErrTimeout}},
}

// wireError is the body of every non-2xx RPC response.
type wireError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func encodeErr(err error) (int, wireError) {
	for _, c := range wireCodes {
		for _, e := range c.errs {
			if errors.Is(err, e) {
				return c.status, wireError{Code: c.code, Message: err.Error()}
			}
		}
	}
	return http.StatusInternalServerError, wireError{Code: "internal", Message: err.Error()}
}

// RemoteError is an error answered by another node. It matches (errors.Is)
// the sentinels of its code, e.g. ErrNotLeader for "not_leader".
type RemoteError struct {
	Addr    string // the node that answered
	Status  int    // HTTP status
	Code    string // wire code, "internal" if unknown
	Message string // the remote error text
	errs    []error
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("cluster: node %s: %s", e.Addr, e.Message)
}

// Unwrap returns the sentinels of the code.
func (e *RemoteError) Unwrap() []error { return e.errs }

func decodeErr(addr string, resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var we wireError
	if json.Unmarshal(b, &we) != nil || we.Code == "" {
		msg := string(b)
		if len(msg) > 200 {
			msg = msg[:200]
		}
		return &RemoteError{Addr: addr, Status: resp.StatusCode, Code: "internal",
			Message: fmt.Sprintf("HTTP %d: %s", resp.StatusCode, msg)}
	}
	re := &RemoteError{Addr: addr, Status: resp.StatusCode, Code: we.Code, Message: we.Message}
	for _, c := range wireCodes {
		if c.code == we.Code {
			re.errs = c.errs
		}
	}
	return re
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, v = http.StatusInternalServerError, wireError{Code: "internal", Message: err.Error()}
		b, _ = json.Marshal(v)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func writeErr(w http.ResponseWriter, err error) {
	status, we := encodeErr(err)
	writeJSON(w, status, we)
}

// wireResult is an fsm.Result on the wire.
type wireResult struct {
	Code    fsm.Code `json:"code"`
	Message string   `json:"message,omitempty"`
	Index   uint64   `json:"index"`
}

type barrierResponse struct {
	Index uint64 `json:"index"`
}

type joinRequest struct {
	ID   string `json:"id"`
	Addr string `json:"addr"`
}

type idRequest struct {
	ID string `json:"id"`
}
