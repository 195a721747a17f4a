package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/kmsd/kmsd/hsm"
	"github.com/kmsd/kmsd/seal"
)

// REK hand-over between nodes (design.md §2). A node without a seal
// stanza has never held the REK: it joins raft through cluster.peers
// (the cluster package does that), waits until the replicated state names
// the cluster's REK, asks an unsealed member for it over the node channel
// and wraps it under its own HSM key.

// rekPath is the internal RPC endpoint that hands the REK over. It is
// served on the node channel only (mTLS with the cluster CA), never on
// the API listener.
const rekPath = "/cluster/v1/ext/rek"

// maxREKRequest bounds the hand-over request body (a 32-byte public key).
const maxREKRequest = 1 << 10

// maxREKResponse bounds what a joining node reads of a member's answer.
const maxREKResponse = 16 << 10

// rekResponse is the body of a successful hand-over: the REK sealed for
// the requester's ephemeral key (seal.Keyring.Handover) and the REK id,
// which the requester checks against the replicated state.
type rekResponse struct {
	REKID string `json:"rek_id"`
	Box   []byte `json:"box"` // base64 in JSON
}

// rekHandler serves POST /cluster/v1/ext/rek: body = the joining node's
// X25519 public key (seal.HandoverKey.Public). 200 with a rekResponse;
// 503 if this node is sealed (the joiner tries another member); 400 for a
// body that is not a usable public key. Neither the REK nor the box is
// ever logged.
func (n *node) rekHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		kr := n.keyring.Load()
		if kr == nil {
			http.Error(w, "node is sealed", http.StatusServiceUnavailable)
			return
		}
		pub, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxREKRequest))
		if err != nil {
			http.Error(w, "request body: want a 32-byte X25519 public key", http.StatusBadRequest)
			return
		}
		box, err := kr.Handover(pub)
		switch {
		case errors.Is(err, seal.ErrHandoverKey):
			http.Error(w, "request body: want a 32-byte X25519 public key", http.StatusBadRequest)
			return
		case errors.Is(err, seal.ErrSealed):
			http.Error(w, "node is sealed", http.StatusServiceUnavailable)
			return
		case err != nil:
			n.log.Error("kmsd: REK hand-over failed", "err", err)
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		b, err := json.Marshal(rekResponse{REKID: kr.ID(), Box: box})
		if err != nil {
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(b)
		attrs := []any{"remote", r.RemoteAddr, "rek", kr.ID()}
		if p := peerName(r); p != "" {
			attrs = append(attrs, "peer", p)
		}
		n.log.Info("kmsd: handed the root key over to a joining node", attrs...)
	})
}

// peerName is the subject of the client certificate (the node channel
// is mutual TLS, so there always is one), for the log.
func peerName(r *http.Request) string {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return ""
	}
	return r.TLS.PeerCertificates[0].Subject.String()
}

// join obtains the REK for a node without a seal stanza and installs it:
// wait for the cluster's REK id in the replicated state, open this node's
// HSM, fetch the REK from a member, wrap it under the HSM key, write
// seal.stanza atomically, then serve unsealed. It returns only on
// success, ctx's end or an HSM error (which unsealLoop handles: a wrong
// PIN is never retried).
func (n *node) join(ctx context.Context) error {
	rekID, err := n.waitREKID(ctx)
	if err != nil {
		return err
	}
	cfg := n.cfg.Load()
	hc, err := cfg.hsmConfig()
	if err != nil {
		return err
	}
	mod, err := hsm.Open(ctx, hc)
	if err != nil {
		return err
	}
	kr, err := n.fetchREK(ctx, rekID)
	if err != nil {
		mod.Close()
		return err
	}
	st, err := kr.Stanza(ctx, mod)
	if err == nil {
		var b []byte
		if b, err = st.MarshalBinary(); err == nil {
			err = writeFileAtomic(filepath.Join(cfg.DataDir, stanzaFile), b, 0o600)
		}
	}
	if err != nil {
		kr.Destroy()
		mod.Close()
		return fmt.Errorf("join: seal the received root key under HSM key %s: %w", mod.KeyID(), err)
	}
	n.log.Info("kmsd: received the cluster's root key and sealed it under this node's HSM key", "rek", kr.ID(), "hsm_key", st.KeyID)
	return n.install(mod, kr, st)
}

// waitREKID polls the replicated state until it names the cluster's REK
// (raft replicates it once this node is a member and has caught up).
func (n *node) waitREKID(ctx context.Context) (string, error) {
	backoff := 100 * time.Millisecond
	logged := time.Time{}
	for {
		id, err := n.fsm.REKID()
		if err != nil {
			return "", err
		}
		if id != "" {
			return id, nil
		}
		if time.Since(logged) > 30*time.Second {
			n.log.Info("kmsd: no seal stanza: joining the cluster through cluster.peers; waiting for the replicated state to name the root key",
				"peers", n.cfg.Load().Cluster.joinPeers(), "applied", n.fsm.AppliedIndex())
			logged = time.Now()
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("join: %w", ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// fetchREK asks every known member in turn for the REK, with backoff
// between rounds, until one hands it over or ctx ends. Each round uses a
// new ephemeral key.
func (n *node) fetchREK(ctx context.Context, rekID string) (*seal.Keyring, error) {
	backoff := 250 * time.Millisecond
	logged := time.Time{}
	for {
		kr, errs := n.fetchREKRound(ctx, rekID)
		if kr != nil {
			return kr, nil
		}
		if time.Since(logged) > 10*time.Second {
			n.log.Warn("kmsd: no member handed the root key over yet; retrying", "err", errors.Join(errs...), "retry_in", backoff.String())
			logged = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("join: fetch the root key: %w", ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (n *node) fetchREKRound(ctx context.Context, rekID string) (*seal.Keyring, []error) {
	hk, err := seal.NewHandoverKey()
	if err != nil {
		return nil, []error{err}
	}
	defer hk.Destroy()
	addrs := n.rekSources()
	if len(addrs) == 0 {
		return nil, []error{errors.New("no other member known yet")}
	}
	var errs []error
	for _, addr := range addrs {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		kr, err := n.fetchREKFrom(actx, addr, hk, rekID)
		cancel()
		if err == nil {
			return kr, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errs
}

// rekSources lists the members to ask: the leader first, then the other
// members of the raft configuration, then cluster.peers; never this node.
func (n *node) rekSources() []string {
	cfg := n.cfg.Load()
	seen := map[string]bool{cfg.Cluster.Advertise: true, "": true}
	var out []string
	add := func(a string) {
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	if n.raft != nil {
		st := n.raft.Status()
		if st.Leader != cfg.Cluster.NodeID {
			add(st.LeaderAddr)
		}
		for _, m := range st.Members {
			if m.ID != cfg.Cluster.NodeID {
				add(m.Addr)
			}
		}
	}
	for _, p := range cfg.Cluster.joinPeers() {
		add(p)
	}
	return out
}

func (n *node) fetchREKFrom(ctx context.Context, addr string, hk *seal.HandoverKey, rekID string) (*seal.Keyring, error) {
	call := n.callPeer
	if call == nil {
		call = n.raft.Call
	}
	resp, err := call(ctx, addr, http.MethodPost, rekPath, bytes.NewReader(hk.Public()))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return nil, fmt.Errorf("%s: %s: %s", addr, resp.Status, bytes.TrimSpace(msg))
	}
	var rr rekResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxREKResponse)).Decode(&rr); err != nil {
		return nil, fmt.Errorf("%s: hand-over response: %w", addr, err)
	}
	defer clear(rr.Box)
	if rr.REKID != rekID {
		return nil, fmt.Errorf("%s: %w: member offers REK %s, the replicated state names %s", addr, seal.ErrREKMismatch, rr.REKID, rekID)
	}
	kr, err := hk.Open(rr.Box, rekID)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	return kr, nil
}

// markerFile is left by `kmsd init` next to seal.stanza: this node made
// the cluster's REK and must bootstrap raft (once, while raft has no
// state). The server deletes it as soon as raft has state.
const markerFile = "init.bootstrap"

// bootstrapMarker reports whether data_dir holds the init marker; a
// marker without a stanza is an interrupted init and refused.
func bootstrapMarker(dataDir string) (bool, error) {
	_, err := os.Stat(filepath.Join(dataDir, markerFile))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("data_dir: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dataDir, stanzaFile)); errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("data_dir: %s exists without %s: `kmsd init` was interrupted; remove %s and run `kmsd init` again",
			markerFile, stanzaFile, filepath.Join(dataDir, markerFile))
	}
	return true, nil
}
