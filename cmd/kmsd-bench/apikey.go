package main

import (
	"crypto/tls"

	"github.com/kmsd/kmsd/api"
)

// clientCertificate returns the self-signed client certificate a KES
// client derives from an API key ("kes:v1:..."), exactly as kmsd's api
// package defines it (spec §4.3).
func clientCertificate(apiKey string) (tls.Certificate, error) {
	k, err := api.ParseAPIKey(apiKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	return k.Certificate()
}
