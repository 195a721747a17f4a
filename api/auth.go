package api

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// ClientAuth returns the TLS client-certificate mode for the `tls.auth`
// setting (spec §1.1): "" or "off" require a certificate without verifying
// it (self-signed API-key certificates work); "on" requires a verified
// one. If any route has skip_auth, the mode is relaxed so clients without
// a certificate can reach that route: RequireAny becomes Request and
// RequireAndVerify becomes VerifyIfGiven.
func ClientAuth(mode string, anySkipAuth bool) (tls.ClientAuthType, error) {
	var auth tls.ClientAuthType
	switch strings.ToLower(strings.TrimSpace(mode)) {
	case "", "off":
		auth = tls.RequireAnyClientCert
		if anySkipAuth {
			auth = tls.RequestClientCert
		}
	case "on":
		auth = tls.RequireAndVerifyClientCert
		if anySkipAuth {
			auth = tls.VerifyClientCertIfGiven
		}
	default:
		return 0, fmt.Errorf("api: invalid tls.auth %q: want \"on\" or \"off\"", mode)
	}
	return auth, nil
}

// AnySkipAuth reports whether some known route has skip_auth set.
func (c Config) AnySkipAuth() bool {
	for path, rc := range c.Routes {
		if rc.SkipAuth && knownRoute(path) {
			return true
		}
	}
	return false
}

// IdentityOf returns a certificate's KES identity: the lowercase hex
// SHA-256 of its DER SubjectPublicKeyInfo.
func IdentityOf(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// identify returns the identity of the single non-CA certificate the
// client presented (spec §4.1).
func identify(r *http.Request) (string, error) {
	if r.TLS == nil {
		return "", errTLSRequired
	}
	var leaf *x509.Certificate
	for _, cert := range r.TLS.PeerCertificates {
		if cert.IsCA {
			continue
		}
		if leaf != nil {
			return "", errManyCerts
		}
		leaf = cert
	}
	if leaf == nil {
		return "", errNoCert
	}
	return IdentityOf(leaf), nil
}

// authenticate runs step 5 of the pipeline for req's route.
//
// For an alias route (a list route without its trailing slash) the policy
// is checked against the slash form, the path a KES server would have
// redirected the client to, so `/v1/key/list/*` rules keep working.
func (s *Server) authenticate(req *request, skipAuth, alias bool) error {
	id, err := identify(req.r)
	switch {
	case req.route.auth == authNone:
		req.identity = id // best effort, for the audit log
		return nil
	case skipAuth && errors.Is(err, errNoCert):
		return nil // spec §16 item 4: skip_auth routes serve clients without a certificate
	case err != nil:
		return err
	}
	req.identity = id
	if skipAuth || req.route.auth == authIdentify {
		return nil
	}
	path := req.r.URL.Path
	if alias {
		path += "/"
	}
	if !req.state.allowed(id, path) {
		return errNotAllowed
	}
	return nil
}

// allowed reports whether identity may request path: the admin always,
// anyone else only through their policy.
func (st *state) allowed(identity, path string) bool {
	if identity == st.admin {
		return true
	}
	name, ok := st.owner[identity]
	if !ok {
		return false
	}
	return st.policies[name].verify(path)
}
