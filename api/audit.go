package api

import (
	"encoding/json"
	"net/http"
	"net/netip"
	"strings"
	"time"
)

// AuditSink receives the NDJSON audit events (implemented by
// *logfile.Sink). Enqueue must not block for longer than wait and reports
// whether it accepted the line; a refused line is the sink's to count.
// Healthy reports whether accepted lines currently reach their
// destination. Both are called on the request path and must be cheap.
type AuditSink interface {
	Enqueue(line []byte, wait time.Duration) bool
	Healthy() bool
}

// errAuditUnavailable refuses a request under the "reject" policy while
// the audit sink is unhealthy (DESIGN.md, "Audit failure policy").
var errAuditUnavailable = newError(http.StatusServiceUnavailable, "audit log unavailable: request refused")

// auditEvent is one line of the audit log and /v1/log/audit, in the
// shape kms-go's AuditStream decodes; response.time is nanoseconds (the
// client's time.Duration, KES Q8). "node", request.method and request.key
// are additions the client ignores. Never a body: no key material,
// plaintext, ciphertext or context.
type auditEvent struct {
	Time     time.Time     `json:"time"`
	Node     string        `json:"node,omitempty"`
	Request  auditRequest  `json:"request"`
	Response auditResponse `json:"response"`
}

type auditRequest struct {
	IP       string `json:"ip,omitempty"`
	Path     string `json:"path"`
	Identity string `json:"identity,omitempty"`
	Method   string `json:"method,omitempty"`
	Key      string `json:"key,omitempty"`
}

type auditResponse struct {
	Code int   `json:"code"`
	Time int64 `json:"time"`
}

// auditGate refuses a key, policy or identity request up front, before
// its handler runs, when the policy is "reject" and the audit sink is
// unhealthy: nothing may change unaudited. Other routes (version, ready,
// health, status, metrics, api, the log streams) are always served, so
// operators and load balancers can still see the node.
func (s *Server) auditGate(req *request) error {
	if !s.auditReject || s.auditSink == nil || !req.route.counted || s.auditSink.Healthy() {
		return nil
	}
	return errAuditUnavailable
}

// recordAudit records one finished request in the audit sink and on
// /v1/log/audit. Under "continue" it never waits; under "reject" it waits
// at most the configured max wait for room in the sink's queue. A refused
// event is counted lost by the sink.
func (s *Server) recordAudit(req *request, code int, elapsed time.Duration) {
	if s.auditSink == nil && !s.audit.active() {
		return
	}
	ip := ""
	if addr, err := netip.ParseAddr(remoteIP(req.r)); err == nil {
		ip = addr.Unmap().String() // kms-go decodes "ip" as net.IP
	}
	line, err := json.Marshal(auditEvent{
		Time: s.deps.Now().UTC(),
		Node: s.node,
		Request: auditRequest{
			IP:       ip,
			Path:     req.r.URL.Path,
			Identity: req.identity,
			Method:   req.r.Method,
			Key:      auditKey(req),
		},
		Response: auditResponse{Code: code, Time: elapsed.Nanoseconds()},
	})
	if err != nil {
		return
	}
	line = append(line, '\n')
	if s.auditSink != nil {
		var wait time.Duration
		if s.auditReject {
			wait = s.auditWait
		}
		s.auditSink.Enqueue(line, wait)
	}
	s.audit.publish(line)
}

// auditKey is the key a request names: the resource of the /v1/key/*
// routes that take a key name (all but list, whose resource is a
// pattern). Empty when the request never got as far as parsing it.
func auditKey(req *request) string {
	rt := req.route
	if rt == nil || !rt.subtree() || !strings.HasPrefix(rt.path, "/v1/key/") || rt.path == "/v1/key/list/" {
		return ""
	}
	return req.resource
}
