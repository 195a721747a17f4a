package api

import (
	"strings"
	"time"
)

type (
	describePolicyResponse struct {
		Name      string    `json:"name"`
		CreatedAt time.Time `json:"created_at"`
		CreatedBy string    `json:"created_by"`
	}
	readPolicyResponse struct {
		Name      string              `json:"name"`
		Allow     map[string]struct{} `json:"allow,omitempty"`
		Deny      map[string]struct{} `json:"deny,omitempty"`
		CreatedAt time.Time           `json:"created_at"`
		CreatedBy string              `json:"created_by"`
	}
	listPoliciesResponse struct {
		Names      []string `json:"names"`
		ContinueAt string   `json:"continue_at"` // always present for policies
	}
)

// Policies come from the config: created_at is the server start and
// created_by the admin (spec §2.2).

// describePolicy: GET /v1/policy/describe/{name}.
func (s *Server) describePolicy(req *request) error {
	p, err := s.findPolicy(req)
	if err != nil {
		return err
	}
	return writeJSON(req.w, describePolicyResponse{Name: p.name, CreatedAt: s.started, CreatedBy: req.state.admin})
}

// readPolicy: GET /v1/policy/read/{name}.
func (s *Server) readPolicy(req *request) error {
	p, err := s.findPolicy(req)
	if err != nil {
		return err
	}
	return writeJSON(req.w, readPolicyResponse{
		Name:      p.name,
		Allow:     rules(p.allow),
		Deny:      rules(p.deny),
		CreatedAt: s.started,
		CreatedBy: req.state.admin,
	})
}

func (s *Server) findPolicy(req *request) (*policy, error) {
	name := req.resource
	if !validName(name) {
		return nil, invalidName("policy name", name)
	}
	p, ok := req.state.policies[name]
	if !ok {
		return nil, errPolicyNotFound
	}
	return p, nil
}

// listPolicies: GET /v1/policy/list/{pattern}.
func (s *Server) listPolicies(req *request) error {
	pattern := req.resource
	if !validPattern(pattern) {
		return invalidPattern(pattern)
	}
	prefix := listPrefix(pattern)
	names := []string{}
	for _, name := range sortedKeys(req.state.policies) {
		if strings.HasPrefix(name, prefix) {
			names = append(names, name)
		}
	}
	return writeJSON(req.w, listPoliciesResponse{Names: names})
}
