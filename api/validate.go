package api

import "strings"

// maxNameLen is the longest valid name, in bytes.
const maxNameLen = 80

// validName reports whether s is a valid key, policy or identity name
// (spec §2.1): 1-80 bytes of [0-9A-Za-z_-], not starting or ending with
// '-', and not "_" alone.
func validName(s string) bool {
	if s == "" || len(s) > maxNameLen || s == "_" {
		return false
	}
	if s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	return allNameChars(s)
}

// validPattern reports whether s is a valid list pattern: the name
// characters (without the '-' placement rules, so "_-*" is valid), at most
// 80 of them, optionally followed by one '*'. "" and "*" are valid.
func validPattern(s string) bool {
	s = strings.TrimSuffix(s, "*")
	return len(s) <= maxNameLen && allNameChars(s)
}

// listPrefix turns a valid list pattern into the prefix to match: one
// trailing '*' is dropped (KES Q1: the key list treated it literally).
func listPrefix(pattern string) string { return strings.TrimSuffix(pattern, "*") }

func allNameChars(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
