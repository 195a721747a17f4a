package compat

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/kms-go/kes"
)

// TestRecovery is the break-glass path on real processes and SoftHSM
// tokens (issue 4, item 4). One three-node cluster is initialised with
// 5 recovery shares (threshold 3), keys and DEKs are made, a snapshot is
// saved, then every node is stopped and its data dir AND SoftHSM token
// are deleted. From the snapshot:
//
//   - EveryHSMLost: a new three-node cluster with new tokens (new HSM
//     keys) is recovered with 3 of the 5 shares; too few, mistyped and
//     wrong shares fail cleanly first.
//   - HSMHoldsStanzaKey: a new node holding a copy of an old node's token
//     (the same HSM key) recovers without shares; it is interrupted
//     (SIGKILL) right after it starts and, later, given the staged
//     snapshot again; a second node joins.
//
// Every old key is listed and described on every new node, and every old
// DEK ciphertext decrypts to its plaintext through kms-go.
func TestRecovery(t *testing.T) {
	requireSoftHSM(t)
	start := time.Now()

	// The old cluster.
	t0 := time.Now()
	old := recNewCluster(t, 3, 0)
	out, err := old.nodes[0].cli("init", "--config", old.nodes[0].cfgPath, "--recovery-shares", "5", "--recovery-threshold", "3")
	if err != nil {
		t.Fatalf("kmsd init --recovery-shares 5 --recovery-threshold 3: %v\n%s", err, out)
	}
	shares := shareRE.FindAllString(string(out), -1)
	if len(shares) != 5 {
		t.Fatalf("kmsd init printed %d recovery shares, want 5:\n%s", len(shares), out)
	}
	if !strings.Contains(string(out), "any 3 of them recover it") {
		t.Errorf("kmsd init does not tell the operator the threshold:\n%s", out)
	}
	old.startAll(t)
	t.Logf("old cluster: init with 5 recovery shares + 3 nodes formed in %v", time.Since(t0).Round(time.Millisecond))

	t0 = time.Now()
	w := writeRecoveryData(t, old)
	snap := filepath.Join(t.TempDir(), "old.snap")
	if out, err := old.nodes[0].cli("snapshot", "save", snap, "--config", old.nodes[0].cfgPath); err != nil {
		t.Fatalf("kmsd snapshot save: %v\n%s", err, out)
	}
	t.Logf("old cluster: %d keys, %d DEKs, snapshot saved in %v", len(w.names), len(w.deks), time.Since(t0).Round(time.Millisecond))

	// The shares were never written to disk: not in any file of any node.
	for _, n := range old.nodes {
		assertNoShareOnDisk(t, n.dir, shares)
	}

	// Keep a copy of node0's token (for HSMHoldsStanzaKey), then lose
	// everything: processes, data dirs, tokens.
	savedToken := filepath.Join(t.TempDir(), "node0-tokens")
	recCopyDir(t, filepath.Join(old.nodes[0].hsmDir, "tokens"), savedToken)
	for _, n := range old.nodes {
		n.stop(t, syscall.SIGTERM)
		if err := os.RemoveAll(n.dataDir); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(n.hsmDir); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("EveryHSMLost", func(t *testing.T) {
		t0 := time.Now()
		nc := recNewCluster(t, 3, 100)
		n0 := nc.nodes[0]
		sharesFile := func(lines ...string) string {
			p := filepath.Join(t.TempDir(), "shares.txt")
			if err := os.WriteFile(p, []byte("# recovery shares\n"+strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}
		typo := []byte(shares[3])
		typo[len("kmsd-share-v1-")+20] ^= 1
		for _, tc := range []struct {
			name string
			args []string
			want string
		}{
			{"no shares", nil, "pass --recovery-shares-file"},
			{"too few shares", []string{"--recovery-shares-file", sharesFile(shares[0], shares[4])}, "too few shares: 2 of 3 needed"},
			{"a typo", []string{"--recovery-shares-file", sharesFile(shares[0], string(typo), shares[4])}, "line 3: shamir: share checksum mismatch"},
			{"a wrong share", []string{"--recovery-shares-file", sharesFile(shares[0], wrongShare(shares[2]), shares[4])}, "combine to another key than root key " + w.rekID},
		} {
			out, err := n0.cli(append([]string{"init", "--config", n0.cfgPath, "--restore", snap}, tc.args...)...)
			if err == nil {
				t.Fatalf("%s: kmsd init --restore succeeded:\n%s", tc.name, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Errorf("%s: output lacks %q:\n%s", tc.name, tc.want, out)
			}
			for _, s := range shares {
				if strings.Contains(string(out), shareValue(s)[:16]) {
					t.Errorf("%s: the error quotes a share:\n%s", tc.name, out)
				}
			}
			if _, err := os.Stat(filepath.Join(n0.dataDir, "seal.stanza")); err == nil {
				t.Fatalf("%s: a refused init wrote seal.stanza", tc.name)
			}
			t.Logf("%s: refused: %s", tc.name, bytes.TrimSpace(out))
		}
		// The message names the HSM keys that could unseal the snapshot.
		out, _ := n0.cli("init", "--config", n0.cfgPath, "--restore", snap)
		for _, o := range old.nodes {
			if !strings.Contains(string(out), "token="+o.token+";") {
				t.Errorf("the refusal does not list %s's HSM key:\n%s", o.opts.Name, out)
			}
		}

		t1 := time.Now()
		out, err := n0.cli("init", "--config", n0.cfgPath, "--restore", snap, "--recovery-shares-file", sharesFile(shares[1], shares[3], shares[4]))
		if err != nil {
			t.Fatalf("kmsd init --restore with 3 of 5 shares: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "combined from 3 recovery shares") || !strings.Contains(string(out), w.rekID) {
			t.Errorf("kmsd init --restore output:\n%s", out)
		}
		t.Logf("init --restore with 3 shares took %v:\n%s", time.Since(t1).Round(time.Millisecond), bytes.TrimSpace(out))
		t1 = time.Now()
		nc.startAll(t)
		t.Logf("new cluster (new HSM keys) restored and formed in %v", time.Since(t1).Round(time.Millisecond))
		if _, err := os.Stat(filepath.Join(n0.dataDir, "init.restore")); err == nil {
			t.Error("the staged snapshot is still in node0's data dir after the restore")
		}
		w.check(t, nc.nodes)

		// The new state lists the new HSM keys: a snapshot of the new
		// cluster is unsealable by a joined node's own HSM.
		snap2 := filepath.Join(t.TempDir(), "new.snap")
		if out, err := n0.cli("snapshot", "save", snap2, "--config", n0.cfgPath); err != nil {
			t.Fatalf("kmsd snapshot save on the new cluster: %v\n%s", err, out)
		}
		j := nc.nodes[2]
		if out, err := j.cli("snapshot", "verify", snap2, "--config", j.cfgPath); err != nil {
			t.Errorf("kmsd snapshot verify with joined node %s's HSM: %v\n%s", j.opts.Name, err, out)
		}
		t.Logf("EveryHSMLost took %v", time.Since(t0).Round(time.Millisecond))
	})

	t.Run("HSMHoldsStanzaKey", func(t *testing.T) {
		t0 := time.Now()
		nc := recNewCluster(t, 2, 200)
		n0 := nc.nodes[0] // token label kmsd-node0, like the old node0
		tokens := filepath.Join(n0.hsmDir, "tokens")
		if err := os.RemoveAll(tokens); err != nil {
			t.Fatal(err)
		}
		recCopyDir(t, savedToken, tokens)
		out, err := n0.cli("init", "--config", n0.cfgPath, "--restore", snap)
		if err != nil {
			t.Fatalf("kmsd init --restore (old HSM key, no shares): %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "unwrapped by this node's HSM key") {
			t.Errorf("kmsd init --restore output:\n%s", out)
		}
		t.Logf("init --restore with the old HSM key:\n%s", bytes.TrimSpace(out))

		// Interrupted: SIGKILL as soon as the API answers, then again.
		t1 := time.Now()
		n0.start(t, nil)
		nc.kill(t, n0)
		_, statErr := os.Stat(filepath.Join(n0.dataDir, "init.restore"))
		n0.start(t, nil)
		n0.waitServing(t)
		t.Logf("killed right after start (staged snapshot still there: %v), restarted, serving after %v",
			statErr == nil, time.Since(t1).Round(time.Millisecond))
		w.check(t, nc.nodes[:1])

		// A crash after the restore but before the staged file was
		// deleted: the restart restores the same snapshot again.
		n0.stop(t, syscall.SIGTERM)
		recCopyFile(t, snap, filepath.Join(n0.dataDir, "init.restore"))
		t1 = time.Now()
		n0.start(t, nil)
		n0.waitServing(t)
		if _, err := os.Stat(filepath.Join(n0.dataDir, "init.restore")); err == nil {
			t.Error("the re-staged snapshot was not restored and deleted")
		}
		logText, _ := os.ReadFile(n0.logPath)
		if c := strings.Count(string(logText), "restored the staged snapshot"); c < 2 {
			t.Errorf("the log shows %d restores of the staged snapshot, want at least 2", c)
		}
		t.Logf("restored the re-staged snapshot again: serving after %v", time.Since(t1).Round(time.Millisecond))

		// A fresh node joins and receives the REK by hand-over.
		t1 = time.Now()
		nc.nodes[1].start(t, nil)
		nc.nodes[1].waitServing(t)
		nc.waitConverged(t)
		t.Logf("second node joined in %v", time.Since(t1).Round(time.Millisecond))
		w.check(t, nc.nodes)
		t.Logf("HSMHoldsStanzaKey took %v", time.Since(t0).Round(time.Millisecond))
	})
	t.Logf("TestRecovery took %v", time.Since(start).Round(time.Millisecond))
}

var shareRE = regexp.MustCompile(`kmsd-share-v1-[0-9a-f]{8}-\d+-\d+-[a-z2-7]+-[0-9a-f]{8}`)

// shareValue is the base32 value field of a share text.
func shareValue(s string) string { return strings.Split(s, "-")[6] }

// wrongShare changes a share's value and recomputes its checksum (the
// format is documented: SHA-256 of the text before the last '-', first 4
// bytes in hex): a well-formed share of the right shape that is wrong.
func wrongShare(s string) string {
	f := strings.Split(s, "-")
	v := []byte(f[6])
	v[0] = map[bool]byte{true: 'b', false: 'a'}[v[0] == 'a']
	f[6] = string(v)
	body := strings.Join(f[:7], "-")
	sum := sha256.Sum256([]byte(body))
	return body + "-" + hex.EncodeToString(sum[:4])
}

// recNewCluster prepares n nodes (tokens, certificates, configs) with
// no `kmsd init` anywhere: the test runs init itself on node0.
// Its write-barrier keys are numbered from barrierBase, so they do not
// collide with those restored from another cluster's snapshot.
func recNewCluster(t *testing.T, n, barrierBase int) *testCluster {
	t.Helper()
	c := newTestCluster(t, n, func(_ int, o *nodeOptions) {
		o.Join = true // no init: the test runs it on node0
	})
	c.barriers = barrierBase
	return c
}

// recoveryData is what the old cluster held: key names, DEKs and
// ciphertexts (with their plaintexts) to check after the recovery.
type recoveryData struct {
	rekID string
	names []string
	deks  []issuedDEK
}

type issuedDEK struct {
	key     string
	ad      []byte
	pt, ct  []byte
	encrypt bool // ct is an Encrypt ciphertext, not a DEK
}

func writeRecoveryData(t *testing.T, c *testCluster) recoveryData {
	t.Helper()
	ctx := ctxT(t)
	cls := c.perNode()
	var w recoveryData
	for i := range 4 {
		name := fmt.Sprintf("rec-key-%d", i)
		if err := cls[i%len(cls)].CreateKey(ctx, name); err != nil {
			t.Fatalf("CreateKey %s: %v", name, err)
		}
	}
	if err := cls[1].ImportKey(ctx, "rec-imported", &kes.ImportKeyRequest{Key: randBytes(32), Cipher: kes.ChaCha20}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"rec-key-0", "rec-key-1", "rec-key-2", "rec-key-3", "rec-imported", presetKey} {
		for j, cl := range cls {
			ad := []byte(fmt.Sprintf("%s/%d", name, j))
			dek, err := cl.GenerateKey(ctx, name, ad)
			if err != nil {
				t.Fatalf("GenerateKey %s on node%d: %v", name, j, err)
			}
			w.deks = append(w.deks, issuedDEK{key: name, ad: ad, pt: dek.Plaintext, ct: dek.Ciphertext})
		}
		pt := randBytes(100)
		ct, err := cls[0].Encrypt(ctx, name, pt, nil)
		if err != nil {
			t.Fatalf("Encrypt %s: %v", name, err)
		}
		w.deks = append(w.deks, issuedDEK{key: name, pt: pt, ct: ct, encrypt: true})
	}
	c.writeBarrier(t)
	w.names = c.nodes[0].keyNames(t)
	st, err := os.ReadFile(filepath.Join(c.nodes[0].dataDir, "seal.stanza"))
	if err != nil {
		t.Fatal(err)
	}
	w.rekID = stanzaREKID(t, st)
	return w
}

// stanzaREKID reads the REK id out of a version-1 stanza (seal/DESIGN.md:
// [0x01] then KeyID, Mechanism, REKID, Wrapped, each [u16 len][bytes]).
func stanzaREKID(t *testing.T, b []byte) string {
	t.Helper()
	if len(b) < 1 || b[0] != 1 {
		t.Fatalf("seal.stanza: unknown version")
	}
	b = b[1:]
	var f []string
	for range 3 {
		if len(b) < 2 {
			t.Fatal("seal.stanza: truncated")
		}
		n := int(b[0])<<8 | int(b[1])
		f = append(f, string(b[2:2+n]))
		b = b[2+n:]
	}
	return f[2]
}

// check asserts on every node: every old key is listed and described,
// and every old DEK and ciphertext decrypts to its plaintext.
func (w recoveryData) check(t *testing.T, nodes []*node) {
	t.Helper()
	ctx := ctxT(t)
	t0 := time.Now()
	decrypted := 0
	for _, n := range nodes {
		cl := n.client(mustAPIKey(t, adminAPIKey))
		have := n.keyNames(t)
		for _, name := range w.names {
			if !slices.Contains(have, name) {
				t.Errorf("%s does not list the old key %s (lists %v)", n.opts.Name, name, have)
				continue
			}
			if _, err := cl.DescribeKey(ctx, name); err != nil {
				t.Errorf("%s: DescribeKey %s: %v", n.opts.Name, name, err)
			}
		}
		for _, d := range w.deks {
			pt, err := cl.Decrypt(ctx, d.key, d.ct, d.ad)
			if err != nil || !bytes.Equal(pt, d.pt) {
				t.Errorf("%s: an old %s of %s does not decrypt to its plaintext: %v (%s)", n.opts.Name, map[bool]string{true: "ciphertext", false: "DEK"}[d.encrypt], d.key, err, describeErr(err))
			}
			decrypted++
		}
	}
	t.Logf("%d nodes: %d old keys listed and described, %d old DEKs/ciphertexts decrypted in %v",
		len(nodes), len(w.names), decrypted, time.Since(t0).Round(time.Millisecond))
}

// assertNoShareOnDisk fails if any file under dir holds a share's value.
func assertNoShareOnDisk(t *testing.T, dir string, shares []string) {
	t.Helper()
	files := 0
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		files++
		for _, s := range shares {
			if bytes.Contains(b, []byte(shareValue(s))) || bytes.Contains(b, []byte(strings.ToUpper(shareValue(s)))) {
				t.Errorf("%s holds a recovery share", p)
			}
		}
		return nil
	})
	if files == 0 {
		t.Errorf("no files under %s", dir)
	}
}

func recCopyDir(t *testing.T, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -a %s %s: %v\n%s", src, dst, err, out)
	}
}

func recCopyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
