package hsm_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/hsm"
	"github.com/kmsd/kmsd/internal/softhsmtest"
	"github.com/miekg/pkcs11"
)

// child runs in a fresh process (TestMain, KMSD_HSM_TEST_CHILD=1): SoftHSM
// reads SOFTHSM2_CONF only at C_Initialize, and this test process already
// initialized it for internal/softhsmtest. It opens the key described by
// CHILD_* variables, checks its attributes, wraps and unwraps, and prints
// the KeyID.
func child() int {
	cfg := hsm.Config{
		ModulePath: os.Getenv("CHILD_MODULE"),
		TokenLabel: os.Getenv("CHILD_TOKEN"),
		PIN:        os.Getenv("CHILD_PIN"),
		KeyLabel:   os.Getenv("CHILD_KEY"),
	}
	if err := childCheck(cfg); err != nil {
		fmt.Println(err)
		return 1
	}
	return 0
}

func childCheck(cfg hsm.Config) error {
	ctx := context.Background()
	m, err := hsm.Open(ctx, cfg) // checks AES-256, encrypt/decrypt, sensitive, non-extractable
	if err != nil {
		return err
	}
	defer m.Close()
	ct, err := m.Wrap(ctx, []byte("rek"), []byte("aad"))
	if err != nil {
		return err
	}
	if pt, err := m.Unwrap(ctx, ct, []byte("aad")); err != nil || string(pt) != "rek" {
		return fmt.Errorf("unwrap: %q, %v", pt, err)
	}
	if err := checkAttributes(cfg); err != nil {
		return err
	}
	fmt.Print(m.KeyID())
	return nil
}

// checkAttributes reads the key's attributes directly through PKCS#11 (the
// Module above keeps the token logged in).
func checkAttributes(cfg hsm.Config) error {
	c := pkcs11.New(cfg.ModulePath)
	_ = c.Initialize() // CKR_CRYPTOKI_ALREADY_INITIALIZED: shared with hsm
	slots, err := c.GetSlotList(true)
	if err != nil {
		return err
	}
	for _, s := range slots {
		if ti, err := c.GetTokenInfo(s); err != nil || ti.Label != cfg.TokenLabel {
			continue
		}
		sh, err := c.OpenSession(s, pkcs11.CKF_SERIAL_SESSION)
		if err != nil {
			return err
		}
		defer c.CloseSession(sh)
		if err := c.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, cfg.KeyLabel)}); err != nil {
			return err
		}
		objs, _, err := c.FindObjects(sh, 2)
		_ = c.FindObjectsFinal(sh)
		if err != nil || len(objs) != 1 {
			return fmt.Errorf("find key: %d objects, %v", len(objs), err)
		}
		want := map[uint]byte{
			pkcs11.CKA_TOKEN: 1, pkcs11.CKA_PRIVATE: 1, pkcs11.CKA_SENSITIVE: 1, pkcs11.CKA_EXTRACTABLE: 0,
			pkcs11.CKA_NEVER_EXTRACTABLE: 1, pkcs11.CKA_ENCRYPT: 1, pkcs11.CKA_DECRYPT: 1,
		}
		for typ, v := range want {
			attrs, err := c.GetAttributeValue(sh, objs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(typ, nil)})
			if err != nil || len(attrs[0].Value) != 1 || attrs[0].Value[0] != v {
				return fmt.Errorf("attribute %#x: %v, %v; want %d", typ, attrs, err, v)
			}
		}
		return nil
	}
	return fmt.Errorf("token %q not found", cfg.TokenLabel)
}

func TestSoftHSMInitScript(t *testing.T) {
	if !softhsmtest.Available() {
		requireOrSkip(t, "SoftHSM2 is not installed")
	}
	for _, tool := range []string{"bash", "softhsm2-util", "pkcs11-tool"} {
		if _, err := exec.LookPath(tool); err != nil {
			requireOrSkip(t, tool+" is not installed (apt-get install softhsm2 opensc)")
		}
	}
	script, err := filepath.Abs("../scripts/softhsm-init.sh")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "hsm")
	const pin = "script-pin-1234"
	run := func() (stdout, stderr string) {
		t.Helper()
		cmd := exec.Command("bash", script, dir, "kmsd-script", "kmsd-wrapping-key")
		cmd.Env = append(os.Environ(), "KMSD_HSM_PIN="+pin, "KMSD_HSM_SO_PIN=so-pin-5678", "KMSD_HSM_MODULE="+softhsmtest.ModulePath())
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s: %v\n%s", script, err, errOut.String())
		}
		return out.String(), errOut.String()
	}
	out, _ := run()
	real, err := filepath.EvalSymlinks(dir) // the script prints the physical path
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(real, "softhsm2.conf")
	if out != "export SOFTHSM2_CONF="+conf+"\n" {
		t.Fatalf("stdout = %q", out)
	}
	first := openInChild(t, conf, "kmsd-script", pin)
	if !strings.HasPrefix(first, "pkcs11:token=kmsd-script;object=kmsd-wrapping-key;") {
		t.Fatalf("KeyID = %q", first)
	}

	out2, stderr2 := run() // idempotent: same token, same key
	if out2 != out || !strings.Contains(stderr2, "nothing to do") {
		t.Fatalf("second run: stdout %q, stderr %q", out2, stderr2)
	}
	if again := openInChild(t, conf, "kmsd-script", pin); again != first {
		t.Fatalf("second run changed the key: %q, then %q", first, again)
	}
}

func requireOrSkip(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("KMSD_REQUIRE_SOFTHSM") == "1" {
		t.Fatal(why + " (KMSD_REQUIRE_SOFTHSM=1)")
	}
	t.Skip(why)
}

// openInChild runs child() in a new process with SOFTHSM2_CONF=conf and
// returns the KeyID it printed.
func openInChild(t *testing.T, conf, token, pin string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SOFTHSM2_CONF=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "SOFTHSM2_CONF="+conf, "KMSD_HSM_TEST_CHILD=1",
		"CHILD_MODULE="+softhsmtest.ModulePath(), "CHILD_TOKEN="+token, "CHILD_PIN="+pin, "CHILD_KEY=kmsd-wrapping-key")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	return string(out)
}
