package api

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

// §16 items 14, 15: identity vectors (spec kes-vectors.json api_keys).
func TestAPIKeyVectors(t *testing.T) {
	raw, err := os.ReadFile("testdata/apikeys.json")
	if err != nil {
		t.Fatal(err)
	}
	var vectors []struct {
		APIKey   string `json:"api_key"`
		Identity string `json:"identity"`
	}
	if err := json.Unmarshal(raw, &vectors); err != nil {
		t.Fatal(err)
	}
	if len(vectors) != 2 {
		t.Fatalf("%d vectors", len(vectors))
	}
	for _, v := range vectors {
		for _, text := range []string{v.APIKey, strings.TrimPrefix(v.APIKey, "kes:v1:")} {
			k, err := ParseAPIKey(text)
			if err != nil {
				t.Fatalf("ParseAPIKey(%q): %v", text, err)
			}
			if got := k.Identity(); got != v.Identity {
				t.Errorf("Identity(%s) = %s, want %s", v.APIKey, got, v.Identity)
			}
			if got := k.String(); got != v.APIKey {
				t.Errorf("String() = %s, want %s", got, v.APIKey)
			}
			cert, err := k.Certificate()
			if err != nil {
				t.Fatal(err)
			}
			if got := IdentityOf(cert.Leaf); got != v.Identity {
				t.Errorf("IdentityOf(cert) = %s, want %s", got, v.Identity)
			}
		}
	}
}

func TestParseAPIKeyErrors(t *testing.T) {
	seed := bytes.Repeat([]byte{7}, 32)
	enc := func(b []byte) string { return "kes:v1:" + base64.StdEncoding.EncodeToString(b) }
	for _, s := range []string{
		"",
		"kes:v1:",
		"kes:v1:not base64!",
		enc(append([]byte{0}, seed[:31]...)), // 32 bytes
		enc(append(append([]byte{0}, seed...), 1)),      // 34 bytes
		enc(append([]byte{1}, seed...)),                 // type byte 1
		"kes:v2:" + enc(append([]byte{0}, seed...))[7:], // other prefix
	} {
		if _, err := ParseAPIKey(s); err == nil {
			t.Errorf("ParseAPIKey(%q) succeeded", s)
		}
	}
}

func TestAPIKeyCertificate(t *testing.T) {
	k := mustAPIKey(t)
	cert, err := k.Certificate(func(c *x509.Certificate) { c.DNSNames = []string{"client.example"} })
	if err != nil {
		t.Fatal(err)
	}
	c := cert.Leaf
	switch {
	case c.Subject.CommonName != k.Identity():
		t.Errorf("CN %q", c.Subject.CommonName)
	case c.IsCA || !c.BasicConstraintsValid:
		t.Error("must be a non-CA certificate with basic constraints")
	case c.KeyUsage != x509.KeyUsageDigitalSignature:
		t.Errorf("key usage %v", c.KeyUsage)
	case len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth:
		t.Errorf("ext key usage %v", c.ExtKeyUsage)
	case c.SerialNumber.BitLen() > 128 || c.SerialNumber.Sign() <= 0:
		t.Errorf("serial %v", c.SerialNumber)
	case c.NotAfter.Sub(c.NotBefore) != 90*24*time.Hour || time.Since(c.NotBefore) > time.Minute:
		t.Errorf("validity %v - %v", c.NotBefore, c.NotAfter)
	case len(c.DNSNames) != 1:
		t.Error("option not applied")
	}
	if !k.PrivateKey().Public().(ed25519.PublicKey).Equal(c.PublicKey) {
		t.Error("PrivateKey does not match the certificate")
	}
	if err := c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
}

// The secret text form never leaks through fmt or slog.
func TestAPIKeyHidesSecret(t *testing.T) {
	k, _ := ParseAPIKey(adminKey)
	secret := strings.TrimPrefix(adminKey, "kes:v1:")
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("key", "k", k)
	for _, s := range []string{
		fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s %q %x", k, k, k, k, k, k),
		fmt.Sprintf("%v", struct{ K APIKey }{k}), logged.String(),
	} {
		if strings.Contains(s, secret) || strings.Contains(s, "kes:v1:") {
			t.Errorf("secret leaked: %s", s)
		}
		if !strings.Contains(s, k.Identity()) {
			t.Errorf("identity missing: %s", s)
		}
	}
	var zero APIKey
	if zero.String() != "" || zero.Identity() != "" {
		t.Error("zero APIKey is not empty")
	}
	if _, err := zero.Certificate(); err == nil {
		t.Error("zero APIKey made a certificate")
	}
}

// §16 item 18 and spec §5: policy decisions.
func TestPolicyVerify(t *testing.T) {
	p := newPolicy("p", Policy{
		Allow: []string{"/v1/key/create/my-app*", "/v1/key/generate/my-app*", "/v1/key/decrypt/my-app*", "/v1/status", "", "/v1/key/list/*"},
		Deny:  []string{"/v1/key/decrypt/my-app-internal*", ""},
	})
	for _, tc := range []struct {
		path string
		want bool
	}{
		{"/v1/key/create/my-app", true},
		{"/v1/key/create/my-app-1", true},
		{"/v1/key/create/my-ap", false},
		{"/v1/key/create/my-app/x/y", true}, // the prefix crosses '/'
		{"/v1/key/decrypt/my-app-1", true},
		{"/v1/key/decrypt/my-app-internal", false}, // deny wins
		{"/v1/key/decrypt/my-app-internal-2", false},
		{"/v1/status", true},
		{"/v1/status/", false}, // no '*': exact only
		{"/v1/statu", false},
		{"/v1/key/list/", true},
		{"/v1/key/list/anything", true},
		{"/v1/key/list", false},
		{"/v1/key/delete/my-app", false}, // no match: deny
		{"", false},                      // the empty pattern matches nothing
	} {
		if got := p.verify(tc.path); got != tc.want {
			t.Errorf("verify(%q) = %v, want %v", tc.path, got, tc.want)
		}
	}
	if newPolicy("empty", Policy{}).verify("/v1/status") {
		t.Error("an empty policy allowed a request")
	}
	if !newPolicy("all", Policy{Allow: []string{"*"}}).verify("/v1/anything") {
		t.Error(`"*" did not match everything`)
	}
}

// §16 items 13, 16, 17, 20: authorization before validation; the admin
// may call everything; an identity without a policy nothing.
func TestAuthorization(t *testing.T) {
	e := newEnv(t)
	admin, user, stranger := e.client(&e.admin, false), e.client(&e.user, false), e.client(&e.stranger, false)
	const notAllowed = "not authorized: insufficient permissions"

	// 403 wins over 400 for an invalid name.
	e.do(user, "PUT", "/v1/key/create/my.key", nil).expectError(t, "user invalid name", 403, notAllowed)
	e.do(stranger, "PUT", "/v1/key/create/my.key", nil).expectError(t, "stranger invalid name", 403, notAllowed)
	e.do(admin, "PUT", "/v1/key/create/my.key", nil).expectError(t, "admin invalid name", 400,
		"key name 'my.key' is empty, too long or contains invalid characters")
	e.do(user, "PUT", "/v1/key/create/app.key", nil).expectError(t, "user allowed invalid name", 400,
		"key name 'app.key' is empty, too long or contains invalid characters")

	for _, rt := range routeTable() {
		if rt.auth != authPolicy {
			continue
		}
		path := rt.path
		if rt.subtree() {
			path += "x"
		}
		e.do(stranger, rt.method, path, nil).expectError(t, "stranger "+path, 403, notAllowed)
		if rt.path == "/v1/status" || strings.HasPrefix(rt.path, "/v1/key/list/") {
			continue
		}
		if rt.subtree() && strings.HasPrefix(rt.path, "/v1/key/") && rt.path != "/v1/key/import/" && rt.path != "/v1/key/delete/" && rt.path != "/v1/key/encrypt/" && rt.path != "/v1/key/hmac/" {
			continue // allowed for app* keys only; "x" is not one
		}
		e.do(user, rt.method, path, nil).expectError(t, "user "+path, 403, notAllowed)
	}
	// The admin reaches every route (no 403 anywhere).
	for _, rt := range routeTable() {
		if rt.stream {
			continue
		}
		path := rt.path
		if rt.subtree() {
			path += "x"
		}
		if r := e.do(admin, rt.method, path, nil); r.code == 403 {
			t.Errorf("admin got 403 on %s", path)
		}
	}
	// /version and self-describe need no policy.
	if r := e.do(stranger, "GET", "/version", nil); r.code != 200 {
		t.Errorf("stranger /version: %d", r.code)
	}
	e.do(stranger, "GET", "/v1/identity/self/describe", nil).expectError(t, "stranger self", 404, "identity does not exist")
	// The user's deny rule wins over its allow rule.
	e.seedKey("app-internal-1", 1, nil, false)
	e.do(user, "PUT", "/v1/key/decrypt/app-internal-1", `{"ciphertext":""}`).expectError(t, "denied decrypt", 403, notAllowed)
}

// §16 item 14: CA certificates are ignored; two leaf certificates are a
// 400.
func TestPeerCertificates(t *testing.T) {
	e := newEnv(t)
	leaf1, _ := e.admin.Certificate()
	leaf2, _ := e.user.Certificate()
	ca := selfSignedCA(t)
	for _, tc := range []struct {
		name  string
		chain [][]byte
		want  int
		body  string
	}{
		{"two leaves", [][]byte{leaf1.Certificate[0], leaf2.Certificate[0]}, 400, `{"message":"tls: received more than one client certificate"}`},
		{"leaf and CA", [][]byte{leaf1.Certificate[0], ca}, 200, ""},
	} {
		c := e.client(nil, true)
		c.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{{Certificate: tc.chain, PrivateKey: leaf1.PrivateKey}}
		r := e.do(c, "GET", "/v1/identity/self/describe", nil)
		if r.code != tc.want || (tc.body != "" && r.body != tc.body) {
			t.Errorf("%s: %d %s", tc.name, r.code, r.body)
		}
	}
}

func selfSignedCA(t *testing.T) []byte {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// Without TLS state every authenticated route is a 400; /version answers.
func TestInsecureConnection(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		path string
		code int
		body string
	}{
		{"/v1/status", 400, `{"message":"insecure connection: TLS is required"}`},
		{"/v1/identity/self/describe", 400, `{"message":"insecure connection: TLS is required"}`},
		{"/version", 200, `{"version":"v-test","commit":"c-test"}` + "\n"},
	} {
		rec := httptest.NewRecorder()
		e.srv.Handler().ServeHTTP(rec, httptest.NewRequest("GET", tc.path, nil))
		if rec.Code != tc.code || rec.Body.String() != tc.body {
			t.Errorf("%s: %d %s", tc.path, rec.Code, rec.Body.String())
		}
	}
}
