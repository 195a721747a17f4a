package api

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"time"
)

// MB is the request body limit of the routes that take a body. KES's
// mem.MB is decimal.
const MB = 1_000_000

// writeGrace is added to a route's timeout for the connection write
// deadline, so a handler that gives up at its context deadline still gets
// its 503 onto the wire.
const writeGrace = time.Second

// authKind says what a route requires of the caller.
type authKind uint8

const (
	authNone     authKind = iota // no authentication (/version)
	authIdentify                 // a client certificate, no policy check
	authPolicy                   // the admin, or a policy allowing the path
)

// route is one row of THE route table.
type route struct {
	path    string // mux pattern; a trailing '/' makes it a subtree
	method  string
	maxBody int64
	timeout time.Duration // default; 0 = none
	auth    authKind
	counted bool // counted in kes_http_* (key, policy and identity routes)
	stream  bool // a log stream: not audited
	ext     bool // a kmsd extension: served, but not listed by /v1/api
	handle  func(*Server, *request) error
}

// routeTable returns the 22 routes of spec §2.1, in that order, then
// kmsd's extensions. /v1/api lists only the 22 (KES clients and the
// conformance suite pin that list); the extensions follow the same
// pipeline, policy and `api:` settings as every other route.
func routeTable() []*route {
	const (
		get, put, del = http.MethodGet, http.MethodPut, http.MethodDelete
		s10, s15      = 10 * time.Second, 15 * time.Second
	)
	return []*route{
		{path: "/version", method: get, timeout: s10, auth: authNone, handle: (*Server).serveVersion},
		{path: "/v1/ready", method: get, timeout: s15, auth: authPolicy, handle: (*Server).ready},
		{path: "/v1/status", method: get, timeout: s15, auth: authPolicy, handle: (*Server).status},
		{path: "/v1/metrics", method: get, timeout: s15, auth: authPolicy, handle: (*Server).serveMetrics},
		{path: "/v1/api", method: get, timeout: s10, auth: authPolicy, handle: (*Server).listAPIs},

		{path: "/v1/key/create/", method: put, timeout: s15, auth: authPolicy, counted: true, handle: (*Server).createKey},
		{path: "/v1/key/import/", method: put, maxBody: MB, timeout: s15, auth: authPolicy, counted: true, handle: (*Server).importKey},
		{path: "/v1/key/describe/", method: get, timeout: s15, auth: authPolicy, counted: true, handle: (*Server).describeKey},
		{path: "/v1/key/list/", method: get, timeout: s15, auth: authPolicy, counted: true, handle: (*Server).listKeys},
		{path: "/v1/key/delete/", method: del, timeout: s15, auth: authPolicy, counted: true, handle: (*Server).deleteKey},
		{path: "/v1/key/generate/", method: put, maxBody: MB, timeout: s15, auth: authPolicy, counted: true, handle: (*Server).generateKey},
		{path: "/v1/key/encrypt/", method: put, maxBody: MB, timeout: s15, auth: authPolicy, counted: true, handle: (*Server).encrypt},
		{path: "/v1/key/decrypt/", method: put, maxBody: MB, timeout: s15, auth: authPolicy, counted: true, handle: (*Server).decrypt},
		{path: "/v1/key/hmac/", method: put, maxBody: MB, timeout: s15, auth: authPolicy, counted: true, handle: (*Server).hmac},

		{path: "/v1/policy/describe/", method: get, timeout: s15, auth: authPolicy, counted: true, handle: (*Server).describePolicy},
		{path: "/v1/policy/read/", method: get, timeout: s15, auth: authPolicy, counted: true, handle: (*Server).readPolicy},
		{path: "/v1/policy/list/", method: get, timeout: s15, auth: authPolicy, counted: true, handle: (*Server).listPolicies},

		{path: "/v1/identity/describe/", method: get, timeout: s15, auth: authPolicy, counted: true, handle: (*Server).describeIdentity},
		{path: "/v1/identity/list/", method: get, timeout: s15, auth: authPolicy, counted: true, handle: (*Server).listIdentities},
		{path: "/v1/identity/self/describe", method: get, timeout: s15, auth: authIdentify, counted: true, handle: (*Server).describeSelf},

		{path: "/v1/log/error", method: get, auth: authPolicy, stream: true, handle: (*Server).errorLog},
		{path: "/v1/log/audit", method: get, auth: authPolicy, stream: true, handle: (*Server).auditLog},

		{path: "/v1/health", method: get, timeout: s15, auth: authPolicy, ext: true, handle: (*Server).healthReport},
		{path: "/v1/health/live", method: get, timeout: s15, auth: authPolicy, ext: true, handle: (*Server).live},
	}
}

// listAliases are served without their trailing slash too, meaning "list
// all" (spec §1.2 recommendation): kms-go requests /v1/key/list for an
// empty prefix.
var listAliases = map[string]bool{
	"/v1/key/list/":      true,
	"/v1/policy/list/":   true,
	"/v1/identity/list/": true,
}

func (r *route) subtree() bool { return strings.HasSuffix(r.path, "/") }

// newMux registers every route on a plain http.ServeMux, whose subtree
// patterns give the KES behaviour for free: 307 to the slash form, 307 to
// the cleaned path for '//' and '..', and a text/plain 404 otherwise.
func (s *Server) newMux() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range s.routes {
		mux.Handle(rt.path, s.serve(rt, false))
		if listAliases[rt.path] {
			mux.Handle(strings.TrimSuffix(rt.path, "/"), s.serve(rt, true))
		}
	}
	return mux
}

// request is what a handler sees of one API call.
type request struct {
	w        *responseWriter
	r        *http.Request
	ctx      context.Context // carries the route deadline
	route    *route
	state    *state
	resource string // decoded path minus the route prefix
	identity string // empty when unauthenticated
}

// LogValue describes a request in logs. It never includes the body.
func (r *request) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("method", r.r.Method),
		slog.String("path", r.r.URL.Path),
		slog.String("ip", remoteIP(r.r)),
		slog.String("identity", r.identity),
	)
}

// serve wraps one route: bookkeeping (recover, metrics, audit) around the
// KES request pipeline.
func (s *Server) serve(rt *route, alias bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rw := &responseWriter{ResponseWriter: w}
		req := &request{w: rw, r: r, ctx: r.Context(), route: rt, state: s.state.Load()}
		if rt.counted {
			s.metrics.active.Inc()
		}
		defer func() {
			p := recover()
			if p != nil && p != http.ErrAbortHandler {
				s.log.ErrorContext(r.Context(), "api: panic serving request", "req", req,
					"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
				if !rw.wroteHeader {
					writeError(rw, http.StatusInternalServerError, "internal server error")
				}
			}
			elapsed := time.Since(start)
			if rt.counted {
				s.metrics.active.Dec()
				s.metrics.observe(rw.status(), elapsed)
			}
			if !rt.stream {
				s.recordAudit(req, rw.status(), elapsed)
			}
			if p == http.ErrAbortHandler {
				panic(p)
			}
		}()
		s.pipeline(req, w, alias)
	}
}

// pipeline runs the steps of spec §1.2 in order; the first failure wins.
func (s *Server) pipeline(req *request, raw http.ResponseWriter, alias bool) {
	rt, r := req.route, req.r
	if r.Method != rt.method && (rt.method != http.MethodPut || r.Method != http.MethodPost) {
		req.w.Header().Set("Accept", rt.method)
		req.w.Header().Set("Allow", rt.method)
		writeError(req.w, http.StatusMethodNotAllowed,
			fmt.Sprintf("received method '%s' expected '%s'", r.Method, rt.method))
		return
	}
	if rt.subtree() && !alias {
		if !strings.HasPrefix(r.URL.Path, rt.path) { // cannot happen with ServeMux; be safe
			http.NotFound(req.w, r)
			return
		}
		req.resource = r.URL.Path[len(rt.path):]
	}
	r.Body = http.MaxBytesReader(raw, r.Body, rt.maxBody)

	rc := req.state.routes[rt.path]
	timeout := rt.timeout
	if rc.Timeout > 0 {
		timeout = rc.Timeout
	}
	ctl := http.NewResponseController(req.w)
	if timeout > 0 {
		ctx, cancel := context.WithTimeout(req.ctx, timeout)
		defer cancel()
		req.ctx = ctx
		_ = ctl.SetWriteDeadline(time.Now().Add(timeout + writeGrace))
	} else {
		_ = ctl.SetWriteDeadline(time.Time{}) // streams: no deadline at all
	}

	if err := s.authenticate(req, rc.SkipAuth, alias); err != nil {
		s.fail(req, err)
		return
	}
	if err := s.auditGate(req); err != nil { // audit.go: "reject" policy
		s.fail(req, err)
		return
	}
	if err := rt.handle(s, req); err != nil {
		s.fail(req, err)
	}
}

// responseWriter records the status for metrics and audit. It exposes the
// wrapped writer through Unwrap, so http.ResponseController still reaches
// Flush and SetWriteDeadline.
type responseWriter struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
}

func (w *responseWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.code, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.code, w.wroteHeader = http.StatusOK, true
	}
	return w.ResponseWriter.Write(b)
}

func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *responseWriter) status() int {
	if !w.wroteHeader {
		return http.StatusOK
	}
	return w.code
}

// remoteIP is the client address without the port.
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// knownRoute reports whether path is a route of the table.
func knownRoute(path string) bool {
	for _, rt := range routeTable() {
		if rt.path == path {
			return true
		}
	}
	return false
}
