package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"time"

	"golang.org/x/sys/cpu"

	"github.com/kmsd/kmsd/cluster"
	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/seal"
)

// resolveTimeout bounds the read barrier that settles an ambiguous write
// when the request's own deadline is already spent.
const resolveTimeout = 2 * time.Second

// Request and response bodies. Unknown fields, including the "version"
// that newer clients send, are ignored by encoding/json.
type (
	importRequest struct {
		Key    []byte `json:"key"`
		Cipher string `json:"cipher"`
	}
	generateRequest struct {
		Context []byte `json:"context"`
	}
	encryptRequest struct {
		Plaintext []byte `json:"plaintext"`
		Context   []byte `json:"context"`
	}
	decryptRequest struct {
		Ciphertext []byte `json:"ciphertext"`
		Context    []byte `json:"context"`
	}
	hmacRequest struct {
		Message []byte `json:"message"`
	}
	describeKeyResponse struct {
		Name      string    `json:"name"`
		Algorithm string    `json:"algorithm"`
		CreatedAt time.Time `json:"created_at"`
		CreatedBy string    `json:"created_by"`
	}
	listKeysResponse struct {
		Names      []string `json:"names"`
		ContinueAt string   `json:"continue_at,omitempty"`
	}
	generateResponse struct {
		Plaintext  []byte `json:"plaintext"`
		Ciphertext []byte `json:"ciphertext"`
	}
	encryptResponse struct {
		Ciphertext []byte `json:"ciphertext"`
	}
	decryptResponse struct {
		Plaintext []byte `json:"plaintext"`
	}
	hmacResponse struct {
		HMAC []byte `json:"hmac"`
	}
)

// createKey: PUT /v1/key/create/{name}.
func (s *Server) createKey(req *request) error {
	name := req.resource
	if !validName(name) {
		return invalidName("key name", name)
	}
	kr, err := s.keyring()
	if err != nil {
		return err
	}
	key, err := seal.NewKey(defaultAlgorithm(), s.deps.Rand)
	if err != nil {
		return fail500("failed to generate encryption key", err)
	}
	defer key.Zero()
	return s.storeKey(req, kr, key, false)
}

// importKey: PUT /v1/key/import/{name} {"key":b64,"cipher":name}.
func (s *Server) importKey(req *request) error {
	name := req.resource
	if !validName(name) {
		return invalidName("key name", name)
	}
	var in importRequest
	if err := decodeBody(req, &in, false, errBadImportBody); err != nil {
		return err
	}
	defer clear(in.Key)
	alg, err := seal.ParseAlgorithm(in.Cipher)
	if err != nil {
		return &apiError{status: http.StatusNotAcceptable, message: fmt.Sprintf("algorithm '%s' is not supported", in.Cipher), cause: err}
	}
	badSize := newError(http.StatusNotAcceptable, fmt.Sprintf("invalid key size for '%s'", alg))
	if len(in.Key) != 32 {
		return badSize
	}
	kr, err := s.keyring()
	if err != nil {
		return err
	}
	key, err := seal.ImportKey(alg, in.Key, s.deps.Rand)
	switch {
	case errors.Is(err, seal.ErrInvalidKeySize):
		return badSize
	case errors.Is(err, seal.ErrUnsupportedAlgorithm):
		return newError(http.StatusNotAcceptable, fmt.Sprintf("algorithm '%s' is not supported", in.Cipher))
	case err != nil:
		return fail500("failed to create key", err)
	}
	defer key.Zero()
	return s.storeKey(req, kr, key, true)
}

// storeKey seals key and replicates its record under req.resource.
func (s *Server) storeKey(req *request, kr *seal.Keyring, key *seal.Key, imported bool) error {
	rec, err := s.newRecord(kr, req.resource, req.identity, key, imported)
	if err != nil {
		return fail500("failed to create key", err)
	}
	if err := s.applyCreate(req.ctx, rec); err != nil {
		return fail502("failed to create key", err)
	}
	return writeEmpty(req.w)
}

// newRecord seals key under the REK and builds its replicated record,
// stamped here, on the proposing node (Apply stays deterministic).
func (s *Server) newRecord(kr *seal.Keyring, name, createdBy string, key *seal.Key, imported bool) (fsm.Key, error) {
	const version = 1
	sealed, err := kr.SealKey(name, version, key)
	if err != nil {
		return fsm.Key{}, err
	}
	rec := fsm.Key{
		Name:      name,
		Algorithm: uint8(key.Algorithm()),
		Version:   version,
		Sealed:    sealed,
		CreatedAt: s.deps.Now().UTC(),
		CreatedBy: createdBy,
		Imported:  imported,
	}
	if _, err := io.ReadFull(s.deps.Rand, rec.RequestID[:]); err != nil {
		return fsm.Key{}, err
	}
	return rec, nil
}

// EnsureKey creates the key name, recorded as created by createdBy,
// unless it already exists. It serves the config's pre-defined keys
// (`keys:`) through the same path as /v1/key/create.
func (s *Server) EnsureKey(ctx context.Context, name, createdBy string) error {
	if !validName(name) {
		return fmt.Errorf("api: pre-defined key %q: invalid name", name)
	}
	if _, err := s.deps.Store.GetKey(name); err == nil {
		return nil
	}
	kr, err := s.keyring()
	if err != nil {
		return err
	}
	key, err := seal.NewKey(defaultAlgorithm(), s.deps.Rand)
	if err != nil {
		return err
	}
	defer key.Zero()
	rec, err := s.newRecord(kr, name, createdBy, key, false)
	if err != nil {
		return err
	}
	if err := s.applyCreate(ctx, rec); err != nil && !errors.Is(err, fsm.ErrKeyExists) {
		return fmt.Errorf("api: pre-defined key %q: %w", name, err)
	}
	return nil
}

// applyCreate commits a CreateKey. An ambiguous outcome (or "exists",
// should a lower layer have retried) is settled by the RequestID stored
// in the record: if it is ours, the create succeeded (design.md §3).
func (s *Server) applyCreate(ctx context.Context, rec fsm.Key) error {
	err := s.applyRetry(ctx, &fsm.CreateKey{Key: rec})
	if errors.Is(err, cluster.ErrUnknownOutcome) || errors.Is(err, fsm.ErrKeyExists) {
		// A record present locally is conclusive: ours or not. Only a
		// missing one needs the barrier (the local replica may lag).
		if s.settled(ctx, func() (bool, bool) {
			got, gerr := s.deps.Store.GetKey(rec.Name)
			return gerr == nil && got.RequestID == rec.RequestID, gerr == nil
		}) {
			return nil
		}
	}
	return err
}

// maxReproposals bounds how often an ambiguous write is proposed again.
const maxReproposals = 4

// applyRetry is apply for commands the FSM applies idempotently by their
// request id (create, delete): an unknown outcome (the leader died or
// leadership moved after the command was sent) is resolved by proposing
// the very same command again while ctx allows. If the first proposal was
// committed, the FSM answers OK for the repeat (same request id); if it
// was lost, the repeat applies it. Either way the client gets the real
// outcome instead of a 503 for a write that may or may not have happened
// (which a KES client would retry as a new request and could then see
// "key already exists" for a create it sent once).
func (s *Server) applyRetry(ctx context.Context, cmd fsm.Command) error {
	err := s.apply(ctx, cmd)
	for i := 0; i < maxReproposals && errors.Is(err, cluster.ErrUnknownOutcome) && ctx.Err() == nil; i++ {
		s.log.Debug("api: write outcome unknown; proposing it again with the same request id", "attempt", i+1, "err", err)
		err = s.apply(ctx, cmd)
	}
	return err
}

// apply commits cmd and folds the Result code into the error.
func (s *Server) apply(ctx context.Context, cmd fsm.Command) error {
	res, err := s.deps.Cluster.Apply(ctx, cmd)
	if err != nil {
		return err
	}
	return res.Err()
}

// settled reports whether an ambiguous write took effect. check answers
// (done, conclusive) from the local replica; if it is not conclusive, a
// read barrier brings the replica up to the leader's commit and check
// decides. The barrier gets a short budget of its own, since the request's
// context may be what ran out.
func (s *Server) settled(ctx context.Context, check func() (done, conclusive bool)) bool {
	if done, conclusive := check(); conclusive {
		return done
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resolveTimeout)
	defer cancel()
	if s.deps.Cluster.ReadBarrier(ctx) != nil {
		return false
	}
	done, _ := check()
	return done
}

// describeKey: GET /v1/key/describe/{name}. It reads only the record, but
// a sealed node answers 503 like every key route, matching its status
// (key store unreachable), so clients move to a node that can serve.
func (s *Server) describeKey(req *request) error {
	name := req.resource
	if !validName(name) {
		return invalidName("key name", name)
	}
	if _, err := s.keyring(); err != nil {
		return err
	}
	rec, err := s.lookup(req.ctx, name)
	if err != nil {
		return fail502("failed to read key", err)
	}
	return writeJSON(req.w, describeKeyResponse{
		Name:      rec.Name,
		Algorithm: seal.Algorithm(rec.Algorithm).String(),
		CreatedAt: rec.CreatedAt.UTC(),
		CreatedBy: rec.CreatedBy,
	})
}

// List paging: all matches go in one response unless that would come
// near kms-go's 1 MiB response limit; then the response is a KES page of
// 1024 names with continue_at set to the next name.
const (
	listPageSize  = 1024
	maxListLength = 1<<20 - 4096
)

// listKeys: GET /v1/key/list/{pattern}. One trailing '*' is stripped and
// the rest is a prefix (KES Q1); normally all matches in one response with
// continue_at omitted (Q9). 503 on a sealed node, as describe.
func (s *Server) listKeys(req *request) error {
	pattern := req.resource
	if !validPattern(pattern) {
		return invalidPattern(pattern)
	}
	if _, err := s.keyring(); err != nil {
		return err
	}
	names, err := s.deps.Store.ListKeys(listPrefix(pattern))
	if err != nil {
		return fail502("failed to list keys", err)
	}
	names = slices.Clone(names)
	if names == nil {
		names = []string{}
	}
	slices.Sort(names)
	resp := listKeysResponse{Names: names}
	size := len(`{"names":[]}` + "\n")
	for _, n := range names {
		size += len(n) + 3 // quotes and comma; valid names need no escaping
	}
	if size > maxListLength && len(names) > listPageSize {
		resp.Names, resp.ContinueAt = names[:listPageSize], names[listPageSize]
	}
	return writeJSON(req.w, resp)
}

// deleteKey: DELETE /v1/key/delete/{name}.
func (s *Server) deleteKey(req *request) error {
	name := req.resource
	if !validName(name) {
		return invalidName("key name", name)
	}
	if _, err := s.keyring(); err != nil {
		return err
	}
	cmd := &fsm.DeleteKey{Name: name}
	if _, err := io.ReadFull(s.deps.Rand, cmd.RequestID[:]); err != nil {
		return fail500("failed to delete key", err)
	}
	err := s.applyRetry(req.ctx, cmd)
	if errors.Is(err, cluster.ErrUnknownOutcome) && s.settled(req.ctx, func() (bool, bool) {
		_, gerr := s.deps.Store.GetKey(name)
		gone := errors.Is(gerr, fsm.ErrKeyNotFound) // a local hit may be stale
		return gone, gone
	}) {
		err = nil
	}
	if err != nil {
		return fail502("failed to delete key", err)
	}
	// Read-your-writes for deletes (KES Q12): a lookup finds stale local
	// records without asking the leader, so wait until this replica has
	// applied the delete. Best effort: the delete itself is committed.
	// The cache entry goes when the delete is applied here: the FSM's
	// delete hook invalidates it on every node.
	_ = s.deps.Cluster.ReadBarrier(req.ctx)
	return writeEmpty(req.w)
}

// keyRequest is the shared prologue of the crypto routes, in the order
// of spec §1.2: validate the name, parse the body into T (an empty body
// means {} when emptyOK), open the key; fn does the route's own work.
func keyRequest[T any](s *Server, req *request, emptyOK bool, fn func(key *seal.Key, in *T) error) error {
	name := req.resource
	if !validName(name) {
		return invalidName("key name", name)
	}
	var in T
	if err := decodeBody(req, &in, emptyOK, errBadBody); err != nil {
		return err
	}
	key, release, err := s.openKey(req.ctx, name)
	if err != nil {
		return err
	}
	defer release()
	return fn(key, &in)
}

// generateKey: PUT /v1/key/generate/{name} {"context":b64}. An empty body
// means {}.
func (s *Server) generateKey(req *request) error {
	return keyRequest(s, req, true, func(key *seal.Key, in *generateRequest) error {
		pt, ct, err := key.GenerateDEK(s.deps.Rand, in.Context)
		if err != nil {
			return fail500("failed to generate encryption key", err)
		}
		defer clear(pt)
		return writeJSON(req.w, generateResponse{Plaintext: pt, Ciphertext: ct})
	})
}

// encrypt: PUT /v1/key/encrypt/{name} {"plaintext":b64,"context":b64}.
func (s *Server) encrypt(req *request) error {
	return keyRequest(s, req, false, func(key *seal.Key, in *encryptRequest) error {
		defer clear(in.Plaintext)
		ct, err := key.Encrypt(s.deps.Rand, in.Plaintext, in.Context)
		if err != nil {
			return fail500("failed to encrypt plaintext", err)
		}
		return writeJSON(req.w, encryptResponse{Ciphertext: ct})
	})
}

// decrypt: PUT /v1/key/decrypt/{name} {"ciphertext":b64,"context":b64}.
func (s *Server) decrypt(req *request) error {
	return keyRequest(s, req, false, func(key *seal.Key, in *decryptRequest) error {
		pt, err := key.Decrypt(in.Ciphertext, in.Context)
		if err != nil {
			return fail500("failed to decrypt ciphertext", err) // seal.ErrDecrypt: 400 by the table
		}
		defer clear(pt)
		return writeJSON(req.w, decryptResponse{Plaintext: pt})
	})
}

// hmac: PUT /v1/key/hmac/{name} {"message":b64}.
func (s *Server) hmac(req *request) error {
	return keyRequest(s, req, false, func(key *seal.Key, in *hmacRequest) error {
		sum, err := key.HMAC(in.Message)
		if err != nil {
			return fail500("failed to compute HMAC", err) // seal.ErrNoHMAC: 409 by the table
		}
		return writeJSON(req.w, hmacResponse{HMAC: sum})
	})
}

// lookup reads a key record locally. On a miss it waits for the local
// replica to catch up with the leader (read barrier) and looks again, so
// a key committed through another node is never reported missing. If no
// leader can be reached it answers 503, so the client tries another node.
func (s *Server) lookup(ctx context.Context, name string) (fsm.Key, error) {
	rec, err := s.deps.Store.GetKey(name)
	if !errors.Is(err, fsm.ErrKeyNotFound) {
		return rec, err
	}
	if err := s.deps.Cluster.ReadBarrier(ctx); err != nil {
		return fsm.Key{}, &apiError{
			status:  http.StatusServiceUnavailable,
			message: "cannot confirm the key does not exist: no leader reachable",
			cause:   err,
		}
	}
	return s.deps.Store.GetKey(name)
}

// openKey returns the unsealed key name, from the cache if there is one.
// release must be called when done with the key.
//
// A cache hit touches neither the store nor the keyring: the hot path of
// generate/decrypt is a map read. That is safe because the cache is
// invalidated by the FSM when a delete is applied (and purged on
// restore), so a cached key always has a live record behind it.
func (s *Server) openKey(ctx context.Context, name string) (key *seal.Key, release func(), err error) {
	kr, err := s.keyring()
	if err != nil {
		return nil, nil, err
	}
	load := func(ctx context.Context) (*seal.Key, error) {
		rec, err := s.lookup(ctx, name)
		if err != nil {
			return nil, err
		}
		k, err := kr.OpenKey(rec.Name, rec.Version, rec.Sealed)
		if err != nil && !errors.Is(err, seal.ErrSealed) {
			// A stored key that does not unseal is our failure, never the
			// client's "ciphertext is not authentic".
			return nil, &failure{status: http.StatusBadGateway, message: "failed to read key", err: err, opaque: true}
		}
		return k, err
	}
	if s.deps.Cache == nil {
		if key, err = load(ctx); err != nil {
			return nil, nil, fail502("failed to read key", err)
		}
		return key, key.Zero, nil
	}
	if key, err = s.deps.Cache.Get(ctx, name, load); err != nil {
		return nil, nil, fail502("failed to read key", err)
	}
	return key, noRelease, nil
}

func noRelease() {}

// defaultAlgorithm is the algorithm of created keys: AES256 when the CPU
// has AES-GCM hardware, ChaCha20 otherwise (spec §6.1).
func defaultAlgorithm() seal.Algorithm {
	var hw bool
	switch runtime.GOARCH {
	case "amd64", "386":
		hw = cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ
	case "arm64":
		hw = cpu.ARM64.HasAES && cpu.ARM64.HasPMULL
	case "s390x":
		hw = cpu.S390X.HasAES && cpu.S390X.HasAESGCM
	}
	if hw {
		return seal.AES256
	}
	return seal.ChaCha20
}
