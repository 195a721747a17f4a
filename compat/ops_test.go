package compat

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"gopkg.in/yaml.v3"
)

// absentUntilUsed are families that exist only once something happened;
// a fresh node's scrape may lack them although the node registers them.
var absentUntilUsed = map[string]string{
	"kes_http_request_failure": "counted by status code; the family appears with the first 5xx (spec §9.1)",
}

// metricName finds kmsd_/kes_ metric names in PromQL.
var metricName = regexp.MustCompile(`\b(?:kmsd|kes)_[a-zA-Z0-9_]+`)

// opsMetricNames returns every metric name referenced by the Grafana
// dashboard and the alert rules, histogram series suffixes stripped, with
// where each was found.
func opsMetricNames(t *testing.T, root string) map[string][]string {
	t.Helper()
	names := map[string][]string{}
	add := func(where, expr string) {
		for _, m := range metricName.FindAllString(expr, -1) {
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				m = strings.TrimSuffix(m, suf)
			}
			if !slices.Contains(names[m], where) {
				names[m] = append(names[m], where)
			}
		}
	}

	raw, err := os.ReadFile(filepath.Join(root, "ops", "grafana", "kmsd.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("ops/grafana/kmsd.json: %v", err)
	}
	exprs := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			add("dashboard panel "+p.Title, tg.Expr)
			exprs++
		}
	}
	for _, v := range dash.Templating.List {
		b, _ := json.Marshal(v.Query)
		add("dashboard variable "+v.Name, string(b))
	}

	raw, err = os.ReadFile(filepath.Join(root, "ops", "prometheus", "kmsd-alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(raw, &rules); err != nil {
		t.Fatalf("ops/prometheus/kmsd-alerts.yml: %v", err)
	}
	alerts := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || strings.TrimSpace(r.Expr) == "" {
				t.Errorf("alert group %s: a rule without alert name or expr: %+v", g.Name, r)
			}
			add("alert "+r.Alert, r.Expr)
			alerts++
		}
	}
	if exprs < 20 || alerts < 10 {
		t.Fatalf("parsed %d dashboard expressions and %d alerts; the files look truncated", exprs, alerts)
	}
	return names
}

// TestOps starts a real node with short scheduled snapshots, drives some
// traffic and checks the observability surface the ops/ files rely on:
// kms-go still parses /v1/metrics, every metric the dashboard and the
// alert rules name exists, the new histograms have samples, and the
// scheduled snapshots are on disk with valid sidecars.
func TestOps(t *testing.T) {
	t.Parallel()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	names := opsMetricNames(t, root) // fail fast on broken ops files

	n := newNode(t, nodeOptions{Name: "ops"})
	cfg, err := os.ReadFile(n.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg = append(cfg, []byte("snapshot:\n  interval: 2s\n  retention: 2\n")...)
	if err := os.WriteFile(n.cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	n.start(t, nil)
	n.waitServing(t)

	ctx := ctxT(t)
	c := n.client(mustAPIKey(t, adminAPIKey))
	for i := range 5 {
		name := fmt.Sprintf("ops-%d", i)
		if err := c.CreateKey(ctx, name); err != nil {
			t.Fatal(err)
		}
		dek, err := c.GenerateKey(ctx, name, []byte("ctx"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Decrypt(ctx, name, dek.Ciphertext, []byte("ctx")); err != nil {
			t.Fatal(err)
		}
	}
	c.DescribeKey(ctx, "ops-missing") // a 4xx

	// kms-go's parser accepts the whole exposition (one sample per family).
	if _, err := c.Metrics(ctx); err != nil {
		t.Fatalf("kms-go Metrics(): %v", err)
	}

	// Scheduled snapshots: the first is due 2 s after the start.
	snapDir := filepath.Join(n.dataDir, "snapshots")
	ownSnap := regexp.MustCompile(`^kmsd-ops-\d{8}T\d{6}Z-\d+\.snap$`)
	var snaps []string
	waitFor(t, 30*time.Second, "two scheduled snapshots", func() (bool, string) {
		entries, _ := os.ReadDir(snapDir)
		snaps = snaps[:0]
		var all []string
		for _, e := range entries {
			all = append(all, e.Name())
			if ownSnap.MatchString(e.Name()) {
				snaps = append(snaps, e.Name())
			}
		}
		return len(snaps) >= 2, strings.Join(all, " ")
	})

	admin := n.raw("admin", n.probeCert)
	r := admin.do(t, "GET", "/v1/metrics", nil)
	wantStatus(t, r, 200)
	var parser expfmt.TextParser
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(r.Body))
	if err != nil {
		t.Fatalf("parse /v1/metrics: %v", err)
	}
	for name, f := range fams {
		if strings.HasPrefix(name, "kmsd_") && (len(f.Metric) != 1 || len(f.Metric[0].Label) != 0) {
			t.Errorf("%s has %d samples (labels %v); every kmsd_ family must be one unlabelled sample", name, len(f.Metric), f.Metric[0].Label)
		}
	}

	// Every name the ops files use exists.
	var missing []string
	for name, where := range names {
		if _, ok := fams[name]; ok {
			continue
		}
		if why, ok := absentUntilUsed[name]; ok {
			t.Logf("%s not in this scrape: %s", name, why)
			continue
		}
		sort.Strings(where)
		missing = append(missing, fmt.Sprintf("%s (used by %s)", name, strings.Join(where, "; ")))
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("metric not exported by kmsd: %s", m)
	}
	t.Logf("%d metric names referenced by ops/, %d families scraped", len(names), len(fams))

	// The new measurements saw this traffic.
	hist := func(name string) uint64 {
		f, ok := fams[name]
		if !ok || f.GetType() != dto.MetricType_HISTOGRAM {
			t.Errorf("%s: missing or not a histogram", name)
			return 0
		}
		return f.Metric[0].GetHistogram().GetSampleCount()
	}
	value := func(name string) float64 {
		f, ok := fams[name]
		if !ok {
			t.Errorf("%s missing", name)
			return 0
		}
		m := f.Metric[0]
		return m.GetGauge().GetValue() + m.GetCounter().GetValue()
	}
	if got := hist("kmsd_raft_commit_duration_seconds"); got < 5 {
		t.Errorf("kmsd_raft_commit_duration_seconds has %d samples after 5 creates on the leader", got)
	}
	if got := hist("kmsd_fsm_apply_duration_seconds"); got == 0 {
		t.Error("kmsd_fsm_apply_duration_seconds has no samples")
	}
	if got := hist("kmsd_hsm_operation_duration_seconds"); got < 2 {
		t.Errorf("kmsd_hsm_operation_duration_seconds has %d samples; unseal opens the HSM and unwraps", got)
	}
	if got := value("kmsd_hsm_operations_total"); got < 2 {
		t.Errorf("kmsd_hsm_operations_total = %v after unseal", got)
	}
	if got := value("kmsd_hsm_errors_total"); got != 0 {
		t.Errorf("kmsd_hsm_errors_total = %v on a healthy node", got)
	}
	if got := value("kmsd_sealed"); got != 0 {
		t.Errorf("kmsd_sealed = %v on a serving node", got)
	}
	if value("kmsd_snapshot_last_success_timestamp_seconds") < float64(time.Now().Add(-time.Minute).Unix()) ||
		value("kmsd_snapshot_last_size_bytes") <= 0 || value("kmsd_snapshot_interval_seconds") != 2 {
		t.Errorf("snapshot metrics: success %v, size %v, interval %v", value("kmsd_snapshot_last_success_timestamp_seconds"),
			value("kmsd_snapshot_last_size_bytes"), value("kmsd_snapshot_interval_seconds"))
	}

	// The newest snapshot verifies with `kmsd snapshot verify` (sidecar
	// included) and with sha256sum -c; retention keeps two.
	newest := snaps[len(snaps)-1]
	out, err := n.kmsd(n.env(hsmPIN), "snapshot", "verify", filepath.Join(snapDir, newest))
	if err != nil || !bytes.Contains(out, []byte("sidecar")) || !bytes.Contains(out, []byte("OK")) {
		t.Errorf("kmsd snapshot verify %s: %v\n%s", newest, err, out)
	}
	if bin, err := exec.LookPath("sha256sum"); err == nil {
		cmd := exec.Command(bin, "-c", newest+".sha256")
		cmd.Dir = snapDir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("sha256sum -c %s.sha256: %v\n%s", newest, err, out)
		}
	}
	waitFor(t, 30*time.Second, "retention to keep 2 snapshots", func() (bool, string) {
		entries, _ := os.ReadDir(snapDir)
		count := 0
		for _, e := range entries {
			if ownSnap.MatchString(e.Name()) {
				count++
			}
		}
		return count <= 2, fmt.Sprint(count, " snapshots")
	})

	// The alert rules pass their own unit tests, where promtool exists.
	if promtool, err := exec.LookPath("promtool"); err == nil {
		for _, args := range [][]string{{"check", "rules", "kmsd-alerts.yml"}, {"test", "rules", "kmsd-alerts_test.yml"}} {
			cmd := exec.Command(promtool, args...)
			cmd.Dir = filepath.Join(root, "ops", "prometheus")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
	} else if os.Getenv("KMSD_REQUIRE_PROMTOOL") != "" {
		t.Errorf("KMSD_REQUIRE_PROMTOOL is set but promtool is not installed (Debian: apt-get install prometheus): %v", err)
	} else {
		t.Log("promtool not installed: the alert rules' unit tests (ops/prometheus/kmsd-alerts_test.yml) did not run")
	}
	n.stop(t, syscall.SIGTERM)
}
