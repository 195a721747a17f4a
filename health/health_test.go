package health

import (
	"context"
	"encoding/json"
	"testing"
	"time"
)

func TestReport(t *testing.T) {
	fixed := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name        string
		checks      map[string][2]any // name -> {Kind, Status}
		live, ready bool
		status      Status
	}{
		{"none", nil, true, true, OK},
		{"all ok", map[string][2]any{"a": {Readiness, OK}, "b": {Liveness, OK}}, true, true, OK},
		{"degraded stays ready", map[string][2]any{"a": {Readiness, Degraded}}, true, true, Degraded},
		{"readiness fail", map[string][2]any{"a": {Readiness, Fail}, "b": {Liveness, OK}}, true, false, Fail},
		{"liveness fail", map[string][2]any{"a": {Liveness, Fail}}, false, false, Fail},
		{"panic fails", map[string][2]any{"a": {Readiness, OK}, "p": {Liveness, Status(-1)}}, false, false, Fail},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewRegistry(func() time.Time { return fixed })
			for name, v := range tt.checks {
				st := v[1].(Status)
				r.Register(name, v[0].(Kind), func(context.Context) (Status, string) {
					if st < 0 {
						panic("check " + name)
					}
					return st, "msg " + name
				})
			}
			rep := r.Report(context.Background())
			if rep.Live != tt.live || rep.Ready != tt.ready || rep.Status != tt.status {
				t.Fatalf("report %+v, want live=%v ready=%v status=%v", rep, tt.live, tt.ready, tt.status)
			}
			if len(rep.Checks) != len(tt.checks) || !rep.Time.Equal(fixed) {
				t.Fatalf("checks %+v time %v", rep.Checks, rep.Time)
			}
		})
	}
}

func TestRegisterReplacesAndJSON(t *testing.T) {
	var r Registry
	r.Register("b", Readiness, func(context.Context) (Status, string) { return Fail, "x" })
	r.Register("a", Liveness, func(context.Context) (Status, string) { return OK, "" })
	r.Register("b", Readiness, func(context.Context) (Status, string) { return Degraded, "y" })
	rep := r.Report(context.Background())
	if len(rep.Checks) != 2 || rep.Checks[0].Name != "a" || rep.Checks[1].Status != Degraded || !rep.Ready {
		t.Fatalf("report %+v", rep)
	}
	if f := rep.Failing(); len(f) != 1 || f[0].Name != "b" {
		t.Fatalf("failing %+v", f)
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil || back.Status != Degraded || back.Checks[1].Message != "y" {
		t.Fatalf("round trip %s -> %+v, %v", b, back, err)
	}
	var nilReg *Registry
	if rep := nilReg.Report(context.Background()); !rep.Live || !rep.Ready {
		t.Fatalf("nil registry %+v", rep)
	}
}

// TestReportStuckCheck: a check that ignores its context cannot hold up
// the report beyond ctx; it is reported failing, the others as they are.
func TestReportStuckCheck(t *testing.T) {
	r := NewRegistry(nil)
	started, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	r.Register("a", Readiness, func(context.Context) (Status, string) { return OK, "fine" })
	r.Register("b", Readiness, func(context.Context) (Status, string) {
		close(started)
		<-release // ignores ctx
		return OK, ""
	})
	r.Register("c", Liveness, func(context.Context) (Status, string) { return Degraded, "slow disk" })
	ctx, cancel := context.WithCancel(context.Background())
	reports := make(chan Report, 1)
	go func() { reports <- r.Report(ctx) }()
	<-started
	cancel()
	var rep Report
	select {
	case rep = <-reports:
	case <-time.After(10 * time.Second): // a hang guard, not a timing assertion
		t.Fatal("Report still waits for a stuck check after its ctx ended")
	}
	if rep.Ready || rep.Status != Fail || len(rep.Checks) != 3 {
		t.Fatalf("report %+v, want not ready, fail, 3 checks", rep)
	}
	if rep.Live != (rep.Checks[2].Status != Fail) {
		t.Fatalf("report %+v: live must follow the liveness check c only", rep)
	}
	b := rep.Checks[1]
	if b.Name != "b" || b.Status != Fail || b.Message != "did not answer in time" {
		t.Fatalf("stuck check reported as %+v", b)
	}
	// a and c answered at once; they may still lose the race against the
	// cancel, but then they too are reported as not answering.
	for _, c := range []Check{rep.Checks[0], rep.Checks[2]} {
		if c.Status == Fail && c.Message != "did not answer in time" {
			t.Fatalf("check %+v", c)
		}
	}
	if c := rep.Checks[2]; !c.Liveness || c.Name != "c" {
		t.Fatalf("check c %+v", c)
	}
}
