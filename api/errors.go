package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/kmsd/kmsd/cluster"
	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/seal"
)

// errorTable is THE mapping from Go sentinels to HTTP responses. The
// first row whose sentinel errors.Is-matches wins. The 4xx texts are the
// KES client's sentinels and must not change by a byte (spec §3; MinIO
// compares status and message). Every 503 has its own message so an
// operator can tell the causes apart; KES clients only look at the code.
var errorTable = []struct {
	err     error
	status  int
	message string
}{
	{fsm.ErrKeyExists, http.StatusBadRequest, "key already exists"},
	{fsm.ErrKeyNotFound, http.StatusNotFound, "key does not exist"},
	{seal.ErrDecrypt, http.StatusBadRequest, "decryption failed: ciphertext is not authentic"},
	{seal.ErrNoHMAC, http.StatusConflict, "key does not support HMAC"},
	{seal.ErrSealed, http.StatusServiceUnavailable, "node is sealed"},
	{cluster.ErrNotLeader, http.StatusServiceUnavailable, "not the leader: cannot accept writes"},
	{cluster.ErrNoLeader, http.StatusServiceUnavailable, "no leader: cannot accept writes"},
	{cluster.ErrTimeout, http.StatusServiceUnavailable, "cluster did not answer in time"},
	{cluster.ErrUnknownOutcome, http.StatusServiceUnavailable, "outcome unknown: the change may have been applied"},
	{cluster.ErrShutdown, http.StatusServiceUnavailable, "node is shutting down"},
	{context.DeadlineExceeded, http.StatusServiceUnavailable, "request timed out"},
	{context.Canceled, http.StatusServiceUnavailable, "request canceled"},
}

// Errors the API itself produces with a fixed text.
var (
	errNotAllowed      = newError(http.StatusForbidden, "not authorized: insufficient permissions")
	errTLSRequired     = newError(http.StatusBadRequest, "insecure connection: TLS is required")
	errNoCert          = newError(http.StatusBadRequest, "tls: client certificate is required")
	errManyCerts       = newError(http.StatusBadRequest, "tls: received more than one client certificate")
	errBadBody         = newError(http.StatusBadRequest, "invalid request body")
	errBadImportBody   = newError(http.StatusBadRequest, "invalid import key request body")
	errPolicyNotFound  = newError(http.StatusNotFound, "policy does not exist")
	errIdentityUnknown = newError(http.StatusNotFound, "identity does not exist")
)

// apiError is a response chosen by the API: its status and message are
// sent as they are. cause, if any, is only for errors.Is and logs; logIt
// logs the error at ERROR although it is the client's.
type apiError struct {
	status  int
	message string
	cause   error
	logIt   bool
}

func newError(status int, message string) *apiError {
	return &apiError{status: status, message: message}
}

func (e *apiError) Error() string {
	if e.cause != nil {
		return e.message + ": " + e.cause.Error()
	}
	return e.message
}

func (e *apiError) Unwrap() error { return e.cause }

// failure marks an error the handler did not expect. If the error (or its
// cause) is in errorTable, the table wins; otherwise the error is logged in
// full and the client gets the route's generic status and message. An
// opaque failure hides its cause from the table, e.g. a stored key that
// fails to unseal must not read as the client's "ciphertext is not
// authentic".
type failure struct {
	status  int
	message string
	err     error
	opaque  bool
}

func (f *failure) Error() string { return f.message + ": " + f.err.Error() }

func (f *failure) Unwrap() error {
	if f.opaque {
		return nil
	}
	return f.err
}

// fail500 and fail502 wrap err with a route's generic KES failure text:
// 500 for local (crypto, randomness) failures, 502 for key store ones.
func fail500(message string, err error) error {
	return &failure{status: http.StatusInternalServerError, message: message, err: err}
}

func fail502(message string, err error) error {
	return &failure{status: http.StatusBadGateway, message: message, err: err}
}

// resolve maps err to a response. logIt is true for errors nobody
// expected, which must be logged in full.
func resolve(err error) (status int, message string, logIt bool) {
	if ae, ok := errors.AsType[*apiError](err); ok {
		return ae.status, ae.message, ae.logIt
	}
	for _, row := range errorTable {
		if errors.Is(err, row.err) {
			return row.status, row.message, false
		}
	}
	if f, ok := errors.AsType[*failure](err); ok {
		return f.status, f.message, true
	}
	return http.StatusInternalServerError, "internal server error", true
}

// fail sends err as a KES error response, logging unexpected errors at
// ERROR (which also feeds /v1/log/error).
func (s *Server) fail(req *request, err error) {
	status, message, logIt := resolve(err)
	if logIt {
		s.log.ErrorContext(req.r.Context(), "api: "+message, "req", req, "err", err)
	}
	if req.w.wroteHeader {
		return // a stream or a partial response: nothing more to send
	}
	writeError(req.w, status, message)
}

// writeError writes {"message":"..."} as application/json with an
// explicit Content-Length.
func writeError(w http.ResponseWriter, status int, message string) {
	msg, _ := json.Marshal(message)
	body := make([]byte, 0, len(msg)+12)
	body = append(body, `{"message":`...)
	body = append(body, msg...)
	body = append(body, '}')
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// invalidName is the 400 for a resource that fails validName/validPattern.
func invalidName(what, name string) error {
	return newError(http.StatusBadRequest,
		fmt.Sprintf("%s '%s' is empty, too long or contains invalid characters", what, name))
}

// invalidPattern is the 400 for a list pattern. The spec gives no text;
// "empty" is dropped because the empty pattern is valid.
func invalidPattern(pattern string) error {
	return newError(http.StatusBadRequest,
		fmt.Sprintf("pattern '%s' is too long or contains invalid characters", pattern))
}
