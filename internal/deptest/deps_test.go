package deptest

import (
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/kmsd/kmsd/"

// forbiddenDirect lists, per package, imports it must not make directly
// (style.md §8.3). Transitive paths through an allowed edge are fine:
// api may reach storage through fsm, but may not import it.
var forbiddenDirect = map[string][]string{
	"storage": {mod + "fsm", mod + "cluster", mod + "api", mod + "seal", mod + "hsm", "github.com/hashicorp/raft"},
	"fsm":     {mod + "seal", mod + "hsm", mod + "api", mod + "cluster", "net/http"},
	"cluster": {mod + "api", mod + "seal", mod + "hsm"},
	"api":     {mod + "hsm", mod + "storage", "github.com/hashicorp/raft", "github.com/dgraph-io/badger/v4", "github.com/miekg/pkcs11"},
}

// leaves depend on nothing of ours, not even transitively, except their
// own sub-packages (seal/shamir).
var leaves = []string{"storage", "seal", "hsm", "health", "internal/logfile"}

func goList(t *testing.T, format, pkg string, deps bool) []string {
	t.Helper()
	args := []string{"list", "-f", format}
	if deps {
		args = append(args, "-deps")
	}
	out, err := exec.Command("go", append(args, pkg)...).CombinedOutput()
	if err != nil {
		t.Fatalf("go list %s: %v\n%s", pkg, err, out)
	}
	return strings.Fields(string(out))
}

func TestImportDirections(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go tool not in PATH")
	}
	for pkg, bad := range forbiddenDirect {
		imports := map[string]bool{}
		for _, d := range goList(t, `{{join .Imports " "}}`, mod+pkg, false) {
			imports[d] = true
		}
		for _, b := range bad {
			if imports[b] {
				t.Errorf("%s must not import %s (style.md §8.3)", pkg, b)
			}
		}
	}
	for _, pkg := range leaves {
		for _, d := range goList(t, "{{.ImportPath}}", mod+pkg, true) {
			own := d == mod+pkg || strings.HasPrefix(d, mod+pkg+"/")
			if strings.HasPrefix(d, mod) && !own {
				t.Errorf("%s is a leaf but depends on %s", pkg, d)
			}
		}
	}
}

// The AGPL KES client may only be used by the separate compat module.
func TestNoAGPLInMainModule(t *testing.T) {
	for _, d := range goList(t, "{{.ImportPath}}", mod+"...", true) {
		if strings.HasPrefix(d, "github.com/minio/") {
			t.Errorf("main module depends on %s (AGPL): only compat/ may", d)
		}
	}
}
