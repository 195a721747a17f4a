package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/health"
)

// probeKey is looked up to measure the key store; it need not exist.
const probeKey = "kmsd-status-probe"

type (
	versionResponse struct {
		Version string `json:"version"`
		Commit  string `json:"commit"`
	}
	statusResponse struct {
		Version    string `json:"version"`
		OS         string `json:"os"`
		Arch       string `json:"arch"`
		UpTime     uint64 `json:"uptime"` // seconds
		CPUs       int    `json:"num_cpu"`
		UsableCPUs int    `json:"num_cpu_used"`
		HeapAlloc  uint64 `json:"mem_heap_used"`
		StackAlloc uint64 `json:"mem_stack_used"`
		// Latency of a local store read in ms (>= 1); omitted when the
		// store is not reachable.
		KeyStoreLatency int64 `json:"keystore_latency,omitempty"`
		// Both flags are sent together: kms-go rejects unreachable
		// without unavailable (KES Q4).
		KeyStoreUnreachable bool `json:"keystore_unreachable,omitempty"`
		KeyStoreUnavailable bool `json:"keystore_unavailable,omitempty"`

		// kmsd extensions; kms-go's State decoder ignores unknown fields.

		// Ready is what /v1/ready answers (true: 200).
		Ready bool `json:"ready"`
		// Health is the worst status of the node's checks.
		Health health.Status `json:"health"`
		// CertExpiry is the NotAfter of the certificate that expires
		// first, and CertExpiryName what it is ("api server", ...).
		CertExpiry        *time.Time `json:"cert_expiry,omitempty"`
		CertExpiryName    string     `json:"cert_expiry_name,omitempty"`
		CertExpirySubject string     `json:"cert_expiry_subject,omitempty"`
		Raft              *raftJSON  `json:"raft,omitempty"`
	}
	// raftJSON summarises the node's raft state on /v1/status.
	raftJSON struct {
		NodeID       string `json:"node_id"`
		State        string `json:"state"`
		Leader       string `json:"leader"` // "" when no leader is known
		Term         uint64 `json:"term"`
		CommitIndex  uint64 `json:"commit_index"`
		AppliedIndex uint64 `json:"applied_index"`
		Members      int    `json:"members"`
	}
	apiResponse struct {
		Method  string `json:"method"`
		Path    string `json:"path"`
		MaxBody int64  `json:"max_body"`
		Timeout int64  `json:"timeout"` // seconds
	}
)

// serveVersion: GET /version (no authentication).
func (s *Server) serveVersion(req *request) error {
	return writeJSON(req.w, versionResponse{Version: s.version, Commit: s.commit})
}

// ready: GET /v1/ready (KES semantics first): 504 while sealed (the keys
// are unreachable), 502 if the local store fails, 503 naming the failing
// checks if another readiness check fails, else 200 with an empty body.
// A Degraded check is still ready.
func (s *Server) ready(req *request) error {
	if err := s.readiness(req.ctx).err(); err != nil {
		return err
	}
	return writeEmpty(req.w)
}

// healthReport: GET /v1/health (kmsd extension, not in /v1/api): the
// node's health report as JSON; 200 when ready, 503 otherwise.
func (s *Server) healthReport(req *request) error {
	rd := s.readiness(req.ctx)
	code := http.StatusOK
	if rd.err() != nil {
		code = http.StatusServiceUnavailable
	}
	return writeJSONStatus(req.w, code, rd.report)
}

// live: GET /v1/health/live (kmsd extension, not in /v1/api): 200 with an
// empty body while no liveness check fails, else 503 naming them. A
// sealed or otherwise unready node is live.
func (s *Server) live(req *request) error {
	rep := s.readiness(req.ctx).report
	if !rep.Live {
		return newError(http.StatusServiceUnavailable, "not live: "+describeChecks(failed(rep, true)))
	}
	return writeEmpty(req.w)
}

// status: GET /v1/status.
func (s *Server) status(req *request) error {
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)
	resp := statusResponse{
		Version:    s.version,
		OS:         runtime.GOOS,
		Arch:       runtime.GOARCH,
		UpTime:     uint64(time.Since(s.started).Round(time.Second).Seconds()),
		CPUs:       runtime.NumCPU(),
		UsableCPUs: runtime.GOMAXPROCS(0),
		HeapAlloc:  mem.HeapAlloc,
		StackAlloc: mem.StackSys,
	}
	rd := s.readiness(req.ctx)
	if rd.sealed != nil || rd.storeErr != nil {
		resp.KeyStoreUnreachable, resp.KeyStoreUnavailable = true, true
	} else {
		resp.KeyStoreLatency = max(1, rd.latency.Milliseconds())
	}
	resp.Ready, resp.Health = rd.err() == nil, rd.report.Status
	if s.deps.CertExpiry != nil {
		if name, subject, notAfter, ok := s.deps.CertExpiry(); ok {
			t := notAfter.UTC()
			resp.CertExpiry, resp.CertExpiryName, resp.CertExpirySubject = &t, name, subject
		}
	}
	if s.deps.Raft != nil {
		st := s.deps.Raft()
		resp.Raft = &raftJSON{
			NodeID: st.NodeID, State: st.State, Leader: st.Leader, Term: st.Term,
			CommitIndex: st.CommitIndex, AppliedIndex: st.AppliedIndex, Members: len(st.Members),
		}
	}
	return writeJSON(req.w, resp)
}

// readiness is the node's health as /v1/ready, /v1/health, /v1/status
// and /v1/health/live see it: the registry's report, plus the two checks
// the API makes itself ("seal": is there a keyring; "store", liveness: a
// local record lookup) unless the registry has checks of those names.
type readiness struct {
	report   health.Report
	sealed   error         // seal.ErrSealed while sealed
	storeErr error         // the local lookup's error
	latency  time.Duration // the local lookup's duration
}

func (s *Server) readiness(ctx context.Context) readiness {
	var rd readiness
	_, rd.sealed = s.keyring()
	rd.latency, rd.storeErr = s.probeStore()
	rd.report = s.deps.Health.Report(ctx)
	sealCheck := health.Check{Name: "seal", Status: health.OK}
	if rd.sealed != nil {
		sealCheck.Status, sealCheck.Message = health.Fail, "node is sealed"
	}
	storeCheck := health.Check{Name: "store", Status: health.OK, Liveness: true}
	if rd.storeErr != nil {
		storeCheck.Status, storeCheck.Message = health.Fail, "local key store read failed"
	}
	rd.report = withDefaultCheck(rd.report, sealCheck)
	rd.report = withDefaultCheck(rd.report, storeCheck)
	return rd
}

// err is the /v1/ready answer: nil when ready. The KES answers come
// first: 504 while sealed, 502 for a failing store.
func (rd readiness) err() error {
	switch {
	case rd.sealed != nil:
		return &apiError{status: http.StatusGatewayTimeout, message: "key store is not reachable", cause: rd.sealed}
	case rd.storeErr != nil:
		return fail502("key store is unavailable", rd.storeErr)
	case !rd.report.Ready:
		return newError(http.StatusServiceUnavailable, "not ready: "+describeChecks(failed(rd.report, false)))
	}
	return nil
}

// withDefaultCheck adds c to rep unless rep has a check of that name, and
// updates the summary.
func withDefaultCheck(rep health.Report, c health.Check) health.Report {
	for _, have := range rep.Checks {
		if have.Name == c.Name {
			return rep
		}
	}
	rep.Checks = append(slices.Clone(rep.Checks), c)
	slices.SortFunc(rep.Checks, func(a, b health.Check) int { return strings.Compare(a.Name, b.Name) })
	rep.Status = max(rep.Status, c.Status)
	if c.Status == health.Fail {
		rep.Ready = false
		rep.Live = rep.Live && !c.Liveness
	}
	return rep
}

// failed returns rep's failing checks, only the liveness ones if
// livenessOnly.
func failed(rep health.Report, livenessOnly bool) []health.Check {
	var out []health.Check
	for _, c := range rep.Checks {
		if c.Status == health.Fail && (c.Liveness || !livenessOnly) {
			out = append(out, c)
		}
	}
	return out
}

// describeChecks names checks with their messages: "raft (no leader);
// seal (node is sealed)".
func describeChecks(cs []health.Check) string {
	parts := make([]string, 0, len(cs))
	for _, c := range cs {
		p := c.Name
		if c.Message != "" {
			p += " (" + c.Message + ")"
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return "no failing check named"
	}
	return "failing checks: " + strings.Join(parts, "; ")
}

// writeJSONStatus sends v as application/json with the given status.
func writeJSONStatus(w http.ResponseWriter, code int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fail500("failed to encode response", err)
	}
	b = append(b, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	_, _ = w.Write(b)
	return nil
}

// probeStore times one cheap local read.
func (s *Server) probeStore() (time.Duration, error) {
	start := time.Now()
	if _, err := s.deps.Store.GetKey(probeKey); err != nil && !errors.Is(err, fsm.ErrKeyNotFound) {
		return 0, err
	}
	return time.Since(start), nil
}

// serveMetrics: GET /v1/metrics, in the format the client negotiates.
func (s *Server) serveMetrics(req *request) error {
	s.metrics.handler.ServeHTTP(req.w, req.r)
	return nil
}

// listAPIs: GET /v1/api, with the configured timeouts applied.
func (s *Server) listAPIs(req *request) error {
	out := make([]apiResponse, 0, len(s.routes))
	for _, rt := range s.routes {
		if rt.ext {
			continue // KES clients and the conformance suite expect exactly the 22
		}
		timeout := rt.timeout
		if rc := req.state.routes[rt.path]; rc.Timeout > 0 {
			timeout = rc.Timeout
		}
		out = append(out, apiResponse{
			Method:  rt.method,
			Path:    rt.path,
			MaxBody: rt.maxBody,
			Timeout: int64(timeout / time.Second),
		})
	}
	return writeJSON(req.w, out)
}

// errorLog: GET /v1/log/error.
func (s *Server) errorLog(req *request) error {
	return s.stream(req, s.errors, s.metrics.errorEvents)
}

// auditLog: GET /v1/log/audit.
func (s *Server) auditLog(req *request) error {
	return s.stream(req, s.audit, s.metrics.auditEvents)
}

// buildVersion picks the /version fields: the binary's VCS stamp, else
// the configured values, else "<unknown>". The VCS time uses '-' for ':'
// as KES release names do.
func buildVersion(version, commit string) (string, string) {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, kv := range bi.Settings {
			switch kv.Key {
			case "vcs.time":
				version = strings.ReplaceAll(kv.Value, ":", "-")
			case "vcs.revision":
				commit = kv.Value
			}
		}
	}
	if version == "" {
		version = "<unknown>"
	}
	if commit == "" {
		commit = "<unknown>"
	}
	return version, commit
}
