package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kmsd/kmsd/api"
	"github.com/kmsd/kmsd/seal"
)

// dekKey is the part of *seal.Key the baseline uses.
type dekKey interface {
	GenerateDEK(rand io.Reader, aad []byte) (plaintext, ciphertext []byte, err error)
	Decrypt(ciphertext, aad []byte) ([]byte, error)
}

// newDEKKey creates a fresh master key for the baseline.
var newDEKKey = func() (dekKey, error) { return seal.NewKey(seal.AES256, rand.Reader) }

// Route limits from spec §2.1.
const (
	maxBody      = 1_000_000
	routeTimeout = 15 * time.Second
)

// baseline is the ceiling server: TLS + HTTP + JSON + KES crypto.
type baseline struct {
	mu   sync.RWMutex
	keys map[string]dekKey
}

func newBaseline() *baseline { return &baseline{keys: make(map[string]dekKey)} }

// handler returns the route table.
func (b *baseline) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/v1/key/create/", b.route("/v1/key/create/", 0, b.create))
	mux.Handle("/v1/key/generate/", b.route("/v1/key/generate/", maxBody, b.generate))
	mux.Handle("/v1/key/decrypt/", b.route("/v1/key/decrypt/", maxBody, b.decrypt))
	mux.Handle("/v1/key/delete/", http.HandlerFunc(b.delete))
	return mux
}

type handlerFunc func(w http.ResponseWriter, r *http.Request, name string, body []byte)

// route does, in the order of spec §1.2, what every KES route does before
// its handler: method check, resource from the path, body limit, write
// deadline, caller identity. There is no policy check.
func (b *baseline) route(prefix string, limit int64, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut && r.Method != http.MethodPost {
			w.Header().Set("Accept", http.MethodPut)
			writeError(w, http.StatusMethodNotAllowed, "received method '"+r.Method+"' expected 'PUT'")
			return
		}
		name := strings.TrimPrefix(r.URL.Path, prefix)
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(routeTimeout))
		if _, err := identify(r); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		var body []byte
		if limit > 0 {
			var err error
			if body, err = io.ReadAll(r.Body); err != nil {
				writeError(w, http.StatusBadRequest, "invalid request body")
				return
			}
		}
		h(w, r, name, body)
	})
}

// identify computes the caller's identity as kmsd and KES do (spec §4.1).
func identify(r *http.Request) (string, error) {
	if r.TLS == nil {
		return "", errors.New("insecure connection: TLS is required")
	}
	var id string
	for _, c := range r.TLS.PeerCertificates {
		if c.IsCA {
			continue
		}
		if id != "" {
			return "", errors.New("tls: received more than one client certificate")
		}
		id = api.IdentityOf(c)
	}
	if id == "" {
		return "", errors.New("tls: client certificate is required")
	}
	return id, nil
}

func (b *baseline) key(name string) dekKey {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.keys[name]
}

func (b *baseline) create(w http.ResponseWriter, _ *http.Request, name string, _ []byte) {
	if name == "" {
		writeError(w, http.StatusBadRequest, "key name '' is empty, too long or contains invalid characters")
		return
	}
	k, err := newDEKKey()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "failed to generate encryption key")
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.keys[name]; ok {
		writeError(w, http.StatusBadRequest, "key already exists")
		return
	}
	b.keys[name] = k
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusOK)
}

// delete: DELETE /v1/key/delete/<name> (only so that kmsd-bench's
// clean-up after a create run can be tested against the baseline).
func (b *baseline) delete(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodDelete {
		w.Header().Set("Accept", http.MethodDelete)
		writeError(w, http.StatusMethodNotAllowed, "received method '"+r.Method+"' expected 'DELETE'")
		return
	}
	name := strings.TrimPrefix(r.URL.Path, "/v1/key/delete/")
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.keys[name]; !ok {
		writeError(w, http.StatusNotFound, "key does not exist")
		return
	}
	delete(b.keys, name)
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusOK)
}

type generateRequest struct {
	Context []byte `json:"context"`
}

type generateResponse struct {
	Plaintext  []byte `json:"plaintext"`
	Ciphertext []byte `json:"ciphertext"`
}

type decryptRequest struct {
	Ciphertext []byte `json:"ciphertext"`
	Context    []byte `json:"context"`
}

type decryptResponse struct {
	Plaintext []byte `json:"plaintext"`
}

func (b *baseline) generate(w http.ResponseWriter, _ *http.Request, name string, body []byte) {
	k := b.key(name)
	if k == nil {
		writeError(w, http.StatusNotFound, "key does not exist")
		return
	}
	var req generateRequest
	if len(body) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			writeError(w, http.StatusBadRequest, "invalid request body")
			return
		}
	}
	pt, ct, err := k.GenerateDEK(rand.Reader, req.Context)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "failed to generate encryption key")
		return
	}
	writeJSON(w, generateResponse{Plaintext: pt, Ciphertext: ct})
}

func (b *baseline) decrypt(w http.ResponseWriter, _ *http.Request, name string, body []byte) {
	k := b.key(name)
	if k == nil {
		writeError(w, http.StatusNotFound, "key does not exist")
		return
	}
	var req decryptRequest
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid request body")
		return
	}
	pt, err := k.Decrypt(req.Ciphertext, req.Context)
	if err != nil {
		writeError(w, http.StatusBadRequest, "decryption failed: ciphertext is not authentic")
		return
	}
	writeJSON(w, decryptResponse{Plaintext: pt})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	b, _ := json.Marshal(struct {
		Message string `json:"message"`
	}{msg})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// serverTLSConfig is kmsd's TLS posture (spec §1.1, default tls.auth).
func serverTLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"h2", "http/1.1"},
		ClientAuth:   tls.RequireAnyClientCert,
	}
}

// startBaseline listens on addr and serves the baseline until ctx ends.
// It returns the bound address and a channel that yields Serve's result.
func startBaseline(ctx context.Context, addr string, cert tls.Certificate) (net.Addr, <-chan error, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	srv := &http.Server{
		Handler:           newBaseline().handler(),
		TLSConfig:         serverTLSConfig(cert),
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       90 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	done := make(chan error, 1)
	go func() {
		err := srv.ServeTLS(ln, "", "")
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		done <- err
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
	}()
	return ln.Addr(), done, nil
}

func cmdBaseline(args []string) error {
	fs := flag.NewFlagSet("baseline", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	certFile := fs.String("cert", "", "server certificate (PEM)")
	keyFile := fs.String("key", "", "server private key (PEM)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *certFile == "" || *keyFile == "" {
		return errors.New("baseline: --cert and --key are required")
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	a, done, err := startBaseline(ctx, *addr, cert)
	if err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	fmt.Printf("listening on %s\n", a)
	return <-done
}
