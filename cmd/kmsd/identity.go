package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"strings"
	"time"

	"github.com/kmsd/kmsd/api"
)

func runIdentity(args []string) error {
	if len(args) == 0 {
		return errors.New("identity: want `identity new` or `identity of ARG`")
	}
	switch args[0] {
	case "new":
		return identityNew(args[1:])
	case "of":
		if len(args) != 2 {
			return errors.New("identity of: want exactly one API key or certificate file")
		}
		id, err := identityOf(args[1])
		if err != nil {
			return err
		}
		fmt.Println(id)
		return nil
	default:
		return fmt.Errorf("identity: unknown subcommand %q", args[0])
	}
}

// identityOf accepts a kes:v1: API key or a PEM certificate file.
func identityOf(arg string) (string, error) {
	if k, err := api.ParseAPIKey(arg); err == nil {
		return k.Identity(), nil
	}
	b, err := os.ReadFile(arg)
	if err != nil {
		return "", fmt.Errorf("identity of: %q is neither an API key nor a readable file: %w", arg, err)
	}
	for rest := b; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return "", fmt.Errorf("identity of: %s: no PEM certificate", arg)
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return "", fmt.Errorf("identity of: %s: %w", arg, err)
		}
		return api.IdentityOf(cert), nil
	}
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// identityNew creates an API key. With --key and --cert it also writes the
// Ed25519 private key (PKCS#8 PEM) and a self-signed certificate for it,
// usable as a client certificate (curl) or a server certificate.
func identityNew(args []string) error {
	fs := flag.NewFlagSet("identity new", flag.ContinueOnError)
	keyFile := fs.String("key", "", "write the private key (PKCS#8 PEM) to this file")
	certFile := fs.String("cert", "", "write a self-signed certificate to this file")
	expiry := fs.Duration("expiry", 720*time.Hour, "certificate validity")
	force := fs.Bool("f", false, "overwrite existing files")
	var ips, dnsNames stringList
	fs.Var(&ips, "ip", "IP SAN for the certificate (repeatable)")
	fs.Var(&dnsNames, "dns", "DNS SAN for the certificate (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if (*keyFile == "") != (*certFile == "") {
		return errors.New("identity new: --key and --cert go together")
	}
	key, err := api.GenerateAPIKey(rand.Reader)
	if err != nil {
		return err
	}
	if *keyFile != "" {
		subject := fs.Arg(0)
		if subject == "" {
			subject = key.Identity()
		}
		if err := writeKeyCert(key, *keyFile, *certFile, subject, ips, dnsNames, *expiry, *force); err != nil {
			return err
		}
	}
	fmt.Printf("API key:  %s\nIdentity: %s\n", key.String(), key.Identity())
	return nil
}

func writeKeyCert(key api.APIKey, keyFile, certFile, subject string, ips, dnsNames []string, expiry time.Duration, force bool) error {
	priv := key.PrivateKey()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: subject},
		NotBefore:             time.Now().UTC().Add(-time.Minute),
		NotAfter:              time.Now().UTC().Add(expiry),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              dnsNames,
	}
	for _, s := range ips {
		ip := net.ParseIP(s)
		if ip == nil {
			return fmt.Errorf("identity new: invalid --ip %q", s)
		}
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return err
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public().(ed25519.PublicKey), priv)
	if err != nil {
		return fmt.Errorf("identity new: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return fmt.Errorf("identity new: %w", err)
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if !force {
		flags |= os.O_EXCL
	}
	write := func(path, typ string, b []byte, perm os.FileMode) error {
		f, err := os.OpenFile(path, flags, perm)
		if err != nil {
			return fmt.Errorf("identity new: %w", err)
		}
		if err := pem.Encode(f, &pem.Block{Type: typ, Bytes: b}); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	if err := write(keyFile, "PRIVATE KEY", pkcs8, 0o600); err != nil {
		return err
	}
	return write(certFile, "CERTIFICATE", der, 0o644)
}
