package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/hsm"
	"github.com/kmsd/kmsd/internal/softhsmtest"
	"github.com/kmsd/kmsd/seal"
	"github.com/kmsd/kmsd/storage"
)

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testLogger logs to a buffer (returned) and, on failure, to t.
func testLogger(t *testing.T) (*slog.Logger, *syncBuffer) {
	var buf syncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), &buf
}

// memFSM is an FSM over in-memory storage.
func memFSM(t *testing.T) *fsm.FSM {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	db, err := storage.Open(storage.Options{InMemory: true, Logger: quiet, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	f, err := fsm.New(db, fsm.Config{Logger: quiet, TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// applyCmd applies cmd to f at the next index, as raft would.
func applyCmd(t *testing.T, f *fsm.FSM, cmd fsm.Command) {
	t.Helper()
	data, err := fsm.Encode(cmd)
	if err != nil {
		t.Fatal(err)
	}
	res, ok := f.Apply(&raft.Log{Index: f.AppliedIndex() + 1, Term: 1, Type: raft.LogCommand, Data: data}).(fsm.Result)
	if !ok {
		t.Fatal("Apply returned no fsm.Result")
	}
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
}

func recordStanza(t *testing.T, f *fsm.FSM, st seal.Stanza) {
	t.Helper()
	b, err := st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	applyCmd(t, f, &fsm.PutStanza{KeyID: st.KeyID, REKID: st.REKID, Stanza: b})
}

// member is an unsealed node that serves the hand-over endpoint.
func member(t *testing.T) (*node, *syncBuffer) {
	t.Helper()
	kr, _, err := seal.Init(t.Context(), seal.NewSoftware(bytes.Repeat([]byte{7}, 32), "member-key"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kr.Destroy)
	log, buf := testLogger(t)
	n := &node{log: log}
	n.keyring.Store(kr)
	return n, buf
}

func postREK(h http.Handler, method string, body []byte) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, rekPath, bytes.NewReader(body)))
	return rec
}

func TestREKHandler(t *testing.T) {
	m, logs := member(t)
	h := m.rekHandler()
	hk, err := seal.NewHandoverKey()
	if err != nil {
		t.Fatal(err)
	}
	defer hk.Destroy()

	rec := postREK(h, http.MethodPost, hk.Public())
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var rr rekResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &rr); err != nil {
		t.Fatal(err)
	}
	want := m.keyring.Load().ID()
	if rr.REKID != want {
		t.Fatalf("rek_id %q, want %q", rr.REKID, want)
	}
	kr, err := hk.Open(rr.Box, want)
	if err != nil {
		t.Fatalf("open the box: %v", err)
	}
	kr.Destroy()
	// The box (and so the REK) never reaches the log; the REK id does.
	if b64 := base64.StdEncoding.EncodeToString(rr.Box); strings.Contains(logs.String(), b64[:20]) {
		t.Fatalf("log contains the box: %s", logs)
	}
	if !strings.Contains(logs.String(), want) {
		t.Errorf("log does not record the hand-over: %s", logs)
	}

	for _, tt := range []struct {
		name   string
		method string
		body   []byte
		want   int
	}{
		{"GET", http.MethodGet, nil, http.StatusMethodNotAllowed},
		{"short key", http.MethodPost, make([]byte, 31), http.StatusBadRequest},
		{"low-order key", http.MethodPost, make([]byte, 32), http.StatusBadRequest},
		{"oversized body", http.MethodPost, make([]byte, maxREKRequest+1), http.StatusBadRequest},
	} {
		if rec := postREK(h, tt.method, tt.body); rec.Code != tt.want {
			t.Errorf("%s: status %d, want %d", tt.name, rec.Code, tt.want)
		}
	}
	if rec := postREK(h, http.MethodGet, nil); rec.Header().Get("Allow") != http.MethodPost {
		t.Error("405 without Allow: POST")
	}

	m.keyring.Store(nil) // sealed
	if rec := postREK(h, http.MethodPost, hk.Public()); rec.Code != http.StatusServiceUnavailable {
		t.Errorf("sealed: status %d, want 503", rec.Code)
	}
	destroyed, _, _ := seal.Init(t.Context(), seal.NewSoftware(bytes.Repeat([]byte{8}, 32), "k"))
	destroyed.Destroy()
	m.keyring.Store(destroyed)
	if rec := postREK(h, http.MethodPost, hk.Public()); rec.Code != http.StatusServiceUnavailable {
		t.Errorf("destroyed keyring: status %d, want 503", rec.Code)
	}
}

// joiner is a node without a seal stanza whose internal RPC goes to
// handler for memberAddr.
func joiner(t *testing.T, tok *softhsmtest.Token, handler http.Handler, calls *atomic.Int32) *node {
	t.Helper()
	const memberAddr = "127.0.0.1:7374"
	cfg := &fileConfig{DataDir: t.TempDir()}
	cfg.HSM.Module, cfg.HSM.Token, cfg.HSM.Key = tok.ModulePath, tok.Label, tok.KeyLabel
	cfg.HSM.PINEnv = "TEST_KMSD_JOIN_PIN"
	t.Setenv("TEST_KMSD_JOIN_PIN", tok.PIN)
	cfg.Cluster.NodeID, cfg.Cluster.Advertise = "n2", "127.0.0.1:7384"
	cfg.Cluster.Peers = []string{memberAddr, "127.0.0.1:7384"}
	log, _ := testLogger(t)
	n := &node{log: log, fsm: memFSM(t)}
	n.cfg.Store(cfg)
	n.callPeer = func(ctx context.Context, addr, method, path string, body io.Reader) (*http.Response, error) {
		calls.Add(1)
		if addr != memberAddr || path != rekPath {
			return nil, errors.New("unexpected call to " + addr + path)
		}
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, httptest.NewRequestWithContext(ctx, method, path, body))
		return rec.Result(), nil
	}
	t.Cleanup(n.close)
	return n
}

func TestJoinReceivesREK(t *testing.T) {
	tok := softhsmtest.New(t, "joiner")
	m, _ := member(t)
	kr := m.keyring.Load()
	m.keyring.Store(nil) // sealed at first: the joiner must retry

	var calls atomic.Int32
	n := joiner(t, tok, m.rekHandler(), &calls)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- n.unseal(ctx) }()

	// No REK id in the replicated state yet: the joiner only waits.
	time.Sleep(300 * time.Millisecond)
	if c := calls.Load(); c != 0 {
		t.Fatalf("asked a member %d times before the state named a REK", c)
	}
	st, err := kr.Stanza(ctx, seal.NewSoftware(bytes.Repeat([]byte{7}, 32), "member-key"))
	if err != nil {
		t.Fatal(err)
	}
	recordStanza(t, n.fsm, st)
	for calls.Load() == 0 {
		select {
		case err := <-errc:
			t.Fatalf("join ended early: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	m.keyring.Store(kr) // the member unseals
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if got := n.keyring.Load().ID(); got != kr.ID() {
		t.Fatalf("joined with REK %s, cluster REK %s", got, kr.ID())
	}

	// seal.stanza: this node's HSM key, the cluster's REK, and it unseals.
	local, err := readStanza(n.cfg.Load().DataDir)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(n.cfg.Load().DataDir, stanzaFile))
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("stanza mode %v", fi.Mode())
	}
	mod, err := hsm.Open(ctx, tok.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close()
	if local.KeyID != mod.KeyID() || local.REKID != kr.ID() {
		t.Fatalf("stanza %s/%s, want %s/%s", local.KeyID, local.REKID, mod.KeyID(), kr.ID())
	}
	again, err := seal.Unseal(ctx, mod, local)
	if err != nil {
		t.Fatalf("the written stanza does not unseal: %v", err)
	}
	again.Destroy()
}

func TestJoinRefusesForeignREK(t *testing.T) {
	tok := softhsmtest.New(t, "joiner")
	m, _ := member(t) // holds a REK the cluster does not name
	var calls atomic.Int32
	n := joiner(t, tok, m.rekHandler(), &calls)
	other, st, err := seal.Init(t.Context(), seal.NewSoftware(bytes.Repeat([]byte{9}, 32), "other"))
	if err != nil {
		t.Fatal(err)
	}
	other.Destroy()
	recordStanza(t, n.fsm, st)

	ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer cancel()
	err = n.unseal(ctx)
	if err == nil || n.keyring.Load() != nil {
		t.Fatal("joined with a foreign REK")
	}
	if calls.Load() == 0 {
		t.Fatal("never asked the member")
	}
	if _, err := os.Stat(filepath.Join(n.cfg.Load().DataDir, stanzaFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stanza written: %v", err)
	}
}

func TestBootstrapMarker(t *testing.T) {
	dir := t.TempDir()
	if ok, err := bootstrapMarker(dir); ok || err != nil {
		t.Fatalf("no marker: %v %v", ok, err)
	}
	if err := os.WriteFile(filepath.Join(dir, markerFile), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := bootstrapMarker(dir); err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("marker without stanza: err = %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, stanzaFile), []byte{1}, 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, err := bootstrapMarker(dir); !ok || err != nil {
		t.Fatalf("marker and stanza: %v %v", ok, err)
	}
}
