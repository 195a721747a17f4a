package api

import (
	"slices"
	"strings"
	"time"
)

type (
	describeIdentityResponse struct {
		Policy    string    `json:"policy,omitempty"`
		Admin     bool      `json:"admin,omitempty"`
		CreatedAt time.Time `json:"created_at"`
		CreatedBy string    `json:"created_by,omitempty"`
	}
	// selfResponse is the flat pre-2023 shape kms-go DescribeSelf decodes
	// (KES Q2), not KES HEAD's nested policy object.
	selfResponse struct {
		Identity  string              `json:"identity"`
		Admin     bool                `json:"admin"`
		CreatedAt time.Time           `json:"created_at"`
		CreatedBy string              `json:"created_by,omitempty"`
		Policy    string              `json:"policy,omitempty"`
		Allow     map[string]struct{} `json:"allow,omitempty"`
		Deny      map[string]struct{} `json:"deny,omitempty"`
	}
	listIdentitiesResponse struct {
		Identities []string `json:"identities"`
		ContinueAt string   `json:"continue_at"`
	}
)

// describeIdentity: GET /v1/identity/describe/{identity}.
func (s *Server) describeIdentity(req *request) error {
	id := req.resource
	if !validName(id) {
		return invalidName("identity", id)
	}
	st := req.state
	if id == st.admin {
		return writeJSON(req.w, describeIdentityResponse{Admin: true, CreatedAt: s.started})
	}
	name, ok := st.owner[id]
	if !ok {
		return errIdentityUnknown
	}
	return writeJSON(req.w, describeIdentityResponse{Policy: name, CreatedAt: s.started, CreatedBy: st.admin})
}

// describeSelf: GET /v1/identity/self/describe (identify only).
func (s *Server) describeSelf(req *request) error {
	st := req.state
	if req.identity != "" && req.identity == st.admin {
		return writeJSON(req.w, selfResponse{Identity: req.identity, Admin: true, CreatedAt: s.started})
	}
	name, ok := st.owner[req.identity]
	if !ok {
		return errIdentityUnknown
	}
	p := st.policies[name]
	return writeJSON(req.w, selfResponse{
		Identity:  req.identity,
		CreatedAt: s.started,
		CreatedBy: st.admin,
		Policy:    name,
		Allow:     rules(p.allow),
		Deny:      rules(p.deny),
	})
}

// listIdentities: GET /v1/identity/list/{pattern}. The admin identity is
// always a candidate, whatever its form (e.g. "disabled").
func (s *Server) listIdentities(req *request) error {
	pattern := req.resource
	if !validPattern(pattern) {
		return invalidPattern(pattern)
	}
	prefix := listPrefix(pattern)
	ids := []string{}
	for _, id := range append(sortedKeys(req.state.owner), req.state.admin) {
		if strings.HasPrefix(id, prefix) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return writeJSON(req.w, listIdentitiesResponse{Identities: ids})
}
