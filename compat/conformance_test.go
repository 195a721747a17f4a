package compat

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/minio/kms-go/kes"
)

// suite is the shared single node used by every read-mostly §16 subtest.
// Subtests run sequentially (metrics deltas depend on it) and use distinct
// key-name prefixes so that they do not interfere.
type suite struct {
	n *node

	adminKey, appKey, minioKey, emptyKey, unknownKey kes.APIKey
	admin, app, minio, empty, unknown                *kes.Client

	rawAdmin, rawAdminH1, rawApp, rawUnknown, rawNoCert *rawClient
}

// Policies of the shared node. my-app is the example from the brief, plus an
// exact (star-less) rule; minio is the policy MinIO's docs recommend (plus
// describe/encrypt/hmac/api); zz-empty has no rules at all.
var appPolicy = policyConf{
	Allow: []string{
		"/v1/key/create/my-app*",
		"/v1/key/generate/my-app*",
		"/v1/key/decrypt/my-app*",
		"/v1/status",
		"/v1/key/describe/my-app-exact",
	},
	Deny: []string{"/v1/key/decrypt/my-app-internal*"},
}

var minioPolicy = policyConf{
	Allow: []string{
		"/v1/key/create/minio-*",
		"/v1/key/generate/minio-*",
		"/v1/key/decrypt/minio-*",
		"/v1/key/encrypt/minio-*",
		"/v1/key/describe/minio-*",
		"/v1/key/list/minio-*",
		"/v1/key/hmac/minio-*",
		"/v1/status",
		"/v1/api",
		"/v1/metrics",
		"/v1/log/audit",
		"/v1/log/error",
	},
}

func newSuite(t *testing.T) *suite {
	s := &suite{
		adminKey:   mustAPIKey(t, adminAPIKey),
		appKey:     mustAPIKey(t, appAPIKey),
		minioKey:   newAPIKey(t),
		emptyKey:   newAPIKey(t),
		unknownKey: newAPIKey(t),
	}
	app := appPolicy
	app.Identities = []string{appIdentity}
	mn := minioPolicy
	mn.Identities = []string{s.minioKey.Identity().String()}
	s.n = newNode(t, nodeOptions{
		Name: "conformance",
		Policies: map[string]policyConf{
			"my-app":   app,
			"minio":    mn,
			"zz-empty": {Identities: []string{s.emptyKey.Identity().String()}},
		},
	})
	s.n.start(t, nil)
	s.n.waitServing(t)

	s.admin = s.n.client(s.adminKey)
	s.app = s.n.client(s.appKey)
	s.minio = s.n.client(s.minioKey)
	s.empty = s.n.client(s.emptyKey)
	s.unknown = s.n.client(s.unknownKey)
	s.rawAdmin = s.n.raw("admin", apiKeyCert(t, s.adminKey))
	s.rawAdminH1 = s.n.rawH1("admin-h1", apiKeyCert(t, s.adminKey))
	s.rawApp = s.n.raw("app", apiKeyCert(t, s.appKey))
	s.rawUnknown = s.n.raw("unknown", apiKeyCert(t, s.unknownKey))
	s.rawNoCert = s.n.raw("no-cert")
	return s
}

// TestConformance runs spec/kes-api.md §16 items 1-47 (those observable on a
// single node with default TLS settings) plus the MinIO flow (item 51).
// Items 3, 4 and 41 live in TestTLSAuthOn, TestSkipAuth and TestSealedNode,
// item 32 in TestCluster/Item32Replication.
func TestConformance(t *testing.T) {
	t.Parallel()
	s := newSuite(t)
	start := time.Now()
	tests := []struct {
		name string
		f    func(*testing.T, *suite)
	}{
		{"item01_https_h1_h2", item01},
		{"item02_client_cert_required", item02},
		{"item05_methods", item05},
		{"item06_list_without_slash", item06},
		{"item07_unknown_paths_404", item07},
		{"item08_percent_decoding", item08},
		{"item09_body_limits", item09},
		{"item10_encodings", item10},
		{"item11_names", item11},
		{"item12_patterns", item12},
		{"item13_authz_before_validation", item13},
		{"item14_identity_from_leaf", item14},
		{"item15_api_key_identity_vector", item15},
		{"item16_admin_all_routes", item16},
		{"item17_unknown_identity_403", item17},
		{"item18_policy_semantics", item18},
		{"item19_version_and_self_describe_open", item19},
		{"item20_status_ready_metrics_api_logs_need_policy", item20},
		{"item21_create", item21},
		{"item22_import", item22},
		{"item23_describe", item23},
		{"item24_delete", item24},
		{"item25_list", item25},
		{"item26_generate", item26},
		{"item27_encrypt", item27},
		{"item28_decrypt", item28},
		{"item29_legacy_vectors", item29},
		{"item30_reference_crypto", item30},
		{"item31_hmac", item31},
		{"item33_version_fields_ignored", item33},
		{"item34_policy_describe_read", item34},
		{"item35_policy_list", item35},
		{"item36_identity_describe", item36},
		{"item37_identity_list", item37},
		{"item38_self_describe", item38},
		{"item39_version", item39},
		{"item40_status", item40},
		{"item42_ready", item42},
		{"item43_api_list", item43},
		{"item44_metrics", item44},
		{"item45_audit_stream", item45},
		{"item46_error_stream", item46},
		{"item47_error_sentinels", item47},
		{"item51_minio_flow", item51},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.f(t, s) })
	}
	t.Logf("conformance subtests took %v", time.Since(start).Round(time.Millisecond))
}

// ---------------------------------------------------------------------------
// Transport and routing

func item01(t *testing.T, s *suite) {
	r := s.rawAdmin.do(t, "GET", "/version", nil)
	wantStatus(t, r, 200)
	if r.Proto != "HTTP/2.0" || r.TLS == nil || r.TLS.NegotiatedProtocol != "h2" {
		t.Errorf("HTTP/2 client: proto %q ALPN %q, want HTTP/2.0 via h2", r.Proto, alpn(r))
	}
	r = s.rawAdminH1.do(t, "GET", "/version", nil)
	wantStatus(t, r, 200)
	if r.Proto != "HTTP/1.1" || r.TLS == nil || r.TLS.NegotiatedProtocol != "http/1.1" {
		t.Errorf("HTTP/1.1 client: proto %q ALPN %q, want HTTP/1.1 via http/1.1", r.Proto, alpn(r))
	}
	for _, c := range []*rawClient{s.rawAdmin, s.rawAdminH1} {
		r := c.do(t, "POST", "/v1/key/generate/"+presetKey, []byte(`{}`))
		wantStatus(t, r, 200)
	}
	if _, err := s.admin.Version(ctxT(t)); err != nil {
		t.Errorf("kes Version: %v", err)
	}

	// TLS 1.2 is accepted, TLS 1.1 is not.
	cert := apiKeyCert(t, s.adminKey)
	for _, tc := range []struct {
		min, max uint16
		ok       bool
	}{{tls.VersionTLS12, tls.VersionTLS12, true}, {tls.VersionTLS13, tls.VersionTLS13, true}, {tls.VersionTLS10, tls.VersionTLS11, false}} {
		hc := &http.Client{Timeout: requestTimeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			MinVersion: tc.min, MaxVersion: tc.max, Certificates: []tls.Certificate{cert}, RootCAs: getPKI(t).pool,
		}}}
		resp, err := hc.Get(s.n.url("/version"))
		if err == nil {
			resp.Body.Close()
		}
		if tc.ok && (err != nil || resp.StatusCode != 200) {
			t.Errorf("TLS %x: %v", tc.max, err)
		}
		if !tc.ok && err == nil {
			t.Errorf("TLS <= 1.1 accepted (status %d); minimum must be TLS 1.2", resp.StatusCode)
		}
		hc.CloseIdleConnections()
	}

	// Plain HTTP is not served.
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get("http://" + s.n.addr + "/version")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Errorf("plain HTTP GET /version answered 200")
		}
	}
}

// tlsNoCertProbe connects without a client certificate, completes the
// handshake and reads; it returns the first error.
func tlsNoCertProbe(addr string, version uint16) error {
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{
		MinVersion: version, MaxVersion: version, RootCAs: thePKI.pool, NextProtos: []string{"http/1.1"},
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("GET /version HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		return err
	}
	_, err = conn.Read(make([]byte, 1))
	return err
}

func alpn(r *rawResp) string {
	if r.TLS == nil {
		return "<no TLS>"
	}
	return r.TLS.NegotiatedProtocol
}

func item02(t *testing.T, s *suite) {
	for _, p := range []string{"/version", "/v1/status", "/v1/identity/self/describe"} {
		if r, err := s.rawNoCert.try("GET", p, nil); err == nil {
			t.Errorf("GET %s without a client certificate: got %d %q, want a TLS handshake failure", p, r.Status, trunc(r.Body))
		}
	}
	// At the TLS layer: the handshake (or, with TLS 1.3, the first read) fails
	// with a TLS alert.
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		err := tlsNoCertProbe(s.n.addr, v)
		if err == nil {
			t.Errorf("TLS %x handshake without a client certificate succeeded", v)
		} else if !strings.Contains(err.Error(), "tls:") {
			t.Errorf("TLS %x without a client certificate: %v, want a TLS alert", v, err)
		} else {
			t.Logf("TLS %x without a client certificate: %v", v, err)
		}
	}
	// A self-signed Ed25519 API-key certificate (no chain) is accepted.
	info, _, err := s.admin.DescribeSelf(ctxT(t))
	if err != nil {
		t.Fatalf("DescribeSelf with a self-signed API-key certificate: %v", err)
	}
	if !info.IsAdmin {
		t.Errorf("admin API key not admin: %+v", info)
	}
}

func item05(t *testing.T, s *suite) {
	// POST on every PUT route.
	secret := base64.StdEncoding.EncodeToString(randBytes(32))
	wantEmpty200(t, s.rawAdmin.do(t, "POST", "/v1/key/create/m05-post", nil))
	wantEmpty200(t, s.rawAdmin.do(t, "PUT", "/v1/key/create/m05-put", nil))
	wantEmpty200(t, s.rawAdmin.do(t, "POST", "/v1/key/import/m05-imp-post", []byte(`{"key":"`+secret+`","cipher":"AES256"}`)))
	wantEmpty200(t, s.rawAdmin.do(t, "PUT", "/v1/key/import/m05-imp-put", []byte(`{"key":"`+secret+`","cipher":"AES256"}`)))
	for _, m := range []string{"POST", "PUT"} {
		r := s.rawAdmin.do(t, m, "/v1/key/generate/m05-post", []byte(`{}`))
		wantStatus(t, r, 200)
		var dek struct{ Plaintext, Ciphertext []byte }
		json.Unmarshal(r.Body, &dek)
		r = s.rawAdmin.do(t, m, "/v1/key/encrypt/m05-post", []byte(`{"plaintext":"aGVsbG8="}`))
		wantStatus(t, r, 200)
		r = s.rawAdmin.do(t, m, "/v1/key/decrypt/m05-post", mustJSON(map[string][]byte{"ciphertext": dek.Ciphertext}))
		wantStatus(t, r, 200)
		r = s.rawAdmin.do(t, m, "/v1/key/hmac/m05-post", []byte(`{"message":"aGVsbG8="}`))
		wantStatus(t, r, 200)
	}

	// Any other mismatch: 405 {"message":"received method 'X' expected 'Y'"}.
	for _, tc := range []struct{ method, path, want string }{
		{"GET", "/v1/key/create/m05-x", "PUT"},
		{"DELETE", "/v1/key/generate/m05-x", "PUT"},
		{"GET", "/v1/key/hmac/m05-x", "PUT"},
		{"POST", "/v1/key/describe/m05-x", "GET"},
		{"PUT", "/v1/key/delete/m05-x", "DELETE"},
		{"POST", "/v1/key/delete/m05-x", "DELETE"},
		{"POST", "/v1/status", "GET"},
		{"PUT", "/version", "GET"},
		{"DELETE", "/v1/policy/list/", "GET"},
		{"PATCH", "/v1/key/list/", "GET"},
		{"POST", "/v1/log/audit", "GET"},
	} {
		r := s.rawAdmin.do(t, tc.method, tc.path, nil)
		wantError(t, r, 405, fmt.Sprintf("received method '%s' expected '%s'", tc.method, tc.want))
		if r.Status == 405 && r.Header.Get("Accept") != tc.want && !strings.Contains(r.Header.Get("Allow"), tc.want) {
			t.Errorf("%s: neither Accept nor Allow names %s (Accept %q, Allow %q)", r.Req, tc.want, r.Header.Get("Accept"), r.Header.Get("Allow"))
		}
	}
	// HEAD is not supported.
	r := s.rawAdmin.do(t, "HEAD", "/version", nil)
	wantStatus(t, r, 405)
	r = s.rawAdmin.do(t, "HEAD", "/v1/key/describe/"+presetKey, nil)
	wantStatus(t, r, 405)
}

func item06(t *testing.T, s *suite) {
	follow := newHTTPClient([]tls.Certificate{apiKeyCert(t, s.adminKey)}, true, true)
	defer follow.CloseIdleConnections()
	rf := &rawClient{t: t, n: s.n, hc: follow, name: "admin-follow"}
	for _, tc := range []struct{ path, field, want string }{
		{"/v1/key/list", "names", presetKey},
		{"/v1/policy/list", "names", "my-app"},
		{"/v1/identity/list", "identities", adminIdentity},
	} {
		r := s.rawAdmin.do(t, "GET", tc.path, nil)
		switch r.Status {
		case 200:
		case 307, 308:
			if loc := r.Header.Get("Location"); loc != tc.path+"/" && !strings.HasSuffix(loc, "://"+s.n.addr+tc.path+"/") {
				t.Errorf("GET %s: redirect to %q, want %s/", tc.path, loc, tc.path)
			}
		default:
			t.Errorf("GET %s: status %d, want 200 or 307/308 (body %q)", tc.path, r.Status, trunc(r.Body))
		}
		r = rf.do(t, "GET", tc.path, nil)
		wantStatus(t, r, 200)
		var v map[string]any
		if err := json.Unmarshal(r.Body, &v); err != nil {
			t.Errorf("GET %s (followed): %v body %q", tc.path, err, trunc(r.Body))
			continue
		}
		if !jsonListContains(v[tc.field], tc.want) {
			t.Errorf("GET %s (followed): %s does not list %q: %q", tc.path, tc.field, tc.want, trunc(r.Body))
		}
	}
	names, _, err := s.admin.ListKeys(ctxT(t), "", 0)
	if err != nil || !slices.Contains(names, presetKey) {
		t.Errorf("kes ListKeys(\"\"): %v %v", names, err)
	}
	pols, _, err := s.admin.ListPolicies(ctxT(t), "", 0)
	if err != nil || !slices.Contains(pols, "my-app") {
		t.Errorf("kes ListPolicies(\"\"): %v %v", pols, err)
	}
	ids, _, err := s.admin.ListIdentities(ctxT(t), "", 0)
	if err != nil || !slices.Contains(ids, kes.Identity(adminIdentity)) {
		t.Errorf("kes ListIdentities(\"\"): %v %v", ids, err)
	}
}

func jsonListContains(v any, want string) bool {
	l, _ := v.([]any)
	for _, e := range l {
		if e == want {
			return true
		}
	}
	return false
}

func item07(t *testing.T, s *suite) {
	for _, tc := range []struct{ method, path string }{
		{"GET", "/"},
		{"GET", "/v1"},
		{"GET", "/v1/"},
		{"GET", "/v1/nonexistent"},
		{"GET", "/v1/identity/self/describe/"},
		{"POST", "/v1/key/bulk/decrypt/" + presetKey},
		{"POST", "/v1/enclave/create/e"},
		{"POST", "/v1/secret/create/s"},
		{"POST", "/v1/policy/write/p"},
		{"POST", "/v1/identity/assign/p/i"},
		{"POST", "/v1/sys/seal"},
		{"GET", "/v1/sys/health"},
		{"GET", "/v1/log/audit/trace"},
		{"GET", "/v1/statusx"},
		{"GET", "/v2/status"},
	} {
		r := s.rawAdmin.do(t, tc.method, tc.path, nil)
		if r.Status != 404 || string(r.Body) != "404 page not found\n" || r.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Errorf("%s: got %d %q %q, want 404 \"text/plain; charset=utf-8\" %q", r.Req, r.Status, r.Header.Get("Content-Type"), trunc(r.Body), "404 page not found\n")
		}
	}
}

func item08(t *testing.T, s *suite) {
	ctx := ctxT(t)
	r := s.rawAdmin.do(t, "GET", "/v1/key/describe/a%2Fb", nil)
	wantError(t, r, 400, "key name 'a/b' is empty, too long or contains invalid characters")

	for _, k := range []string{"m08-a", "m08-b", "m09-c"} {
		if err := s.admin.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	r = s.rawAdmin.do(t, "GET", "/v1/key/list/m08%2A", nil)
	wantStatus(t, r, 200)
	var l struct{ Names []string }
	json.Unmarshal(r.Body, &l)
	if !slices.Equal(l.Names, []string{"m08-a", "m08-b"}) {
		t.Errorf("GET /v1/key/list/m08%%2A: names %q, want [m08-a m08-b] (body %q)", l.Names, trunc(r.Body))
	}
	// %2D decodes to '-': policy allow /v1/key/create/my-app* must match the decoded path.
	r = s.rawApp.do(t, "POST", "/v1/key/create/my%2Dapp-m08-enc", nil)
	wantEmpty200(t, r)
	if _, err := s.admin.DescribeKey(ctx, "my-app-m08-enc"); err != nil {
		t.Errorf("key created via %%2D path not found as my-app-m08-enc: %v", err)
	}
	// The deny rule /v1/key/decrypt/my-app-internal* must match the decoded path (%69 = 'i').
	r = s.rawApp.do(t, "POST", "/v1/key/decrypt/my-app-%69nternal-m08", []byte(`{"ciphertext":"AAAA"}`))
	wantError(t, r, 403, "not authorized: insufficient permissions")
}

func item09(t *testing.T, s *suite) {
	ctx := ctxT(t)
	// Between 1,000,000 (mem.MB) and 1,048,576 (MiB) bytes: must fail.
	const over = 1_020_000
	body := func(field string, size int, extra string) []byte {
		head := `{` + extra + `"` + field + `":"`
		n := size - len(head) - 2
		n -= n % 4
		return []byte(head + strings.Repeat("A", n) + `"}`)
	}
	for _, tc := range []struct{ path, field, extra string }{
		{"/v1/key/import/m09-big", "key", `"cipher":"AES256",`},
		{"/v1/key/generate/" + presetKey, "context", ""},
		{"/v1/key/encrypt/" + presetKey, "plaintext", ""},
		{"/v1/key/decrypt/" + presetKey, "ciphertext", ""},
		{"/v1/key/hmac/" + presetKey, "message", ""},
	} {
		b := body(tc.field, over, tc.extra)
		r, err := s.rawAdmin.try("POST", tc.path, b)
		if err != nil {
			t.Errorf("POST %s with a %d-byte body: transport error %v, want a 400 response", tc.path, len(b), err)
			continue
		}
		if r.Status != 400 {
			t.Errorf("POST %s with a %d-byte body: status %d %q, want 400 (limit is 1,000,000 bytes)", tc.path, len(b), r.Status, trunc(r.Body))
		} else if strings.HasPrefix(tc.path, "/v1/key/import/") {
			wantError(t, r, 400, "invalid import key request body")
		} else {
			wantError(t, r, 400, "invalid request body")
		}
	}
	// Exactly 1,000,000 bytes is still allowed.
	b := body("plaintext", 1_000_000, "")
	for len(b) < 1_000_000 { // pad with whitespace (valid JSON) to hit the limit exactly
		b = append(b[:len(b)-1], ' ', '}')
	}
	r, err := s.rawAdmin.try("POST", "/v1/key/encrypt/"+presetKey, b)
	if err != nil || r.Status != 200 {
		t.Errorf("encrypt with a body of exactly %d bytes: %v %v, want 200", len(b), err, r)
	}

	// A 700 KB plaintext works through the official client.
	pt := randBytes(700_000)
	ct, err := s.admin.Encrypt(ctx, presetKey, pt, nil)
	if err != nil {
		t.Fatalf("Encrypt 700 KB: %v", err)
	}
	got, err := s.admin.Decrypt(ctx, presetKey, ct, nil)
	if err != nil || string(got) != string(pt) {
		t.Errorf("Decrypt 700 KB: %v", err)
	}
}

func item10(t *testing.T, s *suite) {
	r := s.rawAdmin.do(t, "POST", "/v1/key/generate/"+presetKey, []byte(`{"context":"aGVsbG8=","bogus":1,"nested":{"x":[1,2,{}]}}`))
	wantStatus(t, r, 200)
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("generate: Content-Type %q, want application/json", ct)
	}
	var v map[string]string
	if err := json.Unmarshal(r.Body, &v); err != nil {
		t.Fatalf("generate body %q: %v", r.Body, err)
	}
	if p := v["plaintext"]; len(p) != 44 || !strings.HasSuffix(p, "=") {
		t.Errorf("plaintext %q: want 44 chars of padded standard base64", p)
	}
	if c := v["ciphertext"]; len(c) != 104 || !strings.HasSuffix(c, "==") {
		t.Errorf("ciphertext %q: want 104 chars of padded standard base64", c)
	}
	for k, val := range v {
		if _, err := base64.StdEncoding.DecodeString(val); err != nil {
			t.Errorf("%s %q is not standard base64: %v", k, val, err)
		}
	}
	// Content-Type is not checked on requests.
	for _, ct := range []string{"text/plain", "application/octet-stream", "application/x-www-form-urlencoded"} {
		r := s.rawAdmin.do(t, "POST", "/v1/key/generate/"+presetKey, []byte(`{"context":"aGk="}`), "Content-Type", ct)
		wantStatus(t, r, 200)
	}
	// Unknown fields are ignored on every body-carrying route.
	wantEmpty200(t, s.rawAdmin.do(t, "POST", "/v1/key/import/m10-imp", []byte(`{"key":"`+base64.StdEncoding.EncodeToString(randBytes(32))+`","cipher":"AES256","bytes":"x","created_by":"me"}`)))
	r = s.rawAdmin.do(t, "POST", "/v1/key/encrypt/"+presetKey, []byte(`{"plaintext":"aGVsbG8=","foo":"bar"}`))
	wantStatus(t, r, 200)
	var enc struct{ Ciphertext []byte }
	json.Unmarshal(r.Body, &enc)
	r = s.rawAdmin.do(t, "POST", "/v1/key/decrypt/"+presetKey, mustJSON(map[string]any{"ciphertext": enc.Ciphertext, "foo": []int{1}}))
	wantStatus(t, r, 200)
	r = s.rawAdmin.do(t, "PUT", "/v1/key/hmac/"+presetKey, []byte(`{"message":"aGVsbG8=","foo":null}`))
	wantStatus(t, r, 200)
	// Error responses: application/json {"message": ...} with an explicit length.
	r = s.rawAdmin.do(t, "GET", "/v1/key/describe/m10-missing", nil)
	wantError(t, r, 404, "key does not exist")
	if r.Header.Get("Content-Length") == "" {
		t.Logf("NOTE error response without Content-Length header (KES sends one)")
	}
	t.Logf("error body bytes on the wire: %q (Content-Type %q)", r.Body, r.Header.Get("Content-Type"))
}

var (
	validNames   = []string{"my-key", "abc123", "0", "123ABC321", "_-___---_", "_0", "0-Z", "my_key-0", strings.Repeat("a", 80)}
	invalidNames = []string{"", "my.key", "key/", "☰", "hel<lo", "Εmacs", strings.Repeat("a", 81), "-abc", "abc-", "_", "a b", "a*"}
)

func item11(t *testing.T, s *suite) {
	ctx := ctxT(t)
	for _, name := range validNames {
		if err := s.admin.CreateKey(ctx, name); err != nil {
			t.Errorf("CreateKey(%q): %v", name, err)
		}
		if _, err := s.admin.DescribePolicy(ctx, name); !errors.Is(err, kes.ErrPolicyNotFound) {
			t.Errorf("DescribePolicy(%q): %v (%s), want ErrPolicyNotFound", name, err, describeErr(err))
		}
		if _, err := s.admin.DescribeIdentity(ctx, kes.Identity(name)); !errors.Is(err, kes.ErrIdentityNotFound) {
			t.Errorf("DescribeIdentity(%q): %v (%s), want ErrIdentityNotFound", name, err, describeErr(err))
		}
	}
	for _, name := range invalidNames {
		esc := url.PathEscape(name)
		keyMsg := fmt.Sprintf("key name '%s' is empty, too long or contains invalid characters", name)
		wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/create/"+esc, nil), 400, keyMsg)
		wantError(t, s.rawAdmin.do(t, "GET", "/v1/key/describe/"+esc, nil), 400, keyMsg)
		wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/generate/"+esc, []byte(`{}`)), 400, keyMsg)
		wantError(t, s.rawAdmin.do(t, "DELETE", "/v1/key/delete/"+esc, nil), 400, keyMsg)
		polMsg := fmt.Sprintf("policy name '%s' is empty, too long or contains invalid characters", name)
		wantError(t, s.rawAdmin.do(t, "GET", "/v1/policy/describe/"+esc, nil), 400, polMsg)
		wantError(t, s.rawAdmin.do(t, "GET", "/v1/policy/read/"+esc, nil), 400, polMsg)
		idMsg := fmt.Sprintf("identity '%s' is empty, too long or contains invalid characters", name)
		wantError(t, s.rawAdmin.do(t, "GET", "/v1/identity/describe/"+esc, nil), 400, idMsg)
		// Through the official client: an error that is not "not found".
		if name != "" {
			if err := s.admin.CreateKey(ctx, name); err == nil || errors.Is(err, kes.ErrKeyNotFound) {
				t.Errorf("kes CreateKey(%q): %v, want a 400", name, err)
			}
			if _, err := s.admin.DescribePolicy(ctx, name); err == nil || errors.Is(err, kes.ErrPolicyNotFound) {
				t.Errorf("kes DescribePolicy(%q): %v, want a 400", name, err)
			}
		}
	}
	for _, m := range []string{"/v1/key/encrypt/", "/v1/key/decrypt/", "/v1/key/hmac/", "/v1/key/import/"} {
		wantError(t, s.rawAdmin.do(t, "POST", m+"my.key", []byte(`{}`)), 400, "key name 'my.key' is empty, too long or contains invalid characters")
	}
}

func item12(t *testing.T, s *suite) {
	for _, base := range []string{"/v1/key/list/", "/v1/policy/list/", "/v1/identity/list/"} {
		for _, p := range []string{"", "*", "%2A", "my*", "my%2A", "_-*", "_-%2A", "m"} {
			r := s.rawAdmin.do(t, "GET", base+p, nil)
			wantStatus(t, r, 200)
		}
		for _, p := range []string{"*-*", "%2A-%2A", "a*b", "**", "my.key", "a%2Fb"} {
			r := s.rawAdmin.do(t, "GET", base+p, nil)
			wantError(t, r, 400, "")
		}
	}
	all, _, err := s.admin.ListKeys(ctxT(t), "", 0)
	star, _, err2 := s.admin.ListKeys(ctxT(t), "*", 0)
	if err != nil || err2 != nil || !slices.Equal(all, star) || len(all) == 0 {
		t.Errorf("ListKeys(\"\") = %d names (%v), ListKeys(\"*\") = %d names (%v); want the same non-empty list", len(all), err, len(star), err2)
	}
	if _, _, err := s.admin.ListKeys(ctxT(t), "*-*", 0); err == nil {
		t.Errorf("ListKeys(\"*-*\") succeeded, want 400")
	}
}

func item13(t *testing.T, s *suite) {
	const forbidden = "not authorized: insufficient permissions"
	for _, tc := range []struct{ method, path string }{
		{"POST", "/v1/key/create/my.key"},
		{"GET", "/v1/key/describe/my.key"},
		{"GET", "/v1/key/list/*-*"},
		{"GET", "/v1/policy/describe/my.policy"},
		{"GET", "/v1/identity/describe/bad.id"},
	} {
		wantError(t, s.rawUnknown.do(t, tc.method, tc.path, nil), 403, forbidden)
	}
	// app may not describe arbitrary keys: 403, not 400.
	wantError(t, s.rawApp.do(t, "GET", "/v1/key/describe/my.key", nil), 403, forbidden)
	// app may create my-app*: authorization passes, then the name is invalid: 400.
	wantError(t, s.rawApp.do(t, "POST", "/v1/key/create/my-app.x", nil), 400, "key name 'my-app.x' is empty, too long or contains invalid characters")
}

func item14(t *testing.T, s *suite) {
	p := getPKI(t)
	leaf := p.issueLeaf(t, s.appKey.Public(), "some subject that does not matter")
	if got := certIdentity(t, leaf); got != appIdentity {
		t.Fatalf("test bug: leaf identity %s", got)
	}
	// leaf + CA certificate: the CA certificate is ignored.
	chain := tls.Certificate{Certificate: [][]byte{leaf, p.caDER}, PrivateKey: s.appKey.Private()}
	rc := s.n.raw("app-chain", chain)
	r := rc.do(t, "GET", "/v1/identity/self/describe", nil)
	wantStatus(t, r, 200)
	var v map[string]any
	json.Unmarshal(r.Body, &v)
	if v["identity"] != appIdentity {
		t.Errorf("self/describe with [leaf, CA]: identity %v, want %s (body %q)", v["identity"], appIdentity, trunc(r.Body))
	}
	info, _, err := s.n.clientWithCert(chain).DescribeSelf(ctxT(t))
	if err != nil || info.Identity != appIdentity || info.Policy != "my-app" {
		t.Errorf("kes DescribeSelf with a CA-signed leaf for the app key: %+v %v", info, err)
	}
	// Two leaf certificates: 400.
	other := p.issueLeaf(t, s.unknownKey.Public(), "other")
	two := tls.Certificate{Certificate: [][]byte{leaf, other}, PrivateKey: s.appKey.Private()}
	rc2 := s.n.raw("two-leafs", two)
	for _, path := range []string{"/v1/identity/self/describe", "/v1/status"} {
		r, err := rc2.try("GET", path, nil)
		if err != nil {
			t.Errorf("GET %s with two leaf certificates: %v, want 400", path, err)
			continue
		}
		wantError(t, r, 400, "tls: received more than one client certificate")
	}
	// Only a CA certificate: no identity, 400.
	caOnly := tls.Certificate{Certificate: [][]byte{p.caDER}, PrivateKey: p.caKey}
	rc3 := s.n.raw("ca-only", caOnly)
	r, err = rc3.try("GET", "/v1/identity/self/describe", nil)
	if err != nil {
		t.Errorf("GET self/describe presenting only a CA certificate: %v, want 400", err)
	} else {
		wantError(t, r, 400, "tls: client certificate is required")
	}
}

func item15(t *testing.T, s *suite) {
	info, _, err := s.admin.DescribeSelf(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if info.Identity != adminIdentity || !info.IsAdmin {
		t.Errorf("DescribeSelf for %s: %+v, want identity %s admin", adminAPIKey, info, adminIdentity)
	}
}

// route is one row of the §2.1 route table.
type route struct {
	method, pattern string
	maxBody         int64
	timeout         int64
	arg             string // resource appended to subtree patterns
	body            string
}

func routeTable() []route {
	const mb = 1_000_000
	return []route{
		{"GET", "/version", 0, 10, "", ""},
		{"GET", "/v1/ready", 0, 15, "", ""},
		{"GET", "/v1/status", 0, 15, "", ""},
		{"GET", "/v1/metrics", 0, 15, "", ""},
		{"GET", "/v1/api", 0, 10, "", ""},
		{"PUT", "/v1/key/create/", 0, 15, "r16-key", ""},
		{"PUT", "/v1/key/import/", mb, 15, "r16-imp", `{"key":"` + base64.StdEncoding.EncodeToString(randBytes(32)) + `","cipher":"AES256"}`},
		{"GET", "/v1/key/describe/", 0, 15, "r16-key", ""},
		{"GET", "/v1/key/list/", 0, 15, "r16", ""},
		{"PUT", "/v1/key/generate/", mb, 15, "r16-key", `{}`},
		{"PUT", "/v1/key/encrypt/", mb, 15, "r16-key", `{"plaintext":"aGk="}`},
		{"PUT", "/v1/key/decrypt/", mb, 15, "r16-key", `{"ciphertext":"AAAA"}`},
		{"PUT", "/v1/key/hmac/", mb, 15, "r16-key", `{"message":"aGk="}`},
		{"DELETE", "/v1/key/delete/", 0, 15, "r16-imp", ""},
		{"GET", "/v1/policy/describe/", 0, 15, "my-app", ""},
		{"GET", "/v1/policy/read/", 0, 15, "my-app", ""},
		{"GET", "/v1/policy/list/", 0, 15, "", ""},
		{"GET", "/v1/identity/describe/", 0, 15, adminIdentity, ""},
		{"GET", "/v1/identity/list/", 0, 15, "", ""},
		{"GET", "/v1/identity/self/describe", 0, 15, "", ""},
		{"GET", "/v1/log/error", 0, 0, "", ""},
		{"GET", "/v1/log/audit", 0, 0, "", ""},
	}
}

func (r route) isStream() bool { return strings.HasPrefix(r.pattern, "/v1/log/") }

// stream opens a long-lived GET and returns once response headers arrived (or
// after headerWait). The caller must call cancel.
func (c *rawClient) stream(path string, headerWait time.Duration) (*http.Response, context.CancelFunc, error) {
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", c.n.url(path), nil)
	hc := *c.hc
	hc.Timeout = 0
	type res struct {
		r   *http.Response
		err error
	}
	ch := make(chan res, 1)
	go func() {
		r, err := hc.Do(req)
		ch <- res{r, err}
	}()
	select {
	case x := <-ch:
		return x.r, cancel, x.err
	case <-time.After(headerWait):
		cancel()
		x := <-ch
		if x.r != nil {
			x.r.Body.Close()
		}
		return nil, cancel, fmt.Errorf("no response headers within %v", headerWait)
	}
}

func item16(t *testing.T, s *suite) {
	for _, rt := range routeTable() {
		path := rt.pattern + rt.arg
		if rt.isStream() {
			resp, cancel, err := s.rawAdmin.stream(path, 3*time.Second)
			if err != nil {
				t.Errorf("admin GET %s: %v (headers must be flushed immediately, Q3)", path, err)
			} else {
				if resp.StatusCode != 200 {
					t.Errorf("admin GET %s: status %d", path, resp.StatusCode)
				}
				resp.Body.Close()
			}
			cancel()
			continue
		}
		var body []byte
		if rt.body != "" {
			body = []byte(rt.body)
		}
		r := s.rawAdmin.do(t, rt.method, path, body)
		want := 200
		if rt.pattern == "/v1/key/decrypt/" {
			want = 400 // the body is not a valid ciphertext, but the admin got through
		}
		if r.Status != want {
			t.Errorf("admin %s %s: status %d %q, want %d", rt.method, path, r.Status, trunc(r.Body), want)
		}
	}
}

func item17(t *testing.T, s *suite) {
	for _, rt := range routeTable() {
		path := rt.pattern + rt.arg
		switch rt.pattern {
		case "/version":
			wantStatus(t, s.rawUnknown.do(t, "GET", path, nil), 200)
			continue
		case "/v1/identity/self/describe":
			wantError(t, s.rawUnknown.do(t, "GET", path, nil), 404, "identity does not exist")
			continue
		}
		if rt.isStream() {
			resp, cancel, err := s.rawUnknown.stream(path, 5*time.Second)
			if err != nil {
				t.Errorf("unknown GET %s: %v", path, err)
				cancel()
				continue
			}
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			cancel()
			wantError(t, &rawResp{Status: resp.StatusCode, Header: resp.Header, Body: b, Req: "GET " + path}, 403, "not authorized: insufficient permissions")
			continue
		}
		var body []byte
		if rt.body != "" {
			body = []byte(rt.body)
		}
		wantError(t, s.rawUnknown.do(t, rt.method, path, body), 403, "not authorized: insufficient permissions")
	}
}

func item18(t *testing.T, s *suite) {
	ctx := ctxT(t)
	na := kes.ErrNotAllowed
	if err := s.app.CreateKey(ctx, "my-app-18"); err != nil {
		t.Fatalf("app CreateKey(my-app-18): %v", err)
	}
	dek, err := s.app.GenerateKey(ctx, "my-app-18", []byte("ctx"))
	if err != nil {
		t.Fatalf("app GenerateKey: %v", err)
	}
	if pt, err := s.app.Decrypt(ctx, "my-app-18", dek.Ciphertext, []byte("ctx")); err != nil || string(pt) != string(dek.Plaintext) {
		t.Errorf("app Decrypt: %v", err)
	}
	wantKesErr(t, "app CreateKey(other-18) (no allow rule)", s.app.CreateKey(ctx, "other-18"), na)
	_, err = s.app.Encrypt(ctx, "my-app-18", []byte("x"), nil)
	wantKesErr(t, "app Encrypt (no allow rule)", err, na)
	_, err = s.app.DescribeKey(ctx, "my-app-18")
	wantKesErr(t, "app DescribeKey(my-app-18) (only my-app-exact is allowed)", err, na)

	// Deny beats allow.
	if err := s.app.CreateKey(ctx, "my-app-internal-18"); err != nil {
		t.Fatalf("app CreateKey(my-app-internal-18): %v", err)
	}
	dek2, err := s.app.GenerateKey(ctx, "my-app-internal-18", nil)
	if err != nil {
		t.Fatalf("app GenerateKey(my-app-internal-18): %v", err)
	}
	_, err = s.app.Decrypt(ctx, "my-app-internal-18", dek2.Ciphertext, nil)
	wantKesErr(t, "app Decrypt(my-app-internal-18) (denied)", err, na)

	// Exact patterns match only exactly.
	_, err = s.app.DescribeKey(ctx, "my-app-exact")
	wantKesErr(t, "app DescribeKey(my-app-exact) before it exists", err, kes.ErrKeyNotFound)
	if err := s.admin.CreateKey(ctx, "my-app-exact"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.app.DescribeKey(ctx, "my-app-exact"); err != nil {
		t.Errorf("app DescribeKey(my-app-exact): %v", err)
	}
	for _, k := range []string{"my-app-exact2", "my-app-exac", "my-app-exact-"} {
		r := s.rawApp.do(t, "GET", "/v1/key/describe/"+k, nil)
		wantError(t, r, 403, "not authorized: insufficient permissions")
	}
	if _, err := s.app.Status(ctx); err != nil {
		t.Errorf("app Status (/v1/status allowed exactly): %v", err)
	}
	_, err = s.app.IsReady(ctx)
	wantKesErr(t, "app IsReady (not allowed)", err, na)

	// A policy without rules denies everything.
	wantKesErr(t, "zz-empty CreateKey", s.empty.CreateKey(ctx, "my-app-zz"), na)
	_, err = s.empty.Status(ctx)
	wantKesErr(t, "zz-empty Status", err, na)
	_, err = s.empty.GenerateKey(ctx, presetKey, nil)
	wantKesErr(t, "zz-empty GenerateKey", err, na)
}

func item19(t *testing.T, s *suite) {
	ctx := ctxT(t)
	if v, err := s.unknown.Version(ctx); err != nil || v == "" {
		t.Errorf("unknown identity Version: %q %v", v, err)
	}
	_, _, err := s.unknown.DescribeSelf(ctx)
	wantKesErr(t, "unknown DescribeSelf", err, kes.ErrIdentityNotFound)
	// app has no allow rule for self/describe but gets an answer.
	info, _, err := s.app.DescribeSelf(ctx)
	if err != nil || info.Identity != appIdentity {
		t.Errorf("app DescribeSelf: %+v %v", info, err)
	}
}

func item20(t *testing.T, s *suite) {
	ctx := ctxT(t)
	na := kes.ErrNotAllowed
	for name, c := range map[string]*kes.Client{"unknown": s.unknown, "zz-empty": s.empty} {
		_, err := c.Status(ctx)
		wantKesErr(t, name+" Status", err, na)
		_, err = c.IsReady(ctx)
		wantKesErr(t, name+" IsReady", err, na)
		_, err = c.Metrics(ctx)
		wantKesErr(t, name+" Metrics", err, na)
		_, err = c.APIs(ctx)
		wantKesErr(t, name+" APIs", err, na)
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if st, err := c.AuditLog(sctx); err == nil {
			st.Close()
			t.Errorf("%s AuditLog: subscribed, want ErrNotAllowed", name)
		} else {
			wantKesErr(t, name+" AuditLog", err, na)
		}
		if st, err := c.ErrorLog(sctx); err == nil {
			st.Close()
			t.Errorf("%s ErrorLog: subscribed, want ErrNotAllowed", name)
		} else {
			wantKesErr(t, name+" ErrorLog", err, na)
		}
		cancel()
	}
	// minio has allow rules for status, api, metrics and the logs.
	if _, err := s.minio.Status(ctx); err != nil {
		t.Errorf("minio Status: %v", err)
	}
	if _, err := s.minio.APIs(ctx); err != nil {
		t.Errorf("minio APIs: %v", err)
	}
	if _, err := s.minio.Metrics(ctx); err != nil {
		t.Errorf("minio Metrics: %v", err)
	}
	_, err := s.minio.IsReady(ctx)
	wantKesErr(t, "minio IsReady (no rule)", err, na)
}

// ---------------------------------------------------------------------------
// Keys

func item21(t *testing.T, s *suite) {
	wantEmpty200(t, s.rawAdmin.do(t, "POST", "/v1/key/create/k21", nil))
	wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/create/k21", nil), 400, "key already exists")
	wantKesErr(t, "CreateKey twice", s.admin.CreateKey(ctxT(t), "k21"), kes.ErrKeyExists)
	wantKesErr(t, "CreateKey of a pre-defined key", s.admin.CreateKey(ctxT(t), presetKey), kes.ErrKeyExists)
}

func item22(t *testing.T, s *suite) {
	ctx := ctxT(t)
	b64 := base64.StdEncoding.EncodeToString
	if err := s.admin.ImportKey(ctx, "k22-aes", &kes.ImportKeyRequest{Key: randBytes(32), Cipher: kes.AES256}); err != nil {
		t.Errorf("ImportKey AES256: %v", err)
	}
	if err := s.admin.ImportKey(ctx, "k22-chacha", &kes.ImportKeyRequest{Key: randBytes(32), Cipher: kes.ChaCha20}); err != nil {
		t.Errorf("ImportKey ChaCha20: %v", err)
	}
	wantEmpty200(t, s.rawAdmin.do(t, "POST", "/v1/key/import/k22-aes-long", []byte(`{"key":"`+b64(randBytes(32))+`","cipher":"AES256-GCM_SHA256"}`)))
	wantEmpty200(t, s.rawAdmin.do(t, "POST", "/v1/key/import/k22-chacha-long", []byte(`{"key":"`+b64(randBytes(32))+`","cipher":"XCHACHA20-POLY1305"}`)))
	for name, alg := range map[string]kes.KeyAlgorithm{"k22-aes": kes.AES256, "k22-chacha": kes.ChaCha20, "k22-aes-long": kes.AES256, "k22-chacha-long": kes.ChaCha20} {
		info, err := s.admin.DescribeKey(ctx, name)
		if err != nil {
			t.Errorf("DescribeKey(%s): %v", name, err)
		} else if info.Algorithm != alg {
			t.Errorf("DescribeKey(%s): algorithm %v, want %v", name, info.Algorithm, alg)
		}
	}
	// Wrong sizes.
	wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/import/k22-bad", []byte(`{"key":"`+b64(randBytes(16))+`","cipher":"AES256"}`)), 406, "invalid key size for 'AES256'")
	wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/import/k22-bad", []byte(`{"key":"`+b64(randBytes(24))+`","cipher":"ChaCha20"}`)), 406, "invalid key size for 'ChaCha20'")
	wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/import/k22-bad", []byte(`{"key":"","cipher":"AES256"}`)), 406, "invalid key size for 'AES256'")
	err := s.admin.ImportKey(ctx, "k22-bad", &kes.ImportKeyRequest{Key: randBytes(16), Cipher: kes.AES256})
	if !errors.Is(err, kes.NewError(406, "invalid key size for 'AES256'")) {
		t.Errorf("kes ImportKey 16 bytes: %v (%s)", err, describeErr(err))
	}
	// Unknown or missing cipher.
	wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/import/k22-bad", []byte(`{"key":"`+b64(randBytes(32))+`","cipher":"foo"}`)), 406, "algorithm 'foo' is not supported")
	wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/import/k22-bad", []byte(`{"key":"`+b64(randBytes(32))+`"}`)), 406, "algorithm '' is not supported")
	if err := s.admin.ImportKey(ctx, "k22-bad", &kes.ImportKeyRequest{Key: randBytes(32), Cipher: 2}); err == nil {
		t.Errorf("kes ImportKey with cipher id 2: succeeded")
	} else if ke, ok := err.(kes.Error); !ok || ke.Status() != 406 {
		t.Errorf("kes ImportKey with cipher id 2: %v (%s), want 406", err, describeErr(err))
	}
	// Duplicate.
	wantKesErr(t, "ImportKey duplicate", s.admin.ImportKey(ctx, "k22-aes", &kes.ImportKeyRequest{Key: randBytes(32)}), kes.ErrKeyExists)
	wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/import/k22-aes", []byte(`{"key":"`+b64(randBytes(32))+`","cipher":"AES256"}`)), 400, "key already exists")
	wantKesErr(t, "ImportKey over a created key", s.admin.ImportKey(ctx, presetKey, &kes.ImportKeyRequest{Key: randBytes(32)}), kes.ErrKeyExists)
	// Bad JSON.
	wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/import/k22-bad", []byte(`{bad`)), 400, "invalid import key request body")
	wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/import/k22-bad", []byte(``)), 400, "invalid import key request body")
	wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/import/k22-bad", []byte(`{"key":"not base64!","cipher":"AES256"}`)), 400, "invalid import key request body")
	if _, err := s.admin.DescribeKey(ctx, "k22-bad"); !errors.Is(err, kes.ErrKeyNotFound) {
		t.Errorf("a failed import left key k22-bad behind: %v", err)
	}
}

func item23(t *testing.T, s *suite) {
	ctx := ctxT(t)
	if err := s.admin.CreateKey(ctx, "k23"); err != nil {
		t.Fatal(err)
	}
	r := s.rawAdmin.do(t, "GET", "/v1/key/describe/k23", nil)
	wantStatus(t, r, 200)
	var v map[string]any
	if err := json.Unmarshal(r.Body, &v); err != nil {
		t.Fatalf("describe body %q: %v", r.Body, err)
	}
	for _, f := range []string{"name", "algorithm", "created_at", "created_by"} {
		if _, ok := v[f]; !ok {
			t.Errorf("describe body %q lacks %q", r.Body, f)
		}
	}
	for f := range v {
		if !slices.Contains([]string{"name", "algorithm", "created_at", "created_by"}, f) {
			t.Logf("NOTE describe body has extra field %q (KES sends none): %q", f, r.Body)
		}
	}
	if v["name"] != "k23" || (v["algorithm"] != "AES256" && v["algorithm"] != "ChaCha20") || v["created_by"] != adminIdentity {
		t.Errorf("describe body %q: want name k23, algorithm AES256|ChaCha20, created_by %s", r.Body, adminIdentity)
	}
	ts, _ := v["created_at"].(string)
	at, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil || !strings.HasSuffix(ts, "Z") || time.Since(at) > 10*time.Minute || time.Until(at) > time.Minute {
		t.Errorf("created_at %q: want a recent RFC 3339 UTC timestamp (%v)", ts, err)
	}
	info, err := s.admin.DescribeKey(ctx, "k23")
	if err != nil || info.Name != "k23" || info.CreatedBy != adminIdentity || info.CreatedAt.IsZero() || info.Algorithm > kes.ChaCha20 {
		t.Errorf("kes DescribeKey: %+v %v", info, err)
	}
	// created_by is the caller.
	if info, err := s.admin.DescribeKey(ctx, "my-app-18"); err != nil || info.CreatedBy != appIdentity {
		t.Errorf("DescribeKey(my-app-18) created by the app identity: %+v %v", info, err)
	}
	wantError(t, s.rawAdmin.do(t, "GET", "/v1/key/describe/k23-missing", nil), 404, "key does not exist")
	_, err = s.admin.DescribeKey(ctx, "k23-missing")
	wantKesErr(t, "DescribeKey missing", err, kes.ErrKeyNotFound)
}

func item24(t *testing.T, s *suite) {
	ctx := ctxT(t)
	for _, k := range []string{"k24-a", "k24-b"} {
		if err := s.admin.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	// Warm the node's key cache first: the delete must evict the cached
	// key (the FSM's delete hook), not leave it serving.
	if _, err := s.admin.GenerateKey(ctx, "k24-a", nil); err != nil {
		t.Fatalf("GenerateKey before delete: %v", err)
	}
	if err := s.admin.DeleteKey(ctx, "k24-a"); err != nil {
		t.Errorf("DeleteKey: %v", err)
	}
	wantEmpty200(t, s.rawAdmin.do(t, "DELETE", "/v1/key/delete/k24-b", nil))
	wantError(t, s.rawAdmin.do(t, "DELETE", "/v1/key/delete/k24-b", nil), 404, "key does not exist")
	wantKesErr(t, "DeleteKey again", s.admin.DeleteKey(ctx, "k24-a"), kes.ErrKeyNotFound)
	_, err := s.admin.DescribeKey(ctx, "k24-a")
	wantKesErr(t, "DescribeKey after delete", err, kes.ErrKeyNotFound)
	_, err = s.admin.GenerateKey(ctx, "k24-a", nil)
	wantKesErr(t, "GenerateKey after delete", err, kes.ErrKeyNotFound)
	names, _, err := s.admin.ListKeys(ctx, "k24", 0)
	if err != nil || len(names) != 0 {
		t.Errorf("ListKeys(k24) after delete: %q %v", names, err)
	}
	// The name can be reused.
	if err := s.admin.CreateKey(ctx, "k24-a"); err != nil {
		t.Errorf("CreateKey after delete: %v", err)
	}
}

func item25(t *testing.T, s *suite) {
	ctx := ctxT(t)
	for _, k := range []string{"lst-b", "lst-a", "lst-ab", "lsx-1"} {
		if err := s.admin.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	for prefix, want := range map[string][]string{
		"lst":   {"lst-a", "lst-ab", "lst-b"},
		"lst*":  {"lst-a", "lst-ab", "lst-b"},
		"lst-a": {"lst-a", "lst-ab"},
		"ls":    {"lst-a", "lst-ab", "lst-b", "lsx-1"},
		"lsx*":  {"lsx-1"},
		"lsz":   nil,
	} {
		names, cont, err := s.admin.ListKeys(ctx, prefix, 0)
		if err != nil || cont != "" || !slices.Equal(names, want) {
			t.Errorf("ListKeys(%q) = %q, continue_at %q, %v; want %q", prefix, names, cont, err, want)
		}
	}
	all, cont, err := s.admin.ListKeys(ctx, "", 0)
	if err != nil || cont != "" || !sort.StringsAreSorted(all) {
		t.Errorf("ListKeys(\"\"): %d names sorted=%v continue_at %q %v", len(all), sort.StringsAreSorted(all), cont, err)
	}
	for _, k := range []string{presetKey, "lst-a", "lsx-1", "my-key", "k21"} {
		if !slices.Contains(all, k) {
			t.Errorf("ListKeys(\"\") lacks %q", k)
		}
	}
	star, _, err := s.admin.ListKeys(ctx, "*", 0)
	if err != nil || !slices.Equal(star, all) {
		t.Errorf("ListKeys(\"*\") = %d names %v, want the same as \"\" (%d)", len(star), err, len(all))
	}
	my, _, err := s.admin.ListKeys(ctx, "my", 0)
	myStar, _, err2 := s.admin.ListKeys(ctx, "my*", 0)
	if err != nil || err2 != nil || !slices.Equal(my, myStar) || !slices.Contains(my, "my-key") || !slices.Contains(my, "my_key-0") {
		t.Errorf("ListKeys(\"my\") = %q (%v), ListKeys(\"my*\") = %q (%v); want equal, with my-key and my_key-0 (Q1)", my, err, myStar, err2)
	}
	for _, k := range my {
		if !strings.HasPrefix(k, "my") {
			t.Errorf("ListKeys(\"my\") returned %q", k)
		}
	}
	// Raw bytes: {"names":[...]} with continue_at omitted or empty.
	r := s.rawAdmin.do(t, "GET", "/v1/key/list/lst", nil)
	wantStatus(t, r, 200)
	var v map[string]json.RawMessage
	json.Unmarshal(r.Body, &v)
	if string(v["names"]) != `["lst-a","lst-ab","lst-b"]` {
		t.Errorf("GET /v1/key/list/lst body %q", r.Body)
	}
	if c, ok := v["continue_at"]; ok && string(c) != `""` {
		t.Errorf("continue_at %s, want omitted or empty", c)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Logf("NOTE list Content-Type %q (KES: application/json; the client switches to NDJSON parsing only for application/x-ndjson)", ct)
	}
	// ListIter as used by `kes key ls`.
	iter := kes.ListIter[string]{NextFunc: s.admin.ListKeys}
	var got []string
	for name, err := iter.SeekTo(ctx, "lst"); err != io.EOF; name, err = iter.Next(ctx) {
		if err != nil {
			t.Fatalf("ListIter: %v", err)
		}
		got = append(got, name)
		if len(got) > 100 {
			t.Fatalf("ListIter does not terminate: %q", got)
		}
	}
	if !slices.Equal(got, []string{"lst-a", "lst-ab", "lst-b"}) {
		t.Errorf("ListIter(lst) = %q", got)
	}
}

func item26(t *testing.T, s *suite) {
	ctx := ctxT(t)
	for _, body := range []string{"<none>", "", "{}", `{"context":"aGVsbG8="}`} {
		var b []byte
		if body != "<none>" {
			b = []byte(body)
		}
		r := s.rawAdmin.do(t, "POST", "/v1/key/generate/"+presetKey, b)
		wantStatus(t, r, 200)
		var d struct{ Plaintext, Ciphertext []byte }
		if err := json.Unmarshal(r.Body, &d); err != nil || len(d.Plaintext) != 32 || len(d.Ciphertext) != 76 {
			t.Errorf("generate with body %q: %q: plaintext %d ciphertext %d bytes, want 32/76 (%v)", body, r.Body, len(d.Plaintext), len(d.Ciphertext), err)
		}
	}
	c1 := []byte(`{"bucket":"b","object":"o"}`)
	d1, err := s.admin.GenerateKey(ctx, presetKey, c1)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := s.admin.GenerateKey(ctx, presetKey, c1)
	if err != nil {
		t.Fatal(err)
	}
	if string(d1.Plaintext) == string(d2.Plaintext) || string(d1.Ciphertext) == string(d2.Ciphertext) {
		t.Errorf("two DEKs share plaintext or ciphertext")
	}
	for _, d := range []kes.DEK{d1, d2} {
		pt, err := s.admin.Decrypt(ctx, presetKey, d.Ciphertext, c1)
		if err != nil || string(pt) != string(d.Plaintext) {
			t.Errorf("Decrypt(DEK): %v", err)
		}
	}
	// An 80-byte zero context, as in KES's own test.
	ad := make([]byte, 80)
	d3, err := s.admin.GenerateKey(ctx, presetKey, ad)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := s.admin.Decrypt(ctx, presetKey, d3.Ciphertext, ad); err != nil || string(pt) != string(d3.Plaintext) {
		t.Errorf("Decrypt(DEK, 80-byte AD): %v", err)
	}
	// Q5: a body without Content-Length (chunked) must still be parsed.
	cb := mustJSON(map[string][]byte{"context": c1})
	for _, c := range []*rawClient{s.rawAdminH1, s.rawAdmin} {
		r := c.chunked(t, "POST", "/v1/key/generate/"+presetKey, cb)
		wantStatus(t, r, 200)
		var d struct{ Plaintext, Ciphertext []byte }
		json.Unmarshal(r.Body, &d)
		if pt, err := s.admin.Decrypt(ctx, presetKey, d.Ciphertext, c1); err != nil || string(pt) != string(d.Plaintext) {
			t.Errorf("generate with a body without Content-Length (%s): context was not applied: decrypt with it: %v (Q5)", c.name, err)
		}
	}
	// Errors.
	wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/generate/k26-missing", []byte(`{}`)), 404, "key does not exist")
	_, err = s.admin.GenerateKey(ctx, "k26-missing", nil)
	wantKesErr(t, "GenerateKey missing", err, kes.ErrKeyNotFound)
	wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/generate/"+presetKey, []byte(`{bad`)), 400, "invalid request body")
	wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/generate/"+presetKey, []byte(`{"context":"%%%"}`)), 400, "invalid request body")
}

func item27(t *testing.T, s *suite) {
	ctx := ctxT(t)
	for _, n := range []int{0, 1, 16, 1000} {
		pt := randBytes(n)
		c1, err := s.admin.Encrypt(ctx, presetKey, pt, []byte("ad"))
		if err != nil {
			t.Fatalf("Encrypt %d bytes: %v", n, err)
		}
		c2, err := s.admin.Encrypt(ctx, presetKey, pt, []byte("ad"))
		if err != nil {
			t.Fatal(err)
		}
		if len(c1) != n+44 {
			t.Errorf("Encrypt %d bytes: ciphertext %d bytes, want %d", n, len(c1), n+44)
		}
		if string(c1) == string(c2) {
			t.Errorf("Encrypt is deterministic for %d bytes", n)
		}
		got, err := s.admin.Decrypt(ctx, presetKey, c1, []byte("ad"))
		if err != nil || string(got) != string(pt) {
			t.Errorf("Decrypt(Encrypt(%d bytes)): %v", n, err)
		}
	}
	// nil plaintext through the client is JSON null.
	if ct, err := s.admin.Encrypt(ctx, presetKey, nil, nil); err != nil || len(ct) != 44 {
		t.Errorf("Encrypt(nil): %d bytes %v", len(ct), err)
	}
	r := s.rawAdmin.do(t, "POST", "/v1/key/encrypt/"+presetKey, []byte(`{"plaintext":""}`))
	wantStatus(t, r, 200)
	wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/encrypt/"+presetKey, nil), 400, "invalid request body")
	wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/encrypt/"+presetKey, []byte(``)), 400, "invalid request body")
	wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/encrypt/"+presetKey, []byte(`{"plaintext":1}`)), 400, "invalid request body")
	_, err := s.admin.Encrypt(ctx, "k27-missing", []byte("x"), nil)
	wantKesErr(t, "Encrypt missing key", err, kes.ErrKeyNotFound)
}

func item28(t *testing.T, s *suite) {
	ctx := ctxT(t)
	pt := []byte("item 28 plaintext")
	ct, err := s.admin.Encrypt(ctx, presetKey, pt, []byte("ctx-a"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.admin.Decrypt(ctx, presetKey, ct, []byte("ctx-a")); err != nil || string(got) != string(pt) {
		t.Errorf("Decrypt same context: %q %v", got, err)
	}
	_, err = s.admin.Decrypt(ctx, presetKey, ct, []byte("ctx-b"))
	wantKesErr(t, "Decrypt with another context", err, kes.ErrDecrypt)
	_, err = s.admin.Decrypt(ctx, presetKey, ct, nil)
	wantKesErr(t, "Decrypt without the context", err, kes.ErrDecrypt)
	for _, i := range []int{0, len(ct) - 1, len(ct) - 20, len(ct) - 40} {
		bad := append([]byte{}, ct...)
		bad[i] ^= 0x01
		_, err = s.admin.Decrypt(ctx, presetKey, bad, []byte("ctx-a"))
		wantKesErr(t, fmt.Sprintf("Decrypt with byte %d flipped", i), err, kes.ErrDecrypt)
	}
	for _, n := range []int{0, 1, 28} {
		_, err = s.admin.Decrypt(ctx, presetKey, randBytes(n), nil)
		wantKesErr(t, fmt.Sprintf("Decrypt of %d bytes", n), err, kes.ErrDecrypt)
	}
	// Another key's ciphertext.
	if err := s.admin.CreateKey(ctx, "k28-other"); err != nil {
		t.Fatal(err)
	}
	_, err = s.admin.Decrypt(ctx, "k28-other", ct, []byte("ctx-a"))
	wantKesErr(t, "Decrypt with another key", err, kes.ErrDecrypt)
	// Garbled legacy formats.
	for _, g := range []string{`{"aead":"AES-256-GCM","iv":"AAAAAAAAAAAAAAAAAAAAAA==","nonce":"AAAAAAAAAAAAAAAA","bytes":"AAAAAAAAAAAAAAAAAAAAAAAA"}`, `{"aead":`, "\x95\xa1x"} {
		_, err = s.admin.Decrypt(ctx, presetKey, []byte(g), nil)
		wantKesErr(t, fmt.Sprintf("Decrypt garbled legacy %q", g), err, kes.ErrDecrypt)
	}
	wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/decrypt/"+presetKey, []byte(`{"ciphertext":`+string(mustJSON(randBytes(10)))+`}`)), 400, "decryption failed: ciphertext is not authentic")
	wantError(t, s.rawAdmin.do(t, "POST", "/v1/key/decrypt/"+presetKey, []byte(`{bad`)), 400, "invalid request body")
	_, err = s.admin.Decrypt(ctx, "k28-missing", ct, nil)
	wantKesErr(t, "Decrypt missing key", err, kes.ErrKeyNotFound)
}

// importVectorKeys imports the vector keys under v-<id> names.
func importVectorKeys(t *testing.T, s *suite) map[string]string {
	ctx := ctxT(t)
	names := map[string]string{}
	for _, v := range loadVectors(t).Vectors {
		name := "vec-" + strings.ToLower(v.ID)
		alg := kes.KeyAlgorithm(kes.AES256)
		if v.Algorithm == "ChaCha20" {
			alg = kes.ChaCha20
		}
		err := s.admin.ImportKey(ctx, name, &kes.ImportKeyRequest{Key: v.Key, Cipher: alg})
		if err != nil && !errors.Is(err, kes.ErrKeyExists) {
			t.Fatalf("ImportKey %s: %v", name, err)
		}
		names[v.ID] = name
	}
	return names
}

func item29(t *testing.T, s *suite) {
	ctx := ctxT(t)
	names := importVectorKeys(t, s)
	for _, v := range loadVectors(t).Vectors {
		pt, err := s.admin.Decrypt(ctx, names[v.ID], v.Ciphertext, v.Context)
		if err != nil {
			t.Errorf("%s (%s, %s): Decrypt: %v (%s)", v.ID, v.Format, v.Algorithm, err, describeErr(err))
			continue
		}
		if string(pt) != string(v.Plaintext) {
			t.Errorf("%s: plaintext %x, want %x", v.ID, pt, v.Plaintext)
		}
		// Wrong context must fail for every format.
		_, err = s.admin.Decrypt(ctx, names[v.ID], v.Ciphertext, []byte("wrong"))
		wantKesErr(t, v.ID+" with a wrong context", err, kes.ErrDecrypt)
	}
}

func item30(t *testing.T, s *suite) {
	ctx := ctxT(t)
	for _, alg := range []kes.KeyAlgorithm{kes.AES256, kes.ChaCha20} {
		key := randBytes(32)
		name := "k30-" + strings.ToLower(alg.String())
		if err := s.admin.ImportKey(ctx, name, &kes.ImportKeyRequest{Key: key, Cipher: alg}); err != nil {
			t.Fatalf("ImportKey: %v", err)
		}
		for _, ad := range [][]byte{nil, []byte("some context"), make([]byte, 16)} {
			pt := randBytes(100)
			// server -> reference
			ct, err := s.admin.Encrypt(ctx, name, pt, ad)
			if err != nil {
				t.Fatal(err)
			}
			got, err := refDecrypt(alg.String(), key, ct, ad)
			if err != nil || string(got) != string(pt) {
				t.Errorf("%v: the reference construction cannot decrypt kmsd's ciphertext: %v", alg, err)
			}
			// reference -> server
			ct, err = refEncrypt(alg.String(), key, pt, ad)
			if err != nil {
				t.Fatal(err)
			}
			got, err = s.admin.Decrypt(ctx, name, ct, ad)
			if err != nil || string(got) != string(pt) {
				t.Errorf("%v: kmsd cannot decrypt the reference ciphertext: %v", alg, err)
			}
			// DEKs too
			dek, err := s.admin.GenerateKey(ctx, name, ad)
			if err != nil {
				t.Fatal(err)
			}
			got, err = refDecrypt(alg.String(), key, dek.Ciphertext, ad)
			if err != nil || string(got) != string(dek.Plaintext) {
				t.Errorf("%v: the reference construction cannot decrypt a kmsd DEK: %v", alg, err)
			}
		}
	}
	// The raw vectors V1-V3 (also in item 29) decrypt with the imported keys.
	names := importVectorKeys(t, s)
	for _, v := range loadVectors(t).Vectors[:3] {
		pt, err := s.admin.Decrypt(ctx, names[v.ID], v.Ciphertext, v.Context)
		if err != nil || string(pt) != string(v.Plaintext) {
			t.Errorf("%s: %v", v.ID, err)
		}
	}
}

func item31(t *testing.T, s *suite) {
	ctx := ctxT(t)
	m1, err := s.admin.HMAC(ctx, presetKey, []byte("message one"))
	if err != nil {
		t.Fatalf("HMAC: %v", err)
	}
	m1b, _ := s.admin.HMAC(ctx, presetKey, []byte("message one"))
	m2, _ := s.admin.HMAC(ctx, presetKey, []byte("message two"))
	if len(m1) != 32 || string(m1) != string(m1b) || string(m1) == string(m2) {
		t.Errorf("HMAC: len %d, deterministic %v, differs per message %v", len(m1), string(m1) == string(m1b), string(m1) != string(m2))
	}
	if e, err := s.admin.HMAC(ctx, presetKey, nil); err != nil || len(e) != 32 {
		t.Errorf("HMAC of an empty message: %v", err)
	}
	// Keys differ.
	if err := s.admin.CreateKey(ctx, "k31"); err != nil {
		t.Fatal(err)
	}
	m3, err := s.admin.HMAC(ctx, "k31", []byte("message one"))
	if err != nil || string(m3) == string(m1) {
		t.Errorf("HMAC under another key: equal=%v %v", string(m3) == string(m1), err)
	}
	// Imported keys have an HMAC key too (random, not derived from the secret).
	secret := randBytes(32)
	for _, k := range []string{"k31-imp-a", "k31-imp-b"} {
		if err := s.admin.ImportKey(ctx, k, &kes.ImportKeyRequest{Key: secret}); err != nil {
			t.Fatal(err)
		}
	}
	ha, err := s.admin.HMAC(ctx, "k31-imp-a", []byte("m"))
	hb, err2 := s.admin.HMAC(ctx, "k31-imp-b", []byte("m"))
	if err != nil || err2 != nil {
		t.Errorf("HMAC with an imported key: %v %v", err, err2)
	} else if string(ha) == string(hb) {
		t.Logf("NOTE two keys imported from the same secret have the same HMAC key (KES draws a random HMAC key on import)")
	}
	r := s.rawAdmin.do(t, "PUT", "/v1/key/hmac/"+presetKey, []byte(`{"message":"bWVzc2FnZSBvbmU="}`))
	wantStatus(t, r, 200)
	var v struct{ HMAC []byte }
	if json.Unmarshal(r.Body, &v); string(v.HMAC) != string(m1) {
		t.Errorf("raw HMAC body %q does not match the client's", r.Body)
	}
	_, err = s.admin.HMAC(ctx, "k31-missing", []byte("x"))
	wantKesErr(t, "HMAC missing key", err, kes.ErrKeyNotFound)
	wantError(t, s.rawAdmin.do(t, "PUT", "/v1/key/hmac/"+presetKey, []byte(`{bad`)), 400, "invalid request body")
}

// Item 32 (replicas agree on HMAC, ciphertexts and DEKs) needs several
// nodes: TestCluster/Item32Replication (cluster_test.go).

func item33(t *testing.T, s *suite) {
	ctx := ctxT(t)
	r := s.rawAdmin.do(t, "POST", "/v1/key/generate/"+presetKey, []byte(`{"context":"aGk=","version":"v1"}`))
	wantStatus(t, r, 200)
	var d struct{ Plaintext, Ciphertext []byte }
	json.Unmarshal(r.Body, &d)
	r = s.rawAdmin.do(t, "POST", "/v1/key/decrypt/"+presetKey, mustJSON(map[string]any{"ciphertext": d.Ciphertext, "context": []byte("hi"), "version": "some-version"}))
	wantStatus(t, r, 200)
	r = s.rawAdmin.do(t, "POST", "/v1/key/decrypt/"+presetKey, mustJSON(map[string]any{"ciphertext": d.Ciphertext, "context": []byte("hi"), "version": ""}))
	wantStatus(t, r, 200)
	r = s.rawAdmin.do(t, "POST", "/v1/key/encrypt/"+presetKey, []byte(`{"plaintext":"aGk=","version":"v7"}`))
	wantStatus(t, r, 200)
	r = s.rawAdmin.do(t, "PUT", "/v1/key/hmac/"+presetKey, []byte(`{"message":"aGk=","version":"v2"}`))
	wantStatus(t, r, 200)
	if _, err := s.admin.Decrypt(ctx, presetKey, d.Ciphertext, []byte("hi")); err != nil {
		t.Errorf("Decrypt: %v", err)
	}
}

// ---------------------------------------------------------------------------
// Policies and identities

func expectedAppPolicy() *kes.Policy {
	p := &kes.Policy{Allow: map[string]kes.Rule{}, Deny: map[string]kes.Rule{}}
	for _, a := range appPolicy.Allow {
		p.Allow[a] = kes.Rule{}
	}
	for _, d := range appPolicy.Deny {
		p.Deny[d] = kes.Rule{}
	}
	return p
}

func item34(t *testing.T, s *suite) {
	ctx := ctxT(t)
	info, err := s.admin.DescribePolicy(ctx, "my-app")
	if err != nil || info.Name != "my-app" || info.CreatedAt.IsZero() || info.CreatedBy != adminIdentity {
		t.Errorf("DescribePolicy(my-app): %+v %v (want created_by %s)", info, err, adminIdentity)
	}
	r := s.rawAdmin.do(t, "GET", "/v1/policy/describe/my-app", nil)
	wantStatus(t, r, 200)
	var v map[string]any
	json.Unmarshal(r.Body, &v)
	if v["name"] != "my-app" || v["created_at"] == nil || v["created_by"] == nil {
		t.Errorf("policy describe body %q: want name, created_at, created_by", r.Body)
	}
	p, err := s.admin.GetPolicy(ctx, "my-app")
	if err != nil {
		t.Fatalf("GetPolicy: %v", err)
	}
	want := expectedAppPolicy()
	if !p.IsSubset(want) || !want.IsSubset(p) {
		t.Errorf("GetPolicy(my-app): allow %v deny %v, want allow %v deny %v", p.Allow, p.Deny, want.Allow, want.Deny)
	}
	if p.CreatedAt.IsZero() || p.CreatedBy != adminIdentity {
		t.Errorf("GetPolicy(my-app): created_at %v created_by %q", p.CreatedAt, p.CreatedBy)
	}
	r = s.rawAdmin.do(t, "GET", "/v1/policy/read/my-app", nil)
	wantStatus(t, r, 200)
	v = nil
	json.Unmarshal(r.Body, &v)
	for _, f := range []string{"name", "allow", "deny", "created_at", "created_by"} {
		if _, ok := v[f]; !ok {
			t.Errorf("policy read body %q lacks %q", r.Body, f)
		}
	}
	// The empty policy.
	if p, err := s.admin.GetPolicy(ctx, "zz-empty"); err != nil || len(p.Allow) != 0 || len(p.Deny) != 0 {
		t.Errorf("GetPolicy(zz-empty): %+v %v", p, err)
	}
	_, err = s.admin.DescribePolicy(ctx, "nope")
	wantKesErr(t, "DescribePolicy unknown", err, kes.ErrPolicyNotFound)
	_, err = s.admin.GetPolicy(ctx, "nope")
	wantKesErr(t, "GetPolicy unknown", err, kes.ErrPolicyNotFound)
	wantError(t, s.rawAdmin.do(t, "GET", "/v1/policy/read/nope", nil), 404, "policy does not exist")
	wantError(t, s.rawAdmin.do(t, "GET", "/v1/policy/describe/my.app", nil), 400, "policy name 'my.app' is empty, too long or contains invalid characters")
}

func item35(t *testing.T, s *suite) {
	ctx := ctxT(t)
	all := []string{"minio", "my-app", "zz-empty"}
	for prefix, want := range map[string][]string{"": all, "*": all, "m": {"minio", "my-app"}, "my": {"my-app"}, "my*": {"my-app"}, "zz-empty": {"zz-empty"}, "x": nil} {
		names, cont, err := s.admin.ListPolicies(ctx, prefix, 0)
		if err != nil || cont != "" || !slices.Equal(names, want) {
			t.Errorf("ListPolicies(%q) = %q %q %v, want %q", prefix, names, cont, err, want)
		}
	}
	r := s.rawAdmin.do(t, "GET", "/v1/policy/list/", nil)
	wantStatus(t, r, 200)
	var v map[string]json.RawMessage
	json.Unmarshal(r.Body, &v)
	if string(v["names"]) != `["minio","my-app","zz-empty"]` {
		t.Errorf("GET /v1/policy/list/: %q", r.Body)
	}
	if c, ok := v["continue_at"]; !ok || string(c) != `""` {
		t.Logf("NOTE policy list continue_at %q present=%v (KES always sends \"\")", c, ok)
	}
}

func item36(t *testing.T, s *suite) {
	ctx := ctxT(t)
	info, err := s.admin.DescribeIdentity(ctx, adminIdentity)
	if err != nil || !info.IsAdmin || info.Policy != "" {
		t.Errorf("DescribeIdentity(admin): %+v %v", info, err)
	}
	r := s.rawAdmin.do(t, "GET", "/v1/identity/describe/"+adminIdentity, nil)
	wantStatus(t, r, 200)
	var v map[string]any
	json.Unmarshal(r.Body, &v)
	if v["admin"] != true {
		t.Errorf("identity describe admin body %q: want \"admin\":true", r.Body)
	}
	info, err = s.admin.DescribeIdentity(ctx, appIdentity)
	if err != nil || info.IsAdmin || info.Policy != "my-app" || info.CreatedBy != adminIdentity || info.TTL != 0 || !info.ExpiresAt.IsZero() || info.CreatedAt.IsZero() {
		t.Errorf("DescribeIdentity(app): %+v %v; want policy my-app, created_by admin, no TTL/expiry", info, err)
	}
	r = s.rawAdmin.do(t, "GET", "/v1/identity/describe/"+appIdentity, nil)
	wantStatus(t, r, 200)
	v = nil
	json.Unmarshal(r.Body, &v)
	if v["policy"] != "my-app" {
		t.Errorf("identity describe body %q: want \"policy\":\"my-app\"", r.Body)
	}
	_, err = s.admin.DescribeIdentity(ctx, s.unknownKey.Identity())
	wantKesErr(t, "DescribeIdentity unknown", err, kes.ErrIdentityNotFound)
	wantError(t, s.rawAdmin.do(t, "GET", "/v1/identity/describe/"+s.unknownKey.Identity().String(), nil), 404, "identity does not exist")
}

func item37(t *testing.T, s *suite) {
	ctx := ctxT(t)
	want := []kes.Identity{adminIdentity, appIdentity, s.minioKey.Identity(), s.emptyKey.Identity()}
	slices.Sort(want)
	for _, prefix := range []string{"", "*"} {
		ids, cont, err := s.admin.ListIdentities(ctx, prefix, 0)
		if err != nil || cont != "" || !slices.Equal(ids, want) {
			t.Errorf("ListIdentities(%q) = %q %q %v, want %q", prefix, ids, cont, err, want)
		}
	}
	for _, prefix := range []string{adminIdentity[:4], adminIdentity[:4] + "*", adminIdentity} {
		ids, _, err := s.admin.ListIdentities(ctx, prefix, 0)
		if err != nil || !slices.Equal(ids, []kes.Identity{adminIdentity}) {
			t.Errorf("ListIdentities(%q) = %q %v, want [admin]", prefix, ids, err)
		}
	}
	r := s.rawAdmin.do(t, "GET", "/v1/identity/list/", nil)
	wantStatus(t, r, 200)
	var v map[string]json.RawMessage
	json.Unmarshal(r.Body, &v)
	if _, ok := v["identities"]; !ok {
		t.Errorf("identity list body %q lacks identities", r.Body)
	}
}

func item38(t *testing.T, s *suite) {
	ctx := ctxT(t)
	info, pol, err := s.admin.DescribeSelf(ctx)
	if err != nil || info.Identity != adminIdentity || !info.IsAdmin || info.CreatedAt.IsZero() {
		t.Errorf("admin DescribeSelf: %+v %v", info, err)
	}
	_ = pol
	r := s.rawAdmin.do(t, "GET", "/v1/identity/self/describe", nil)
	wantStatus(t, r, 200)
	var v map[string]any
	json.Unmarshal(r.Body, &v)
	if v["identity"] != adminIdentity || v["admin"] != true || v["created_at"] == nil {
		t.Errorf("admin self/describe body %q", r.Body)
	}

	info, pol, err = s.app.DescribeSelf(ctx)
	if err != nil {
		t.Fatalf("app DescribeSelf: %v (%s) (Q2: flat shape expected)", err, describeErr(err))
	}
	if info.Identity != appIdentity || info.IsAdmin || info.Policy != "my-app" || info.CreatedBy != adminIdentity {
		t.Errorf("app DescribeSelf: %+v", info)
	}
	want := expectedAppPolicy()
	if !pol.IsSubset(want) || !want.IsSubset(pol) {
		t.Errorf("app DescribeSelf policy: allow %v deny %v, want allow %v deny %v", pol.Allow, pol.Deny, want.Allow, want.Deny)
	}
	r = s.rawApp.do(t, "GET", "/v1/identity/self/describe", nil)
	t.Logf("app self/describe body: %s", r.Body)
	v = nil
	json.Unmarshal(r.Body, &v)
	if _, nested := v["policy"].(map[string]any); nested {
		t.Errorf("app self/describe sends a nested policy object; kms-go expects the flat shape: %q", r.Body)
	}
	_, _, err = s.unknown.DescribeSelf(ctx)
	wantKesErr(t, "unknown DescribeSelf", err, kes.ErrIdentityNotFound)
	info, _, err = s.empty.DescribeSelf(ctx)
	if err != nil || info.Policy != "zz-empty" {
		t.Errorf("zz-empty DescribeSelf: %+v %v", info, err)
	}
}

// ---------------------------------------------------------------------------
// Status, ready, metrics, API list, logs

func item39(t *testing.T, s *suite) {
	r := s.rawAdmin.do(t, "GET", "/version", nil)
	wantStatus(t, r, 200)
	var v map[string]any
	if err := json.Unmarshal(r.Body, &v); err != nil {
		t.Fatalf("version body %q: %v", r.Body, err)
	}
	if s, ok := v["version"].(string); !ok || s == "" {
		t.Errorf("version body %q: want a non-empty \"version\"", r.Body)
	}
	if _, ok := v["commit"].(string); !ok {
		t.Errorf("version body %q: want a \"commit\" string", r.Body)
	}
	t.Logf("version body: %s", r.Body)
}

func item40(t *testing.T, s *suite) {
	r := s.rawAdmin.do(t, "GET", "/v1/status", nil)
	wantStatus(t, r, 200)
	var v map[string]any
	if err := json.Unmarshal(r.Body, &v); err != nil {
		t.Fatalf("status body %q: %v", r.Body, err)
	}
	t.Logf("status body: %s", r.Body)
	for _, f := range []string{"version", "os", "arch", "uptime", "num_cpu", "num_cpu_used", "mem_heap_used", "mem_stack_used", "keystore_latency"} {
		if _, ok := v[f]; !ok {
			t.Errorf("status body lacks %q", f)
		}
	}
	if l, _ := v["keystore_latency"].(float64); l < 1 {
		t.Errorf("keystore_latency %v, want >= 1 (ms)", v["keystore_latency"])
	}
	if v["keystore_unreachable"] == true || v["keystore_unavailable"] == true {
		t.Errorf("healthy node reports the key store down: %q", r.Body)
	}
	st, err := s.admin.Status(ctxT(t))
	if err != nil {
		t.Fatalf("kes Status: %v", err)
	}
	if st.OS != runtime.GOOS || st.Arch != runtime.GOARCH || st.CPUs < 1 || st.UsableCPUs < 1 || st.HeapAlloc == 0 || st.StackAlloc == 0 || st.Version == "" {
		t.Errorf("kes Status: %+v", st)
	}
	if !st.KeyStoreReachable || !st.KeystoreAvailable {
		t.Errorf("kes Status: key store not reachable/available: %+v", st)
	}
}

func item42(t *testing.T, s *suite) {
	r := s.rawAdmin.do(t, "GET", "/v1/ready", nil)
	wantStatus(t, r, 200)
	if len(r.Body) != 0 {
		t.Errorf("/v1/ready body %q, want empty", r.Body)
	}
	ok, err := s.admin.IsReady(ctxT(t))
	if !ok || err != nil {
		t.Errorf("IsReady: %v %v", ok, err)
	}
}

func item43(t *testing.T, s *suite) {
	apis, err := s.admin.APIs(ctxT(t))
	if err != nil {
		t.Fatalf("APIs: %v", err)
	}
	checkAPIs(t, apis, nil)
}

// checkAPIs compares the route list with §2.1; overrides maps a path to its
// configured timeout in seconds.
func checkAPIs(t *testing.T, apis []kes.API, overrides map[string]int64) {
	t.Helper()
	got := map[string]kes.API{}
	for _, a := range apis {
		if _, dup := got[a.Path]; dup {
			t.Errorf("/v1/api lists %s twice", a.Path)
		}
		got[a.Path] = a
	}
	for _, rt := range routeTable() {
		a, ok := got[rt.pattern]
		if !ok {
			t.Errorf("/v1/api lacks %s", rt.pattern)
			continue
		}
		delete(got, rt.pattern)
		timeout := rt.timeout
		if o, ok := overrides[rt.pattern]; ok {
			timeout = o
		}
		if a.Method != rt.method || a.MaxBody != rt.maxBody || a.Timeout != time.Duration(timeout)*time.Second {
			t.Errorf("/v1/api %s: method %s max_body %d timeout %v, want %s %d %ds", rt.pattern, a.Method, a.MaxBody, a.Timeout, rt.method, rt.maxBody, timeout)
		}
	}
	for p, a := range got {
		t.Errorf("/v1/api lists an extra route %s %s (KES lists exactly 22)", a.Method, p)
	}
}
