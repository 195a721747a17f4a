package api

import (
	"cmp"
	"slices"
	"strings"
)

// policy is a validated, immutable Policy.
type policy struct {
	name  string
	allow []string
	deny  []string
}

func newPolicy(name string, p Policy) *policy {
	return &policy{name: name, allow: slices.Clone(p.Allow), deny: slices.Clone(p.Deny)}
}

// verify decides a request path (spec §5): any matching deny rejects,
// then any matching allow accepts, and no match rejects.
func (p *policy) verify(path string) bool {
	for _, pat := range p.deny {
		if matchPattern(pat, path) {
			return false
		}
	}
	for _, pat := range p.allow {
		if matchPattern(pat, path) {
			return true
		}
	}
	return false
}

// matchPattern: an empty pattern matches nothing; a pattern ending in '*'
// matches every path starting with the rest (across '/'); any other
// pattern only the identical path.
func matchPattern(pattern, path string) bool {
	if pattern == "" {
		return false
	}
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(path, prefix)
	}
	return pattern == path
}

// rules renders patterns as the KES JSON object {"pattern":{},...}.
// Nil for no patterns, so `omitempty` drops the field.
func rules(patterns []string) map[string]struct{} {
	if len(patterns) == 0 {
		return nil
	}
	m := make(map[string]struct{}, len(patterns))
	for _, p := range patterns {
		m[p] = struct{}{}
	}
	return m
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, cmp.Compare)
	return keys
}
