package main

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/cluster"
)

func clusterTLSConfig(cert, key, ca, advertise string) *fileConfig {
	c := &fileConfig{}
	c.Cluster.Advertise = advertise
	c.Cluster.TLS.Cert, c.Cluster.TLS.Key, c.Cluster.TLS.CA = cert, key, ca
	return c
}

func TestBuildClusterTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, dir, "cluster-ca")
	other := newTestCA(t, dir, "other-ca")
	cert, key := ca.issue(t, dir, "node1", []string{"127.0.0.1"})
	srvOnly, srvOnlyKey := ca.issue(t, dir, "srv-only", []string{"127.0.0.1"}, x509.ExtKeyUsageServerAuth)
	cliOnly, cliOnlyKey := ca.issue(t, dir, "cli-only", []string{"127.0.0.1"}, x509.ExtKeyUsageClientAuth)
	foreign, foreignKey := other.issue(t, dir, "foreign", []string{"127.0.0.1"})
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}

	got, err := buildClusterTLS(clusterTLSConfig(cert, key, ca.path, "127.0.0.1:7374"))
	if err != nil {
		t.Fatal(err)
	}
	if got.MinVersion != tls.VersionTLS13 || got.ClientAuth != tls.RequireAndVerifyClientCert ||
		got.RootCAs == nil || got.ClientCAs == nil || len(got.Certificates) != 1 {
		t.Fatalf("node-channel TLS = %+v", got)
	}
	// A DNS advertise address named in the certificate is fine too.
	if _, err := buildClusterTLS(clusterTLSConfig(cert, key, ca.path, "node1:7374")); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name, cert, key, ca, adv, want string
	}{
		{"serverAuth only", srvOnly, srvOnlyKey, ca.path, "127.0.0.1:7374", "not a valid clientAuth certificate"},
		{"clientAuth only", cliOnly, cliOnlyKey, ca.path, "127.0.0.1:7374", "not a valid serverAuth certificate"},
		{"other CA", foreign, foreignKey, ca.path, "127.0.0.1:7374", "under the cluster CA"},
		{"advertise not in SAN", cert, key, ca.path, "10.9.9.9:7374", "does not name the advertise host \"10.9.9.9\""},
		{"CA not PEM", cert, key, garbage, "127.0.0.1:7374", "cluster.tls: ca: no PEM certificates"},
		{"CA missing", cert, key, filepath.Join(dir, "nope.crt"), "127.0.0.1:7374", "cluster.tls: ca:"},
		{"key mismatch", cert, foreignKey, ca.path, "127.0.0.1:7374", "cluster.tls:"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := buildClusterTLS(clusterTLSConfig(tt.cert, tt.key, tt.ca, tt.adv))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestClusterTLSConfigIsACopy(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, dir, "cluster-ca")
	cert, key := ca.issue(t, dir, "node1", []string{"127.0.0.1"})
	var r clusterTLS
	if r.config() != nil {
		t.Fatal("config before load should be nil")
	}
	if err := r.load(clusterTLSConfig(cert, key, ca.path, "127.0.0.1:7374")); err != nil {
		t.Fatal(err)
	}
	a := r.config()
	a.NextProtos = []string{"x"} // what the cluster package does per connection
	if b := r.config(); len(b.NextProtos) != 0 || b == a {
		t.Fatal("config() must return a fresh copy per call")
	}
}

func TestPrintStatus(t *testing.T) {
	st := cluster.Status{
		NodeID: "node2", State: "Follower", Leader: "node1", LeaderAddr: "10.0.0.1:7374",
		Term: 4, CommitIndex: 12, AppliedIndex: 10, FailureTolerance: 1,
		Members: []cluster.Member{
			{ID: "node1", Addr: "10.0.0.1:7374", Suffrage: "Voter", Health: cluster.Health{Reachable: true, State: "Leader", Applied: 10}},
			{ID: "node2", Addr: "10.0.0.2:7374", Suffrage: "Voter", Health: cluster.Health{Reachable: true, State: "Follower", Applied: 7}},
			{ID: "node3", Addr: "10.0.0.3:7374", Suffrage: "Voter", Health: cluster.Health{Err: "connection refused"}},
		},
	}
	var b strings.Builder
	printStatus(&b, st)
	for _, want := range []string{
		"node               node2 (follower)",
		"leader             node1 (10.0.0.1:7374)",
		"failure tolerance  1 of 3 voters",
		"node1 *  10.0.0.1:7374  Voter     ok           leader    10       0",
		"node2    10.0.0.2:7374  Voter     ok           follower  7        3",
		"node3    10.0.0.3:7374  Voter     unreachable  -         -        -       connection refused",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, b.String())
		}
	}
	j := statusJSONOf(st)
	if j.Voters != 3 || !j.Members[0].Leader || j.Members[2].Reachable || j.Members[2].Error == "" {
		t.Errorf("json shape: %+v", j)
	}
}
