package api

import (
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
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
	line := appendAuditEvent(make([]byte, 0, 384), &auditEvent{
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

// appendAuditEvent appends ev as one JSON object, the bytes
// json.Marshal would produce for it with HTML escaping off (a golden test
// holds them equal). It runs once per request: a hand-written encoder
// costs a fraction of the reflective one (no allocation but the line).
func appendAuditEvent(b []byte, ev *auditEvent) []byte {
	b = append(b, `{"time":"`...)
	b = ev.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if ev.Node != "" {
		b = append(b, `,"node":`...)
		b = appendJSONString(b, ev.Node)
	}
	b = append(b, `,"request":{`...)
	if ev.Request.IP != "" {
		b = append(b, `"ip":`...)
		b = appendJSONString(b, ev.Request.IP)
		b = append(b, ',')
	}
	b = append(b, `"path":`...)
	b = appendJSONString(b, ev.Request.Path)
	for _, f := range [...]struct{ name, v string }{
		{`,"identity":`, ev.Request.Identity},
		{`,"method":`, ev.Request.Method},
		{`,"key":`, ev.Request.Key},
	} {
		if f.v != "" {
			b = append(b, f.name...)
			b = appendJSONString(b, f.v)
		}
	}
	b = append(b, `},"response":{"code":`...)
	b = strconv.AppendInt(b, int64(ev.Response.Code), 10)
	b = append(b, `,"time":`...)
	b = strconv.AppendInt(b, ev.Response.Time, 10)
	return append(b, "}}"...)
}

// appendJSONString appends s as a JSON string: '"' and '\\' escaped,
// control characters as \n, \r, \t, \b, \f or \u00XX, invalid UTF-8 as U+FFFD,
// U+2028 and U+2029 escaped, as encoding/json does.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0 // s[start:i] is pending, needing no escape
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		} else if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		} else {
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
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
