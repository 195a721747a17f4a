package deptest

import (
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/kmsd/kmsd/"

// forbidden lists, per package, the packages it must not depend on,
// directly or transitively.
var forbidden = map[string][]string{
	"storage": {mod + "fsm", mod + "cluster", mod + "api", mod + "seal", mod + "hsm", "github.com/hashicorp/raft"},
	"fsm":     {mod + "seal", mod + "hsm", mod + "api", mod + "cluster", "net/http"},
	"seal":    {mod + "hsm", mod + "storage", mod + "fsm", mod + "cluster", mod + "api"},
	"hsm":     {mod + "seal", mod + "storage", mod + "fsm", mod + "cluster", mod + "api"},
	"cluster": {mod + "api", mod + "seal", mod + "hsm"},
	"api":     {mod + "hsm", mod + "storage", "github.com/hashicorp/raft", "github.com/dgraph-io/badger/v4", "github.com/miekg/pkcs11"},
}

func TestImportDirections(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go tool not in PATH")
	}
	for pkg, bad := range forbidden {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", mod+pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		deps := map[string]bool{}
		for _, d := range strings.Fields(string(out)) {
			deps[d] = true
		}
		for _, b := range bad {
			if deps[b] {
				t.Errorf("%s must not depend on %s (style.md §8.3)", pkg, b)
			}
		}
	}
}

// The AGPL KES client may only be used by the separate compat module.
func TestNoAGPLInMainModule(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", mod+"...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, d := range strings.Fields(string(out)) {
		if strings.HasPrefix(d, "github.com/minio/") {
			t.Errorf("main module depends on %s (AGPL): only compat/ may", d)
		}
	}
}
