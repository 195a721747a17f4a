package api

import (
	"errors"
	"net/http"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/kmsd/kmsd/fsm"
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

// ready: GET /v1/ready. 504 while sealed (the keys are unreachable), 502
// if the local store fails, else 200 with an empty body.
func (s *Server) ready(req *request) error {
	if _, err := s.keyring(); err != nil {
		return &apiError{status: http.StatusGatewayTimeout, message: "key store is not reachable", cause: err}
	}
	if _, err := s.probeStore(); err != nil {
		return fail502("key store is unavailable", err)
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
	latency, err := s.probeStore()
	if _, serr := s.keyring(); serr != nil || err != nil {
		resp.KeyStoreUnreachable, resp.KeyStoreUnavailable = true, true
	} else {
		resp.KeyStoreLatency = max(1, latency.Milliseconds())
	}
	return writeJSON(req.w, resp)
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
