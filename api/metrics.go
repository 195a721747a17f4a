package api

import (
	"math"
	"net/http"
	"runtime"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the KES metrics of spec §9.1 (names and types exactly),
// plus kmsd_api_* extras.
type metrics struct {
	success, errors, failure *prometheus.CounterVec
	active                   prometheus.Gauge
	latency                  prometheus.Histogram
	auditEvents, errorEvents prometheus.Counter
	handler                  http.Handler
}

func newMetrics(reg *prometheus.Registry, s *Server) (*metrics, error) {
	m := &metrics{
		success: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kes_http_request_success", Help: "Number of requests answered with a 2xx status.",
		}, []string{"code"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kes_http_request_error", Help: "Number of requests answered with a 4xx status.",
		}, []string{"code"}),
		failure: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kes_http_request_failure", Help: "Number of requests answered with a 5xx status.",
		}, []string{"code"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kes_http_request_active", Help: "Number of requests being served.",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kes_http_response_time",
			Help:    "Response time of requests in seconds.",
			Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 3, 5, 10},
		}),
		auditEvents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kes_log_audit_events", Help: "Number of audit events written to /v1/log/audit subscribers.",
		}),
		errorEvents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kes_log_error_events", Help: "Number of error events written to /v1/log/error subscribers.",
		}),
	}
	// One family per stream, without labels: kms-go's Metrics() rejects
	// any family other than the request counters with more than one sample.
	dropped := func(stream string, b *broadcaster) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kmsd_api_log_" + stream + "_dropped_events_total",
			Help: "Events not delivered to a " + stream + " stream subscriber that fell behind.",
		}, func() float64 { return float64(b.dropped.Load()) })
	}
	for _, c := range []prometheus.Collector{
		m.success, m.errors, m.failure, m.active, m.latency, m.auditEvents, m.errorEvents,
		systemCollector{started: s.started},
		dropped("audit", s.audit), dropped("error", s.errors),
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m.handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
	return m, nil
}

// observe counts and times one finished key, policy or identity request.
func (m *metrics) observe(code int, elapsed time.Duration) {
	label := strconv.Itoa(code)
	switch {
	case code >= 200 && code < 300:
		m.success.WithLabelValues(label).Inc()
	case code >= 400 && code < 500:
		m.errors.WithLabelValues(label).Inc()
	case code >= 500:
		m.failure.WithLabelValues(label).Inc()
	}
	m.latency.Observe(elapsed.Seconds())
}

// systemCollector reports the kes_system_* gauges, reading the runtime
// once per scrape. Each is a single unlabelled sample, as kms-go requires.
type systemCollector struct{ started time.Time }

var (
	descUpTime      = prometheus.NewDesc("kes_system_up_time", "Time since the server started, in seconds.", nil, nil)
	descNumCPU      = prometheus.NewDesc("kes_system_num_cpu", "Number of logical CPUs.", nil, nil)
	descNumCPUUsed  = prometheus.NewDesc("kes_system_num_cpu_used", "Number of CPUs the server may use (GOMAXPROCS).", nil, nil)
	descNumThreads  = prometheus.NewDesc("kes_system_num_threads", "Number of goroutines.", nil, nil)
	descHeapUsed    = prometheus.NewDesc("kes_system_mem_heap_used", "Bytes of allocated heap objects.", nil, nil)
	descHeapObjects = prometheus.NewDesc("kes_system_mem_heap_objects", "Number of allocated heap objects.", nil, nil)
	descStackUsed   = prometheus.NewDesc("kes_system_mem_stack_used", "Bytes of stack memory obtained from the OS.", nil, nil)
)

func (systemCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUpTime, descNumCPU, descNumCPUUsed, descNumThreads, descHeapUsed, descHeapObjects, descStackUsed} {
		ch <- d
	}
}

func (c systemCollector) Collect(ch chan<- prometheus.Metric) {
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)
	upTime := math.Round(time.Since(c.started).Seconds()*100) / 100 // 10 ms resolution
	for _, v := range []struct {
		d *prometheus.Desc
		v float64
	}{
		{descUpTime, upTime},
		{descNumCPU, float64(runtime.NumCPU())},
		{descNumCPUUsed, float64(runtime.GOMAXPROCS(0))},
		{descNumThreads, float64(runtime.NumGoroutine())},
		{descHeapUsed, float64(mem.HeapAlloc)},
		{descHeapObjects, float64(mem.HeapObjects)},
		{descStackUsed, float64(mem.StackSys)},
	} {
		ch <- prometheus.MustNewConstMetric(v.d, prometheus.GaugeValue, v.v)
	}
}
