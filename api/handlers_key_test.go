package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/cluster"
	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/seal"
)

const (
	msgKeyExists   = "key already exists"
	msgKeyNotFound = "key does not exist"
	msgDecrypt     = "decryption failed: ciphertext is not authentic"
	msgSealed      = "node is sealed"
)

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// §16 item 21 and the create record.
func TestCreateKey(t *testing.T) {
	now := time.Date(2026, 5, 6, 7, 8, 9, 10, time.FixedZone("X", 3600))
	e := newEnv(t, func(_ *env, _ *Config, d *Deps) { d.Now = func() time.Time { return now } })
	c := e.client(&e.admin, false)
	e.do(c, "POST", "/v1/key/create/k1", nil).expectEmpty(t, "create")
	e.do(c, "POST", "/v1/key/create/k1", nil).expectError(t, "create again", 400, msgKeyExists)
	if n := e.fc.barrierCount(); n != 0 {
		t.Errorf("a plain duplicate create ran %d read barriers", n)
	}

	rec, err := e.fc.GetKey("k1")
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case rec.Name != "k1" || rec.Version != 1 || rec.Imported:
		t.Errorf("record %+v", rec)
	case seal.Algorithm(rec.Algorithm) != defaultAlgorithm():
		t.Errorf("algorithm %d", rec.Algorithm)
	case !rec.CreatedAt.Equal(now) || rec.CreatedAt.Location() != time.UTC:
		t.Errorf("created_at %v", rec.CreatedAt)
	case rec.CreatedBy != e.admin.Identity():
		t.Errorf("created_by %q", rec.CreatedBy)
	case rec.RequestID == [16]byte{}:
		t.Error("no request id")
	}
	if _, err := e.kr.Load().OpenKey("k1", 1, rec.Sealed); err != nil {
		t.Errorf("stored material does not open: %v", err)
	}
	// The user may create app* keys only, and is recorded as creator.
	e.do(e.client(&e.user, false), "PUT", "/v1/key/create/app-1", nil).expectEmpty(t, "user create")
	if rec, _ := e.fc.GetKey("app-1"); rec.CreatedBy != e.user.Identity() {
		t.Errorf("created_by %q", rec.CreatedBy)
	}
	// A key store failure is a logged 502.
	e.fc.set(func(f *fakeCluster) { f.applyErr = errBoom })
	e.do(c, "PUT", "/v1/key/create/k2", nil).expectError(t, "store failure", 502, "failed to create key")
	if !strings.Contains(e.logs.String(), "boom: disk on fire") {
		t.Errorf("unknown error not logged: %s", e.logs.String())
	}
}

// §16 item 22.
func TestImportKey(t *testing.T) {
	e := newEnv(t)
	c := e.client(&e.admin, false)
	key32 := b64(make([]byte, 32))
	for i, cipher := range []string{"AES256", "AES256-GCM_SHA256", "ChaCha20", "XCHACHA20-POLY1305"} {
		name := "imp-" + string(rune('a'+i))
		e.do(c, "POST", "/v1/key/import/"+name, `{"key":"`+key32+`","cipher":"`+cipher+`"}`).expectEmpty(t, "import "+cipher)
		rec, err := e.fc.GetKey(name)
		if err != nil || !rec.Imported {
			t.Errorf("import %s: %+v %v", cipher, rec, err)
		}
		want, _ := seal.ParseAlgorithm(cipher)
		if seal.Algorithm(rec.Algorithm) != want {
			t.Errorf("import %s: algorithm %d", cipher, rec.Algorithm)
		}
	}
	for _, tc := range []struct {
		name, body string
		code       int
		msg        string
	}{
		{"imp-a", `{"key":"` + key32 + `","cipher":"AES256"}`, 400, msgKeyExists},
		{"x", `{"key":"` + b64(make([]byte, 16)) + `","cipher":"AES256"}`, 406, "invalid key size for 'AES256'"},
		{"x", `{"key":"` + b64(make([]byte, 24)) + `","cipher":"ChaCha20"}`, 406, "invalid key size for 'ChaCha20'"},
		{"x", `{"key":"` + b64(make([]byte, 33)) + `","cipher":"AES256-GCM_SHA256"}`, 406, "invalid key size for 'AES256'"},
		{"x", `{"key":"","cipher":"AES256"}`, 406, "invalid key size for 'AES256'"},
		{"x", `{"key":"` + key32 + `"}`, 406, "algorithm '' is not supported"},
		{"x", `{"key":"` + key32 + `","cipher":"AES128"}`, 406, "algorithm 'AES128' is not supported"},
		{"x", `{"key":"` + key32 + `","cipher":"aes256"}`, 406, "algorithm 'aes256' is not supported"},
		{"x", ``, 400, "invalid import key request body"},
		{"x", `{"key":`, 400, "invalid import key request body"},
		{"x", `{"key":"not base64!","cipher":"AES256"}`, 400, "invalid import key request body"},
		{"x", `[]`, 400, "invalid import key request body"},
	} {
		e.do(c, "PUT", "/v1/key/import/"+tc.name, tc.body).expectError(t, "import "+tc.body, tc.code, tc.msg)
	}
	if _, err := e.fc.GetKey("x"); err == nil {
		t.Error("a rejected import was stored")
	}
}

// §16 items 23, 24, 25.
func TestDescribeListDelete(t *testing.T) {
	e := newEnv(t)
	c := e.client(&e.admin, false)
	for _, name := range []string{"abc", "abc-2", "abd", "my-key", "my-key2", "zz"} {
		e.seedKey(name, seal.ChaCha20, nil, false)
	}
	e.do(c, "GET", "/v1/key/describe/abc", nil).expect(t, "describe", 200,
		`{"name":"abc","algorithm":"ChaCha20","created_at":"2026-01-02T03:04:05.000000006Z","created_by":"creator"}`+"\n")
	e.do(c, "GET", "/v1/key/describe/nope", nil).expectError(t, "describe missing", 404, msgKeyNotFound)

	all := `{"names":["abc","abc-2","abd","my-key","my-key2","zz"]}` + "\n"
	for _, tc := range []struct{ path, body string }{
		{"/v1/key/list/", all},
		{"/v1/key/list", all},
		{"/v1/key/list/*", all},
		{"/v1/key/list/%2A", all},
		{"/v1/key/list/abc", `{"names":["abc","abc-2"]}` + "\n"},
		{"/v1/key/list/abc*", `{"names":["abc","abc-2"]}` + "\n"}, // KES Q1
		{"/v1/key/list/my-key*", `{"names":["my-key","my-key2"]}` + "\n"},
		{"/v1/key/list/q", `{"names":[]}` + "\n"},
	} {
		e.do(c, "GET", tc.path, nil).expect(t, tc.path, 200, tc.body)
	}

	// Past kms-go's 1 MiB limit the list falls back to KES pages.
	e.fc.set(func(f *fakeCluster) {
		for i := range 20000 {
			name := fmt.Sprintf("many-%05d-%s", i, strings.Repeat("x", 60))
			f.keys[name] = fsm.Key{Name: name}
		}
	})
	var page listKeysResponse
	r := e.do(c, "GET", "/v1/key/list/many", nil)
	if err := json.Unmarshal([]byte(r.body), &page); err != nil || len(page.Names) != 1024 || page.ContinueAt != page.Names[1023][:5]+"01024"+page.Names[1023][10:] {
		t.Errorf("paged list: %v, %d names, continue_at %q", err, len(page.Names), page.ContinueAt)
	}
	if n := len(e.do(c, "GET", "/v1/key/list/many-0", nil).body); n > 1<<20 {
		t.Errorf("10000 names: %d bytes", n)
	}

	n := e.fc.barrierCount()
	e.do(c, "DELETE", "/v1/key/delete/abc", nil).expectEmpty(t, "delete")
	if e.fc.barrierCount() != n+1 {
		t.Error("delete did not wait for the local replica")
	}
	e.do(c, "DELETE", "/v1/key/delete/abc", nil).expectError(t, "delete again", 404, msgKeyNotFound)
	e.do(c, "GET", "/v1/key/describe/abc", nil).expectError(t, "describe deleted", 404, msgKeyNotFound)

	e.fc.set(func(f *fakeCluster) { f.listErr, f.getErr, f.applyErr = errBoom, errBoom, errBoom })
	e.do(c, "GET", "/v1/key/list/", nil).expectError(t, "list failure", 502, "failed to list keys")
	e.do(c, "GET", "/v1/key/describe/abd", nil).expectError(t, "describe failure", 502, "failed to read key")
	e.do(c, "DELETE", "/v1/key/delete/abd", nil).expectError(t, "delete failure", 502, "failed to delete key")
}

// §16 items 26-28, 31, 33.
func TestKeyCrypto(t *testing.T) {
	for _, withCache := range []bool{false, true} {
		e := newEnv(t, func(_ *env, _ *Config, d *Deps) {
			if withCache {
				d.Cache = seal.NewCache(seal.CacheConfig{})
				t.Cleanup(d.Cache.Close)
			}
		})
		testKeyCrypto(t, e)
	}
}

func testKeyCrypto(t *testing.T, e *env) {
	c := e.client(&e.admin, false)
	h1 := e.client(&e.admin, true)
	e.seedKey("k", seal.AES256, nil, false)
	e.seedKey("c", seal.ChaCha20, nil, false)

	decrypt := func(name string, ct, ctx []byte) response {
		body, _ := json.Marshal(decryptRequest{Ciphertext: ct, Context: ctx})
		return e.do(c, "POST", "/v1/key/decrypt/"+name, string(body))
	}
	ctxBytes := []byte(`{"bucket":"bucket/object"}`)
	for _, name := range []string{"k", "c"} {
		// generate: empty body, {}, a context, a chunked body, an ignored version.
		for _, tc := range []struct {
			what string
			body any
			ctx  []byte
		}{
			{"empty body", nil, nil},
			{"{}", `{}`, nil},
			{"context", `{"context":"` + b64(ctxBytes) + `"}`, ctxBytes},
			{"chunked", io.MultiReader(strings.NewReader(`{"context":"` + b64(ctxBytes) + `"}`)), ctxBytes},
			{"version", `{"context":"` + b64(ctxBytes) + `","version":"v7"}`, ctxBytes},
			{"numeric version", `{"version":3}`, nil},
		} {
			client := c
			if tc.what == "chunked" {
				client = h1
			}
			r := e.do(client, "POST", "/v1/key/generate/"+name, tc.body)
			var dek generateResponse
			if r.code != 200 || json.Unmarshal([]byte(r.body), &dek) != nil || len(dek.Plaintext) != 32 || len(dek.Ciphertext) != 76 {
				t.Fatalf("generate %s %s: %d %s", name, tc.what, r.code, r.body)
			}
			if r.hdr.Get("Content-Type") != "application/json" || !strings.HasSuffix(r.body, "}\n") {
				t.Errorf("generate: %q %q", r.hdr.Get("Content-Type"), r.body)
			}
			r = decrypt(name, dek.Ciphertext, tc.ctx)
			var out decryptResponse
			if r.code != 200 || json.Unmarshal([]byte(r.body), &out) != nil || !bytes.Equal(out.Plaintext, dek.Plaintext) {
				t.Errorf("decrypt DEK %s %s: %d %s", name, tc.what, r.code, r.body)
			}
			if tc.ctx != nil {
				decrypt(name, dek.Ciphertext, nil).expectError(t, "decrypt without context", 400, msgDecrypt)
			}
		}
		// Two DEKs differ in plaintext and ciphertext.
		var d1, d2 generateResponse
		json.Unmarshal([]byte(e.do(c, "PUT", "/v1/key/generate/"+name, nil).body), &d1)
		json.Unmarshal([]byte(e.do(c, "PUT", "/v1/key/generate/"+name, nil).body), &d2)
		if bytes.Equal(d1.Plaintext, d2.Plaintext) || bytes.Equal(d1.Ciphertext, d2.Ciphertext) {
			t.Error("two DEKs are equal")
		}

		// encrypt: +44 bytes, empty plaintext allowed, non-deterministic.
		pt := bytes.Repeat([]byte("x"), 1024)
		ad := make([]byte, 80)
		var ct1, ct2 encryptResponse
		body, _ := json.Marshal(encryptRequest{Plaintext: pt, Context: ad})
		json.Unmarshal([]byte(e.do(c, "PUT", "/v1/key/encrypt/"+name, string(body)).body), &ct1)
		json.Unmarshal([]byte(e.do(c, "PUT", "/v1/key/encrypt/"+name, string(body)).body), &ct2)
		if len(ct1.Ciphertext) != len(pt)+44 || bytes.Equal(ct1.Ciphertext, ct2.Ciphertext) {
			t.Errorf("encrypt: %d bytes, deterministic=%v", len(ct1.Ciphertext), bytes.Equal(ct1.Ciphertext, ct2.Ciphertext))
		}
		var out decryptResponse
		json.Unmarshal([]byte(decrypt(name, ct1.Ciphertext, ad).body), &out)
		if !bytes.Equal(out.Plaintext, pt) {
			t.Error("encrypt/decrypt round trip failed")
		}
		var empty encryptResponse
		json.Unmarshal([]byte(e.do(c, "PUT", "/v1/key/encrypt/"+name, `{"plaintext":""}`).body), &empty)
		if len(empty.Ciphertext) != 44 {
			t.Errorf("empty plaintext: %d bytes", len(empty.Ciphertext))
		}
		e.do(c, "PUT", "/v1/key/encrypt/"+name, nil).expectError(t, "encrypt empty body", 400, "invalid request body")
		e.do(c, "PUT", "/v1/key/encrypt/"+name, `{"plaintext":1}`).expectError(t, "encrypt bad body", 400, "invalid request body")

		// decrypt failures.
		tampered := bytes.Clone(ct1.Ciphertext)
		tampered[0] ^= 1
		decrypt(name, tampered, ad).expectError(t, "tampered", 400, msgDecrypt)
		decrypt(name, ct1.Ciphertext, nil).expectError(t, "wrong context", 400, msgDecrypt)
		decrypt(name, make([]byte, 28), nil).expectError(t, "28 bytes", 400, msgDecrypt)
		e.do(c, "PUT", "/v1/key/decrypt/"+name, `{}`).expectError(t, "decrypt {}", 400, msgDecrypt)
		e.do(c, "PUT", "/v1/key/decrypt/"+name, ``).expectError(t, "decrypt empty", 400, "invalid request body")
		e.do(c, "PUT", "/v1/key/decrypt/"+name, `{"ciphertext":`).expectError(t, "decrypt bad json", 400, "invalid request body")

		// hmac: 32 bytes, deterministic, different per message.
		mac := func(msg string) []byte {
			var out hmacResponse
			r := e.do(c, "PUT", "/v1/key/hmac/"+name, `{"message":"`+b64([]byte(msg))+`"}`)
			if r.code != 200 || json.Unmarshal([]byte(r.body), &out) != nil || len(out.HMAC) != 32 {
				t.Fatalf("hmac: %d %s", r.code, r.body)
			}
			return out.HMAC
		}
		if !bytes.Equal(mac("a"), mac("a")) || bytes.Equal(mac("a"), mac("b")) {
			t.Error("hmac is not deterministic per message")
		}
		e.do(c, "PUT", "/v1/key/hmac/"+name, ``).expectError(t, "hmac empty body", 400, "invalid request body")
	}
	for _, path := range []string{"/v1/key/generate/nope", "/v1/key/encrypt/nope", "/v1/key/decrypt/nope", "/v1/key/hmac/nope"} {
		e.do(c, "PUT", path, `{}`).expectError(t, path, 404, msgKeyNotFound)
	}
	e.do(c, "PUT", "/v1/key/generate/k", `{"context":`).expectError(t, "generate bad json", 400, "invalid request body")

	// A key without HMAC key (migrated from old KES).
	old, err := seal.ImportKeyWithHMAC(seal.AES256, make([]byte, 32), nil)
	if err != nil {
		t.Fatal(err)
	}
	e.seedSealed("old", old, false)
	e.do(c, "PUT", "/v1/key/hmac/old", `{"message":""}`).expectError(t, "hmac without key", 409, "key does not support HMAC")

	// A stored key that does not unseal is our failure (502), never the
	// client's 400.
	e.fc.set(func(f *fakeCluster) {
		rec := f.keys["k"]
		rec.Name, rec.Sealed = "broken", bytes.Clone(rec.Sealed)
		f.keys["broken"] = rec // sealed under another name: not authentic
	})
	e.do(c, "PUT", "/v1/key/decrypt/broken", `{}`).expectError(t, "unsealable", 502, "failed to read key")
}

// §16 items 28-30: ciphertexts of other implementations (spec §6 vectors)
// decrypt after importing their key.
func TestDecryptVectors(t *testing.T) {
	raw, err := os.ReadFile("testdata/kes-vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Vectors []struct {
			ID, Algorithm, Key, Context, Ciphertext, Plaintext string
		}
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	c := e.client(&e.admin, false)
	for _, v := range file.Vectors {
		name := "vec-" + v.ID
		e.do(c, "POST", "/v1/key/import/"+name, `{"key":"`+v.Key+`","cipher":"`+v.Algorithm+`"}`).expectEmpty(t, "import "+v.ID)
		e.do(c, "POST", "/v1/key/decrypt/"+name, `{"ciphertext":"`+v.Ciphertext+`","context":"`+v.Context+`"}`).
			expect(t, "decrypt "+v.ID, 200, `{"plaintext":"`+v.Plaintext+`"}`+"\n")
	}
}

// Sealed node: every key route is 503; /version and /v1/status answer.
func TestSealed(t *testing.T) {
	e := newEnv(t)
	e.seedKey("k", seal.AES256, nil, false)
	e.kr.Store(nil)
	c := e.client(&e.admin, false)
	for _, tc := range []struct{ method, path, body string }{
		{"PUT", "/v1/key/create/new", ""},
		{"PUT", "/v1/key/import/new", `{"key":"` + b64(make([]byte, 32)) + `","cipher":"AES256"}`},
		{"DELETE", "/v1/key/delete/k", ""},
		{"PUT", "/v1/key/generate/k", ""},
		{"PUT", "/v1/key/encrypt/k", `{"plaintext":""}`},
		{"PUT", "/v1/key/decrypt/k", `{"ciphertext":""}`},
		{"PUT", "/v1/key/hmac/k", `{"message":""}`},
		{"GET", "/v1/key/describe/k", ""},
		{"GET", "/v1/key/list/", ""},
		{"GET", "/v1/key/list", ""},
	} {
		e.do(c, tc.method, tc.path, tc.body).expectError(t, "sealed "+tc.path, 503, msgSealed)
	}
	if r := e.do(c, "GET", "/version", nil); r.code != 200 {
		t.Errorf("sealed version: %d", r.code)
	}
	e.do(c, "GET", "/v1/ready", nil).expectError(t, "sealed ready", 504, "key store is not reachable")
	var st map[string]any
	r := e.do(c, "GET", "/v1/status", nil)
	if err := json.Unmarshal([]byte(r.body), &st); err != nil || r.code != 200 {
		t.Fatalf("sealed status: %d %s", r.code, r.body)
	}
	if st["keystore_unreachable"] != true || st["keystore_unavailable"] != true || st["keystore_latency"] != nil {
		t.Errorf("sealed status flags: %s", r.body)
	}
	if _, err := e.fc.GetKey("k"); err != nil {
		t.Error("sealed delete removed the key")
	}
}

// design.md §3: a local miss waits for the leader before answering 404.
func TestReadBarrier(t *testing.T) {
	e := newEnv(t)
	c := e.client(&e.admin, false)
	e.seedKey("elsewhere", seal.AES256, nil, true) // committed, not yet applied here
	if r := e.do(c, "GET", "/v1/key/describe/elsewhere", nil); r.code != 200 {
		t.Errorf("describe after barrier: %d %s", r.code, r.body)
	}
	e.seedKey("gen", seal.AES256, nil, true)
	if r := e.do(c, "PUT", "/v1/key/generate/gen", nil); r.code != 200 {
		t.Errorf("generate after barrier: %d %s", r.code, r.body)
	}
	n := e.fc.barrierCount()
	if n != 2 {
		t.Errorf("%d barriers, want 2", n)
	}
	e.do(c, "GET", "/v1/key/describe/elsewhere", nil) // a local hit: no barrier
	if e.fc.barrierCount() != n {
		t.Error("a local hit ran a barrier")
	}
	e.do(c, "GET", "/v1/key/describe/missing", nil).expectError(t, "missing", 404, msgKeyNotFound)
	if e.fc.barrierCount() != n+1 {
		t.Error("a miss did not run a barrier")
	}
	e.fc.set(func(f *fakeCluster) { f.barrierErr = cluster.ErrNoLeader })
	for _, path := range []string{"/v1/key/describe/missing", "/v1/key/generate/missing"} {
		method := "GET"
		if strings.Contains(path, "generate") {
			method = "PUT"
		}
		e.do(c, method, path, nil).expectError(t, "no leader "+path, 503, "cannot confirm the key does not exist: no leader reachable")
	}
	if r := e.do(c, "GET", "/v1/key/describe/elsewhere", nil); r.code != 200 {
		t.Errorf("local hit without a leader: %d", r.code)
	}
}

// design.md §3 and style.md §9 item 1: ambiguous writes.
func TestUnknownOutcome(t *testing.T) {
	e := newEnv(t)
	c := e.client(&e.admin, false)

	// Applied, but the caller was told "unknown": our RequestID is in the
	// record, so the create succeeded.
	e.fc.set(func(f *fakeCluster) { f.afterErr = cluster.ErrUnknownOutcome })
	e.do(c, "PUT", "/v1/key/create/amb", nil).expectEmpty(t, "ambiguous create, applied")
	e.do(c, "PUT", "/v1/key/import/amb2", `{"key":"`+b64(make([]byte, 32))+`","cipher":"AES256"}`).expectEmpty(t, "ambiguous import, applied")
	e.do(c, "DELETE", "/v1/key/delete/amb", nil).expectEmpty(t, "ambiguous delete, applied")
	// An existing key with another RequestID: not ours, so still unknown.
	e.do(c, "PUT", "/v1/key/create/amb2", nil).expectError(t, "ambiguous create of an existing key", 503, "outcome unknown: the change may have been applied")

	// Not applied: the outcome stays unknown, 503 so the client retries.
	e.fc.set(func(f *fakeCluster) { f.afterErr, f.applyErr = nil, cluster.ErrUnknownOutcome })
	e.do(c, "PUT", "/v1/key/create/lost", nil).expectError(t, "ambiguous create, lost", 503, "outcome unknown: the change may have been applied")
	e.do(c, "DELETE", "/v1/key/delete/amb2", nil).expectError(t, "ambiguous delete, lost", 503, "outcome unknown: the change may have been applied")

	// Lost once (the leader died after the command was sent), then the
	// same command is proposed again and applies: the client sees the
	// real outcome, and the request id is the one of the first attempt.
	var ids [][16]byte
	e.fc.set(func(f *fakeCluster) {
		f.applyErr = nil
		f.applyHook = func(_ context.Context, cmd fsm.Command) error {
			if c, ok := cmd.(*fsm.CreateKey); ok {
				ids = append(ids, c.Key.RequestID)
				if len(ids) == 1 {
					return cluster.ErrUnknownOutcome
				}
			}
			return nil
		}
	})
	e.do(c, "PUT", "/v1/key/create/lost-once", nil).expectEmpty(t, "ambiguous create, re-proposed")
	if len(ids) != 2 || ids[0] != ids[1] {
		t.Fatalf("re-proposal: %d attempts, same request id = %v", len(ids), len(ids) == 2 && ids[0] == ids[1])
	}
	if r := e.do(c, "GET", "/v1/key/describe/lost-once", nil); r.code != 200 {
		t.Errorf("re-proposed key: describe = %d", r.code)
	}
	e.fc.set(func(f *fakeCluster) { f.applyHook = nil })

	for _, tc := range []struct {
		err error
		msg string
	}{
		{cluster.ErrNoLeader, "no leader: cannot accept writes"},
		{cluster.ErrNotLeader, "not the leader: cannot accept writes"},
		{cluster.ErrTimeout, "cluster did not answer in time"},
		{cluster.ErrShutdown, "node is shutting down"},
	} {
		e.fc.set(func(f *fakeCluster) { f.applyErr = tc.err })
		e.do(c, "PUT", "/v1/key/create/x", nil).expectError(t, tc.err.Error(), 503, tc.msg)
	}
	// A Result code the API does not expect is a logged 502.
	e.fc.set(func(f *fakeCluster) { f.applyErr = nil })
	e.fc.set(func(f *fakeCluster) {
		f.applyHook = func(context.Context, fsm.Command) error {
			return fsm.Result{Code: fsm.CodeInternal, Message: "bad"}.Err()
		}
	})
	e.do(c, "PUT", "/v1/key/create/x", nil).expectError(t, "internal code", 502, "failed to create key")
}
