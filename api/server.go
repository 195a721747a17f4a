package api

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsd/kmsd/cluster"
	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/health"
	"github.com/kmsd/kmsd/seal"
)

// Config is the part of the server configuration the API owns. Admin,
// Policies and Routes can be swapped at run time with Server.Reload; the
// other fields are read once by New.
type Config struct {
	// NodeName is added to audit events as "node". Empty: omitted.
	NodeName string

	// Admin is the admin identity. It is compared to the caller's identity
	// by plain string equality, so a non-hex value such as "disabled"
	// disables the admin. Required.
	Admin string

	// Policies maps a policy name to its rules and identities. Each
	// identity may appear in at most one policy; the admin in none.
	Policies map[string]Policy

	// Routes overrides per-route settings, keyed by the exact mux pattern
	// ("/v1/status", "/v1/key/create/"). Unknown keys are ignored.
	Routes map[string]RouteConfig

	// Version and Commit are served by /version when the binary carries no
	// VCS build information. Empty: "<unknown>".
	Version, Commit string

	// StartTime is reported as created_at of the admin, the policies and
	// the identities. Zero: the time New runs.
	StartTime time.Time

	// Logger is the server log. Unexpected errors are logged here at
	// ERROR. Nil: slog.Default().
	Logger *slog.Logger

	// ErrorLog feeds /v1/log/error. The Logger's handler should be wrapped
	// with ErrorLog.Wrap. Nil: /v1/log/error streams nothing.
	ErrorLog *ErrorStream

	// Audit receives one NDJSON audit event per request (the audit file).
	// Nil: none (the /v1/log/audit stream still works).
	Audit AuditSink

	// AuditReject selects the "reject" audit failure policy: while Audit
	// is unhealthy, key, policy and identity requests are answered 503
	// before anything is done, and each event waits up to AuditMaxWait
	// for room in Audit's queue. False ("continue"): requests are served
	// and never wait on Audit. See DESIGN.md, "Audit failure policy".
	AuditReject bool

	// AuditMaxWait bounds the wait under AuditReject. 0: no wait.
	AuditMaxWait time.Duration

	// Registry receives the kes_* metrics and is served at /v1/metrics.
	// Nil: a private registry holding only the API's metrics.
	Registry *prometheus.Registry
}

// Policy is one named set of rules (spec §5). A path is allowed if no
// Deny pattern and at least one Allow pattern matches it. A pattern ending
// in '*' matches every path with that prefix; any other pattern only the
// exact path; an empty pattern nothing.
type Policy struct {
	Allow, Deny []string
	Identities  []string
}

// RouteConfig is the `api:` section for one route.
type RouteConfig struct {
	// Timeout replaces the route's default timeout when > 0. Negative
	// values are rejected.
	Timeout time.Duration
	// SkipAuth makes the route identify-only: no policy check, and a
	// client without a certificate is served too.
	SkipAuth bool
}

// KeyStore is the local replica of the key records (implemented by
// *fsm.FSM). GetKey returns fsm.ErrKeyNotFound for a missing key.
type KeyStore interface {
	GetKey(name string) (fsm.Key, error)
	ListKeys(prefix string) ([]string, error)
}

// Replicator commits commands through the cluster (implemented by
// *cluster.Node). Both calls must honour ctx.
type Replicator interface {
	Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error)
	ReadBarrier(ctx context.Context) error
}

// Deps are the server's collaborators.
type Deps struct {
	Store   KeyStore   // required
	Cluster Replicator // required

	// Keyring returns the unsealed keyring, or nil while the node is
	// sealed. A nil func means always sealed.
	Keyring func() *seal.Keyring

	// Cache caches unsealed keys. Nil: every request unseals its key.
	Cache *seal.Cache

	// Health holds the node's checks. /v1/ready answers 503 while one of
	// them fails (after the KES answers: 504 sealed, 502 store), and
	// /v1/health and /v1/health/live serve its report. The API adds a
	// "seal" and a "store" check of its own unless Health has checks of
	// those names. Nil: only those two.
	Health *health.Registry

	// CertExpiry returns the certificate that expires first, reported on
	// /v1/status. Nil, or ok false: not reported.
	CertExpiry func() (name, subject string, notAfter time.Time, ok bool)

	// Raft returns the node's raft status, summarised on /v1/status. Nil:
	// not reported.
	Raft func() cluster.Status

	Rand io.Reader        // nil: crypto/rand
	Now  func() time.Time // nil: time.Now
}

// Server serves the KES API. Create it with New.
type Server struct {
	deps    Deps
	log     *slog.Logger
	node    string
	version string
	commit  string
	started time.Time
	routes  []*route
	handler http.Handler
	metrics *metrics
	audit   *broadcaster
	errors  *broadcaster
	// The audit sink and its failure policy (audit.go).
	auditSink   AuditSink
	auditReject bool
	auditWait   time.Duration

	state atomic.Pointer[state]

	done      chan struct{}
	closeOnce sync.Once
}

// state is the reloadable, immutable part of the configuration. A request
// loads it once, so a Reload never changes a request in flight.
type state struct {
	admin    string
	policies map[string]*policy // by name
	owner    map[string]string  // identity -> policy name
	routes   map[string]RouteConfig
}

// New validates cfg and returns a server. It registers the kes_* metrics
// in cfg.Registry, so it fails if they are already registered there.
func New(cfg Config, deps Deps) (*Server, error) {
	st, err := newState(cfg)
	if err != nil {
		return nil, err
	}
	if deps.Store == nil || deps.Cluster == nil {
		return nil, errors.New("api: Deps.Store and Deps.Cluster are required")
	}
	if deps.Keyring == nil {
		deps.Keyring = func() *seal.Keyring { return nil }
	}
	if deps.Rand == nil {
		deps.Rand = rand.Reader
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	s := &Server{
		deps:        deps,
		log:         cfg.Logger,
		node:        cfg.NodeName,
		started:     cfg.StartTime,
		routes:      routeTable(),
		audit:       new(broadcaster),
		auditSink:   cfg.Audit,
		auditReject: cfg.AuditReject,
		auditWait:   cfg.AuditMaxWait,
		done:        make(chan struct{}),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.started.IsZero() {
		s.started = deps.Now()
	}
	s.started = s.started.UTC()
	s.errors = new(broadcaster)
	if cfg.ErrorLog != nil {
		s.errors = &cfg.ErrorLog.b
	}
	s.version, s.commit = buildVersion(cfg.Version, cfg.Commit)
	reg := cfg.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	if s.metrics, err = newMetrics(reg, s); err != nil {
		return nil, err
	}
	s.state.Store(st)
	s.handler = s.newMux()
	return s, nil
}

// Handler returns the HTTP handler serving every route.
func (s *Server) Handler() http.Handler { return s.handler }

// Reload validates cfg and atomically replaces the admin, the policies and
// the route settings. Requests in flight keep the configuration they
// started with. On error nothing changes.
func (s *Server) Reload(cfg Config) error {
	st, err := newState(cfg)
	if err != nil {
		return err
	}
	s.state.Store(st)
	return nil
}

// Close ends all /v1/log/* streams. The handler keeps serving other
// requests; new streams end at once.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.done) })
}

// newState validates the reloadable configuration.
func newState(cfg Config) (*state, error) {
	if cfg.Admin == "" {
		return nil, errors.New("api: admin identity is empty")
	}
	st := &state{
		admin:    cfg.Admin,
		policies: make(map[string]*policy, len(cfg.Policies)),
		owner:    make(map[string]string),
		routes:   make(map[string]RouteConfig, len(cfg.Routes)),
	}
	for path, rc := range cfg.Routes {
		if rc.Timeout < 0 {
			return nil, fmt.Errorf("api: route %q: timeout must not be negative", path)
		}
		st.routes[path] = rc
	}
	for _, name := range sortedKeys(cfg.Policies) {
		p := cfg.Policies[name]
		if !validName(name) {
			return nil, fmt.Errorf("api: invalid policy name %q", name)
		}
		st.policies[name] = newPolicy(name, p)
		for _, id := range p.Identities {
			switch other, dup := st.owner[id]; {
			case !validName(id):
				return nil, fmt.Errorf("api: policy %q: invalid identity %q", name, id)
			case id == cfg.Admin:
				return nil, fmt.Errorf("api: policy %q: the admin identity cannot be assigned to a policy", name)
			case dup && other != name:
				return nil, fmt.Errorf("api: identity already has a policy: %q is in %q and %q", id, other, name)
			}
			st.owner[id] = name
		}
	}
	return st, nil
}

// keyring returns the unsealed keyring or seal.ErrSealed.
func (s *Server) keyring() (*seal.Keyring, error) {
	if kr := s.deps.Keyring(); kr != nil {
		return kr, nil
	}
	return nil, seal.ErrSealed
}
