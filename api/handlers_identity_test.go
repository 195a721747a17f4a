package api

import (
	"encoding/json"
	"testing"
)

const startTime = `"2026-11-22T17:00:00Z"`

// §16 items 34, 35.
func TestPolicyRoutes(t *testing.T) {
	e := newEnv(t, func(e *env, cfg *Config, _ *Deps) {
		cfg.Policies["app-2"] = Policy{Allow: []string{"/v1/status"}}
		cfg.Policies["empty"] = Policy{}
	})
	c := e.client(&e.admin, false)
	admin := e.admin.Identity()
	e.do(c, "GET", "/v1/policy/describe/app", nil).expect(t, "describe", 200,
		`{"name":"app","created_at":`+startTime+`,"created_by":"`+admin+`"}`+"\n")
	e.do(c, "GET", "/v1/policy/read/app", nil).expect(t, "read", 200,
		`{"name":"app","allow":{"/v1/key/create/app*":{},"/v1/key/decrypt/app*":{},"/v1/key/describe/app*":{},"/v1/key/generate/app*":{},"/v1/key/list/*":{},"/v1/status":{}},`+
			`"deny":{"/v1/key/decrypt/app-internal*":{}},"created_at":`+startTime+`,"created_by":"`+admin+`"}`+"\n")
	e.do(c, "GET", "/v1/policy/read/empty", nil).expect(t, "read empty", 200,
		`{"name":"empty","created_at":`+startTime+`,"created_by":"`+admin+`"}`+"\n")
	for _, path := range []string{"/v1/policy/describe/nope", "/v1/policy/read/nope"} {
		e.do(c, "GET", path, nil).expectError(t, path, 404, "policy does not exist")
	}
	e.do(c, "GET", "/v1/policy/read/no.pe", nil).expectError(t, "invalid", 400, "policy name 'no.pe' is empty, too long or contains invalid characters")
	for _, tc := range []struct{ path, names string }{
		{"/v1/policy/list/", `["app","app-2","empty"]`},
		{"/v1/policy/list/*", `["app","app-2","empty"]`},
		{"/v1/policy/list/app", `["app","app-2"]`},
		{"/v1/policy/list/app*", `["app","app-2"]`},
		{"/v1/policy/list/app-", `["app-2"]`},
		{"/v1/policy/list/x", `[]`},
	} {
		e.do(c, "GET", tc.path, nil).expect(t, tc.path, 200, `{"names":`+tc.names+`,"continue_at":""}`+"\n")
	}
}

// §16 items 36-38.
func TestIdentityRoutes(t *testing.T) {
	e := newEnv(t)
	c := e.client(&e.admin, false)
	admin, user := e.admin.Identity(), e.user.Identity()
	e.do(c, "GET", "/v1/identity/describe/"+admin, nil).expect(t, "describe admin", 200,
		`{"admin":true,"created_at":`+startTime+`}`+"\n")
	e.do(c, "GET", "/v1/identity/describe/"+user, nil).expect(t, "describe user", 200,
		`{"policy":"app","created_at":`+startTime+`,"created_by":"`+admin+`"}`+"\n")
	e.do(c, "GET", "/v1/identity/describe/"+e.stranger.Identity(), nil).expectError(t, "describe stranger", 404, "identity does not exist")
	e.do(c, "GET", "/v1/identity/describe/a.b", nil).expectError(t, "describe invalid", 400, "identity 'a.b' is empty, too long or contains invalid characters")

	ids := []string{admin, user}
	if ids[0] > ids[1] {
		ids[0], ids[1] = ids[1], ids[0]
	}
	all := `{"identities":["` + ids[0] + `","` + ids[1] + `"],"continue_at":""}` + "\n"
	e.do(c, "GET", "/v1/identity/list/", nil).expect(t, "list", 200, all)
	e.do(c, "GET", "/v1/identity/list/*", nil).expect(t, "list *", 200, all)
	e.do(c, "GET", "/v1/identity/list/"+user[:6]+"*", nil).expect(t, "list prefix", 200, `{"identities":["`+user+`"],"continue_at":""}`+"\n")

	// Self-describe: admin, flat user shape (KES Q2), unknown.
	e.do(c, "GET", "/v1/identity/self/describe", nil).expect(t, "self admin", 200,
		`{"identity":"`+admin+`","admin":true,"created_at":`+startTime+`}`+"\n")
	r := e.do(e.client(&e.user, false), "GET", "/v1/identity/self/describe", nil)
	r.expect(t, "self user", 200, `{"identity":"`+user+`","admin":false,"created_at":`+startTime+`,"created_by":"`+admin+`","policy":"app",`+
		`"allow":{"/v1/key/create/app*":{},"/v1/key/decrypt/app*":{},"/v1/key/describe/app*":{},"/v1/key/generate/app*":{},"/v1/key/list/*":{},"/v1/status":{}},`+
		`"deny":{"/v1/key/decrypt/app-internal*":{}}}`+"\n")
	// What kms-go DescribeSelf decodes: policy is a string, allow/deny maps.
	var self struct {
		Identity string              `json:"identity"`
		Admin    bool                `json:"admin"`
		Policy   string              `json:"policy"`
		Allow    map[string]struct{} `json:"allow"`
		Deny     map[string]struct{} `json:"deny"`
	}
	if err := json.Unmarshal([]byte(r.body), &self); err != nil || self.Policy != "app" || len(self.Allow) != 6 || len(self.Deny) != 1 {
		t.Errorf("self decode: %v %+v", err, self)
	}
	e.do(e.client(&e.stranger, false), "GET", "/v1/identity/self/describe", nil).expectError(t, "self stranger", 404, "identity does not exist")
}

// The "disabled" admin string is listed like any identity.
func TestDisabledAdminListed(t *testing.T) {
	e := newEnv(t, func(e *env, cfg *Config, _ *Deps) {
		cfg.Admin = "disabled"
		p := cfg.Policies["app"]
		p.Allow = append(p.Allow, "/v1/identity/list/*")
		cfg.Policies["app"] = p
	})
	r := e.do(e.client(&e.user, false), "GET", "/v1/identity/list/", nil)
	var out listIdentitiesResponse
	if r.code != 200 || json.Unmarshal([]byte(r.body), &out) != nil || len(out.Identities) != 2 {
		t.Fatalf("list: %d %s", r.code, r.body)
	}
	if out.Identities[0] != "disabled" && out.Identities[1] != "disabled" {
		t.Errorf("disabled not listed: %v", out.Identities)
	}
	e.do(e.client(&e.admin, false), "GET", "/v1/status", nil).expectError(t, "old admin", 403, "not authorized: insufficient permissions")
}
