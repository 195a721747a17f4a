package api

import (
	"net/url"
	"strings"
	"testing"
)

// The tables of KES auth_test.go (spec §14) plus the edge cases of §2.1.
var (
	validNames   = []string{"my-key", "abc123", "0", "123ABC321", "_-___---_", "_0", "0-Z", "my_key-0", strings.Repeat("a", 80), "__"}
	invalidNames = []string{"", "my.key", "key/", "☰", "hel<lo", "Εmacs", strings.Repeat("a", 81), "-", "-a", "a-", "_", "a*", "a b", "a\x00"}

	validPatterns   = []string{"", "*", "my*", "_-*", "my-key", "-", "a-*", strings.Repeat("a", 80) + "*"}
	invalidPatterns = []string{"*-*", "**", "a*b", "my.key*", "key/*", "☰*", strings.Repeat("a", 81)}
)

// §16 items 11, 12.
func TestValidName(t *testing.T) {
	for _, s := range validNames {
		if !validName(s) {
			t.Errorf("validName(%q) = false", s)
		}
		if !validPattern(s) {
			t.Errorf("validPattern(%q) = false for a valid name", s)
		}
	}
	for _, s := range invalidNames {
		if validName(s) {
			t.Errorf("validName(%q) = true", s)
		}
	}
	for _, s := range validPatterns {
		if !validPattern(s) {
			t.Errorf("validPattern(%q) = false", s)
		}
	}
	for _, s := range invalidPatterns {
		if validPattern(s) {
			t.Errorf("validPattern(%q) = true", s)
		}
	}
}

// Each rejection over HTTP is a 400 with the KES text.
func TestValidationMessages(t *testing.T) {
	e := newEnv(t)
	c := e.client(&e.admin, false)
	for _, name := range invalidNames {
		if strings.ContainsAny(name, "/\x00 ") {
			continue // not representable as one path segment here; %2F is covered elsewhere
		}
		esc := url.PathEscape(name)
		for _, tc := range []struct{ method, prefix, what string }{
			{"PUT", "/v1/key/create/", "key name"},
			{"PUT", "/v1/key/import/", "key name"},
			{"GET", "/v1/key/describe/", "key name"},
			{"DELETE", "/v1/key/delete/", "key name"},
			{"PUT", "/v1/key/generate/", "key name"},
			{"PUT", "/v1/key/encrypt/", "key name"},
			{"PUT", "/v1/key/decrypt/", "key name"},
			{"PUT", "/v1/key/hmac/", "key name"},
			{"GET", "/v1/policy/describe/", "policy name"},
			{"GET", "/v1/policy/read/", "policy name"},
			{"GET", "/v1/identity/describe/", "identity"},
		} {
			e.do(c, tc.method, tc.prefix+esc, nil).expectError(t, tc.prefix+name, 400,
				tc.what+" '"+jsonEscape(name)+"' is empty, too long or contains invalid characters")
		}
	}
	for _, p := range []string{"*-*", "a*b", "my.key*"} {
		for _, prefix := range []string{"/v1/key/list/", "/v1/policy/list/", "/v1/identity/list/"} {
			e.do(c, "GET", prefix+url.PathEscape(p), nil).expectError(t, prefix+p, 400,
				"pattern '"+p+"' is too long or contains invalid characters")
		}
	}
	// Every valid name gets past validation.
	for _, name := range validNames {
		e.do(c, "PUT", "/v1/key/create/"+name, nil).expectEmpty(t, "create "+name)
	}
}

// jsonEscape mirrors encoding/json's escaping of '<' in messages.
func jsonEscape(s string) string { return strings.ReplaceAll(s, "<", `\u003c`) }
