package api

import (
	"encoding/json"
	"math"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// §16 items 39-42.
func TestStatusReadyVersion(t *testing.T) {
	e := newEnv(t)
	c := e.client(&e.admin, false)
	e.do(c, "GET", "/version", nil).expect(t, "version", 200, `{"version":"v-test","commit":"c-test"}`+"\n")
	e.do(c, "GET", "/v1/ready", nil).expectEmpty(t, "ready")

	// The shape kms-go's State decodes.
	var st struct {
		Version             string `json:"version"`
		OS                  string `json:"os"`
		Arch                string `json:"arch"`
		UpTime              uint64 `json:"uptime"`
		CPUs                int    `json:"num_cpu"`
		UsableCPUs          int    `json:"num_cpu_used"`
		HeapAlloc           uint64 `json:"mem_heap_used"`
		StackAlloc          uint64 `json:"mem_stack_used"`
		KeyStoreLatency     int64  `json:"keystore_latency"`
		KeyStoreUnreachable *bool  `json:"keystore_unreachable"`
		KeyStoreUnavailable *bool  `json:"keystore_unavailable"`
	}
	r := e.do(c, "GET", "/v1/status", nil)
	if r.code != 200 || json.Unmarshal([]byte(r.body), &st) != nil {
		t.Fatalf("status: %d %s", r.code, r.body)
	}
	switch {
	case st.Version != "v-test" || st.OS != runtime.GOOS || st.Arch != runtime.GOARCH:
		t.Errorf("status: %s", r.body)
	case st.CPUs == 0 || st.UsableCPUs == 0 || st.HeapAlloc == 0 || st.StackAlloc == 0:
		t.Errorf("status runtime fields: %s", r.body)
	case st.UpTime < uint64(time.Since(e.cfg.StartTime).Seconds())-5:
		t.Errorf("uptime %d", st.UpTime)
	case st.KeyStoreLatency < 1 || st.KeyStoreUnreachable != nil || st.KeyStoreUnavailable != nil:
		t.Errorf("healthy store: %s", r.body)
	}
	// The user's policy allows /v1/status.
	if r := e.do(e.client(&e.user, false), "GET", "/v1/status", nil); r.code != 200 {
		t.Errorf("user status: %d", r.code)
	}

	// Store down: status still 200 with both flags (KES Q4), ready 502.
	e.fc.set(func(f *fakeCluster) { f.getErr = errBoom })
	r = e.do(c, "GET", "/v1/status", nil)
	if !strings.Contains(r.body, `"keystore_unreachable":true,"keystore_unavailable":true`) || strings.Contains(r.body, "keystore_latency") {
		t.Errorf("store down: %s", r.body)
	}
	e.do(c, "GET", "/v1/ready", nil).expectError(t, "ready, store down", 502, "key store is unavailable")
}

// §16 item 43: the 22 routes, with the configured overrides.
func TestListAPIs(t *testing.T) {
	e := newEnv(t, func(_ *env, cfg *Config, _ *Deps) {
		cfg.Routes = map[string]RouteConfig{
			"/v1/status":      {Timeout: 17 * time.Second},
			"/v1/key/create/": {Timeout: 2500 * time.Millisecond},
			"/v1/key/create":  {Timeout: time.Hour}, // not a mux pattern: ignored
		}
	})
	r := e.do(e.client(&e.admin, false), "GET", "/v1/api", nil)
	var got []apiResponse
	if r.code != 200 || json.Unmarshal([]byte(r.body), &got) != nil {
		t.Fatalf("/v1/api: %d %s", r.code, r.body)
	}
	want := []apiResponse{
		{"GET", "/version", 0, 10},
		{"GET", "/v1/ready", 0, 15},
		{"GET", "/v1/status", 0, 17},
		{"GET", "/v1/metrics", 0, 15},
		{"GET", "/v1/api", 0, 10},
		{"PUT", "/v1/key/create/", 0, 2},
		{"PUT", "/v1/key/import/", 1000000, 15},
		{"GET", "/v1/key/describe/", 0, 15},
		{"GET", "/v1/key/list/", 0, 15},
		{"DELETE", "/v1/key/delete/", 0, 15},
		{"PUT", "/v1/key/generate/", 1000000, 15},
		{"PUT", "/v1/key/encrypt/", 1000000, 15},
		{"PUT", "/v1/key/decrypt/", 1000000, 15},
		{"PUT", "/v1/key/hmac/", 1000000, 15},
		{"GET", "/v1/policy/describe/", 0, 15},
		{"GET", "/v1/policy/read/", 0, 15},
		{"GET", "/v1/policy/list/", 0, 15},
		{"GET", "/v1/identity/describe/", 0, 15},
		{"GET", "/v1/identity/list/", 0, 15},
		{"GET", "/v1/identity/self/describe", 0, 15},
		{"GET", "/v1/log/error", 0, 0},
		{"GET", "/v1/log/audit", 0, 0},
	}
	if !slices.Equal(got, want) {
		t.Errorf("/v1/api:\n got %v\nwant %v", got, want)
	}
	if !strings.HasPrefix(r.body, `[{"method":"GET","path":"/version","max_body":0,"timeout":10},`) {
		t.Errorf("field names: %s", r.body[:80])
	}
}

// §16 item 44: the §9.1 families, parseable, with the request counts.
func TestMetrics(t *testing.T) {
	e := newEnv(t)
	c := e.client(&e.admin, false)
	e.do(c, "PUT", "/v1/key/create/m", nil)      // 200
	e.do(c, "PUT", "/v1/key/create/m", nil)      // 400
	e.do(c, "GET", "/v1/key/describe/none", nil) // 404
	e.do(c, "GET", "/v1/policy/list/", nil)      // 200
	e.fc.set(func(f *fakeCluster) { f.applyErr = errBoom })
	e.do(c, "PUT", "/v1/key/create/n", nil) // 502
	e.do(c, "GET", "/version", nil)         // not counted
	e.do(c, "GET", "/v1/status", nil)       // not counted
	const counted = 5

	r := e.do(c, "GET", "/v1/metrics", nil)
	if r.code != 200 || !strings.HasPrefix(r.hdr.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("metrics: %d %q", r.code, r.hdr.Get("Content-Type"))
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	sum := func(name string) (n float64) {
		for _, m := range fams[name].GetMetric() {
			n += m.GetCounter().GetValue()
		}
		return n
	}
	for name, typ := range map[string]dto.MetricType{
		"kes_http_request_success":    dto.MetricType_COUNTER,
		"kes_http_request_error":      dto.MetricType_COUNTER,
		"kes_http_request_failure":    dto.MetricType_COUNTER,
		"kes_http_request_active":     dto.MetricType_GAUGE,
		"kes_http_response_time":      dto.MetricType_HISTOGRAM,
		"kes_log_error_events":        dto.MetricType_COUNTER,
		"kes_log_audit_events":        dto.MetricType_COUNTER,
		"kes_system_up_time":          dto.MetricType_GAUGE,
		"kes_system_num_cpu":          dto.MetricType_GAUGE,
		"kes_system_num_cpu_used":     dto.MetricType_GAUGE,
		"kes_system_num_threads":      dto.MetricType_GAUGE,
		"kes_system_mem_heap_used":    dto.MetricType_GAUGE,
		"kes_system_mem_heap_objects": dto.MetricType_GAUGE,
		"kes_system_mem_stack_used":   dto.MetricType_GAUGE,
	} {
		f := fams[name]
		switch {
		case f == nil:
			t.Errorf("%s missing", name)
		case f.GetType() != typ:
			t.Errorf("%s: type %v", name, f.GetType())
		case len(f.GetMetric()) == 0:
			t.Errorf("%s: no sample", name)
		case typ != dto.MetricType_COUNTER && len(f.GetMetric()) != 1:
			t.Errorf("%s: %d samples", name, len(f.GetMetric()))
		case typ == dto.MetricType_GAUGE && name != "kes_http_request_active" && f.GetMetric()[0].GetGauge().GetValue() <= 0:
			t.Errorf("%s: %v", name, f.GetMetric()[0].GetGauge().GetValue())
		}
	}
	if s, er, fa := sum("kes_http_request_success"), sum("kes_http_request_error"), sum("kes_http_request_failure"); s != 2 || er != 2 || fa != 1 {
		t.Errorf("success %v, error %v, failure %v", s, er, fa)
	}
	for _, m := range fams["kes_http_request_error"].GetMetric() {
		if l := m.GetLabel(); len(l) != 1 || l[0].GetName() != "code" {
			t.Errorf("error counter labels %v", l)
		}
	}
	h := fams["kes_http_response_time"].GetMetric()[0].GetHistogram()
	var bounds []float64
	for _, b := range h.GetBucket() {
		if !math.IsInf(b.GetUpperBound(), 1) {
			bounds = append(bounds, b.GetUpperBound())
		}
	}
	if h.GetSampleCount() != counted || !slices.Equal(bounds, []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 3, 5, 10}) {
		t.Errorf("histogram: count %d, buckets %v", h.GetSampleCount(), bounds)
	}
	for _, name := range []string{"kmsd_api_log_audit_dropped_events_total", "kmsd_api_log_error_dropped_events_total"} {
		if fams[name] == nil {
			t.Errorf("%s missing", name)
		}
	}
	// kms-go's Metrics() rejects a family other than the request counters
	// with more than one sample (compat found kmsd_* families that did).
	for name, f := range fams {
		switch name {
		case "kes_http_request_success", "kes_http_request_error", "kes_http_request_failure":
			continue
		}
		if n := len(f.GetMetric()); n != 1 {
			t.Errorf("family %s has %d samples; kms-go needs exactly one", name, n)
		}
	}
}
