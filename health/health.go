package health

import (
	"context"
	"sort"
	"sync"
	"time"
)

// Status is the outcome of one check, ordered from good to bad.
type Status int

const (
	// OK: nothing to report.
	OK Status = iota
	// Degraded: the node serves, but an operator should act (a
	// certificate expires within 30 days, no raft leader so writes fail).
	Degraded
	// Fail: for a readiness check, the node should not get requests; for
	// a liveness check, it should be restarted.
	Fail
)

func (s Status) String() string {
	switch s {
	case OK:
		return "ok"
	case Degraded:
		return "degraded"
	default:
		return "fail"
	}
}

// MarshalText makes a Status a JSON string.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses "ok", "degraded" or "fail".
func (s *Status) UnmarshalText(b []byte) error {
	switch string(b) {
	case "ok":
		*s = OK
	case "degraded":
		*s = Degraded
	default:
		*s = Fail
	}
	return nil
}

// Kind says what a failing check means.
type Kind int

const (
	// Readiness checks gate /v1/ready.
	Readiness Kind = iota
	// Liveness checks gate liveness (and readiness).
	Liveness
)

// Check is one check's result.
type Check struct {
	Name    string `json:"name"`
	Status  Status `json:"status"`
	Message string `json:"message,omitempty"`
	// Liveness is true for liveness checks.
	Liveness bool `json:"liveness,omitempty"`
}

// Report is the node's health at one moment.
type Report struct {
	// Live is false when a liveness check fails.
	Live bool `json:"live"`
	// Ready is false when any check fails (Degraded is still ready).
	Ready bool `json:"ready"`
	// Status is the worst status of all checks.
	Status Status    `json:"status"`
	Checks []Check   `json:"checks"`
	Time   time.Time `json:"time"`
}

// Failing returns the checks that are not OK.
func (r Report) Failing() []Check {
	var out []Check
	for _, c := range r.Checks {
		if c.Status != OK {
			out = append(out, c)
		}
	}
	return out
}

// Func runs one check. It must return quickly (a check that needs I/O
// bounds it with ctx) and be safe for concurrent use; Name and Liveness
// of the result are filled in by the Registry. One that has not returned
// when Report's ctx ends is reported as failing.
type Func func(ctx context.Context) (Status, string)

type entry struct {
	name string
	kind Kind
	fn   Func
}

// Registry holds the registered checks. The zero value is ready to use.
type Registry struct {
	mu     sync.RWMutex
	checks []entry
	now    func() time.Time
}

// NewRegistry returns an empty registry using now for report times (nil:
// time.Now).
func NewRegistry(now func() time.Time) *Registry { return &Registry{now: now} }

// Register adds (or replaces) the check called name.
func (r *Registry) Register(name string, kind Kind, fn Func) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.checks {
		if r.checks[i].name == name {
			r.checks[i] = entry{name, kind, fn}
			return
		}
	}
	r.checks = append(r.checks, entry{name, kind, fn})
	sort.Slice(r.checks, func(i, j int) bool { return r.checks[i].name < r.checks[j].name })
}

// Report runs every check (concurrently) and summarises them, in name
// order. A nil Registry reports live and ready with no checks. A check
// that has not answered when ctx ends is abandoned (its goroutine exits
// when it returns) and reported as Fail, so a stuck check can never hold
// up /v1/ready for longer than its context. The checks get a context that
// ends a little earlier than ctx, so one that gives up at its deadline is
// still heard. A check that panics is
// reported as Fail.
func (r *Registry) Report(ctx context.Context) Report {
	rep := Report{Live: true, Ready: true, Checks: []Check{}}
	if r == nil {
		rep.Time = time.Now().UTC()
		return rep
	}
	r.mu.RLock()
	checks := append([]entry(nil), r.checks...)
	now := r.now
	r.mu.RUnlock()
	if now == nil {
		now = time.Now
	}
	rep.Time = now().UTC()

	type result struct {
		i   int
		st  Status
		msg string
	}
	// The checks' context ends 10% (at most 100 ms) before ctx, so a
	// check that gives up at its deadline is still reported as it says.
	cctx := ctx
	if d, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		cctx, cancel = context.WithDeadline(ctx, d.Add(-min(time.Until(d)/10, 100*time.Millisecond)))
		defer cancel()
	}
	results := make(chan result, len(checks)) // late answers never block
	for i, e := range checks {
		go func() {
			res := result{i, Fail, "the check panicked"}
			defer func() {
				_ = recover() // on its own goroutine a panic would end the process
				results <- res
			}()
			res.st, res.msg = e.fn(cctx)
		}()
	}
	answered := make([]*result, len(checks))
wait:
	for range checks {
		select {
		case res := <-results:
			answered[res.i] = &res
		case <-ctx.Done(): // keep the answers already in
			for range len(checks) {
				select {
				case res := <-results:
					answered[res.i] = &res
				default:
					break wait
				}
			}
			break wait
		}
	}
	for i, e := range checks {
		c := Check{Name: e.name, Status: Fail, Message: "did not answer in time", Liveness: e.kind == Liveness}
		if res := answered[i]; res != nil {
			c.Status, c.Message = res.st, res.msg
		}
		rep.Checks = append(rep.Checks, c)
		if c.Status > rep.Status {
			rep.Status = c.Status
		}
		if c.Status == Fail {
			rep.Ready = false
			if e.kind == Liveness {
				rep.Live = false
			}
		}
	}
	return rep
}
