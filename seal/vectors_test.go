package seal

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"testing"
)

const (
	vectorsCopy   = "testdata/kes-vectors.json"
	vectorsShared = "../../shared/spec/kes-vectors.json" // shared/ beside the repository
)

type kesVector struct {
	ID         string `json:"id"`
	Format     string `json:"format"`
	Algorithm  string `json:"algorithm"`
	Key        []byte `json:"key"`
	Context    []byte `json:"context"`
	Ciphertext []byte `json:"ciphertext"`
	Plaintext  []byte `json:"plaintext"`
}

func loadVectors(t *testing.T, path string) []kesVector {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Vectors []kesVector `json:"vectors"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(f.Vectors) == 0 {
		t.Fatalf("%s: no vectors", path)
	}
	return f.Vectors
}

func testVectors(t *testing.T, path string) {
	for _, v := range loadVectors(t, path) {
		t.Run(v.ID+"/"+v.Format, func(t *testing.T) {
			t.Parallel()
			alg, err := ParseAlgorithm(v.Algorithm)
			if err != nil {
				t.Fatal(err)
			}
			k, err := ImportKey(alg, v.Key, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := k.Decrypt(v.Ciphertext, v.Context)
			if err != nil {
				t.Fatalf("Decrypt: %v", err)
			}
			if !bytes.Equal(got, v.Plaintext) {
				t.Fatalf("plaintext %x, want %x", got, v.Plaintext)
			}
			// Wrong associated data must fail.
			if _, err := k.Decrypt(v.Ciphertext, append(v.Context, 1)); !errors.Is(err, ErrDecrypt) {
				t.Fatalf("Decrypt with other context: %v, want ErrDecrypt", err)
			}
			// The stored key's algorithm is used, whatever the ciphertext names.
			other := AES256
			if alg == AES256 {
				other = ChaCha20
			}
			k2, _ := ImportKey(other, v.Key, nil)
			if _, err := k2.Decrypt(v.Ciphertext, v.Context); !errors.Is(err, ErrDecrypt) {
				t.Fatalf("Decrypt under %v: %v, want ErrDecrypt", other, err)
			}
			// The independent reference opens the raw form too.
			if v.Format == "raw" {
				if p, err := refDecrypt(alg, v.Key, v.Ciphertext, v.Context); err != nil || !bytes.Equal(p, v.Plaintext) {
					t.Fatalf("reference: %x, %v", p, err)
				}
			}
		})
	}
}

// TestKESVectors runs the known-answer vectors from the copy in testdata,
// so the test does not need shared/.
func TestKESVectors(t *testing.T) { testVectors(t, vectorsCopy) }

// TestKESVectorsShared runs the vectors from shared/spec when it is
// checked out beside the repository, and checks the copy is current.
func TestKESVectorsShared(t *testing.T) {
	shared, err := os.ReadFile(vectorsShared)
	if errors.Is(err, fs.ErrNotExist) {
		t.Skipf("%s not present", vectorsShared)
	}
	if err != nil {
		t.Fatal(err)
	}
	local, err := os.ReadFile(vectorsCopy)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(shared, local) {
		t.Fatalf("%s differs from %s: copy it again", vectorsCopy, vectorsShared)
	}
	testVectors(t, vectorsShared)
}

// TestKESVectorsCount guards against a truncated copy: the spec lists V1-V8
// with all three formats.
func TestKESVectorsCount(t *testing.T) {
	formats := map[string]int{}
	vs := loadVectors(t, vectorsCopy)
	for _, v := range vs {
		formats[v.Format]++
	}
	if len(vs) < 8 || formats["raw"] == 0 || formats["legacy-json"] == 0 || formats["legacy-msgpack"] == 0 {
		t.Fatalf("vectors: %d, formats %v", len(vs), formats)
	}
}
