package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kmsd/kmsd/fsm"
)

// TestTLSCluster: formation through peers (with a peer that is down at
// first), forwarding, follower read barriers, ambiguous writes, status,
// leadership transfer, failover and removal, all over the mTLS channel.
func TestTLSCluster(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	addrs := reservePorts(t, 3)

	// n2 starts first: nobody is up, its join attempts fail and it retries.
	var n2logs logBuffer
	n2 := newTLSNode(t, ca, "n2", addrs[1], false, addrs, func(c *Config) { c.Logger = n2logs.logger() })
	time.Sleep(700 * time.Millisecond) // ≥ 2 attempts (250 ms, then ~500 ms backoff)
	select {
	case <-n2.node.Joined():
		t.Fatal("n2 joined with no cluster up")
	default:
	}
	n1 := newTLSNode(t, ca, "n1", addrs[0], true, addrs, nil)
	n1.waitLeader()
	waitJoined(t, n2)
	// n3 asks the follower n2 first, which forwards the join to n1.
	n3 := newTLSNode(t, ca, "n3", addrs[2], false, []string{addrs[2], addrs[1], addrs[0]}, nil)
	waitJoined(t, n3)
	if !n2logs.line(`msg="node joined"`, "id=n3") {
		t.Fatal("n3 did not join through n2")
	}
	all := []*testNode{n1, n2, n3}
	for _, tn := range all {
		if err := tn.node.WaitLeader(ctxT(t)); err != nil {
			t.Fatal(err)
		}
	}

	// Status with health, from a follower and through the CLI client.
	st := n3.node.ClusterStatus(ctxT(t))
	if len(st.Members) != 3 || st.FailureTolerance != 1 || st.Leader != "n1" {
		t.Fatalf("ClusterStatus = %+v", st)
	}
	for _, m := range st.Members {
		if !m.Health.Reachable || m.Health.State == "" || m.Health.Err != "" {
			t.Fatalf("member %s health %+v", m.ID, m.Health)
		}
	}
	cli := NewClient(ca.tlsFn(t, "cli"))
	defer cli.CloseIdleConnections()
	if cst, err := cli.Status(ctxT(t), n2.addr); err != nil || cst.NodeID != "n2" || len(cst.Members) != 3 || !cst.Members[0].Health.Reachable {
		t.Fatalf("Client.Status = %+v, %v", cst, err)
	}

	// A forwarded request is cut off when the follower learns of another
	// leader (a lost leader VM never closes its connections).
	wctx, stop := n2.node.whileLeader(context.Background(), "127.0.0.1:1")
	select {
	case <-wctx.Done():
		if !errors.Is(context.Cause(wctx), errLeaderMoved) {
			t.Fatalf("cause = %v", context.Cause(wctx))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("whileLeader did not cancel")
	}
	stop()
	wctx, stop = n2.node.whileLeader(context.Background(), n1.addr)
	time.Sleep(20 * time.Millisecond)
	if wctx.Err() != nil {
		t.Fatal("whileLeader cancelled while the leader did not change")
	}
	stop()

	// Writes on followers are forwarded and applied everywhere.
	const writes = 20
	start := time.Now()
	var last fsm.Result
	for i := range writes {
		last = mustApply(t, n2.node, &fsm.CreateKey{Key: key(fmt.Sprint("f", i), byte(i+1))}, fsm.CodeOK)
	}
	perFollower := time.Since(start) / writes
	start = time.Now()
	for i := range writes {
		mustApply(t, n1.node, &fsm.CreateKey{Key: key(fmt.Sprint("l", i), byte(i+100))}, fsm.CodeOK)
	}
	perLeader := time.Since(start) / writes
	t.Logf("create: %s per forwarded write from a follower, %s on the leader", perFollower, perLeader)
	waitReplicated(t, last.Index, all...)

	// Read-your-writes: a create acknowledged on one node is visible on
	// another after its read barrier, every time.
	var barrier time.Duration
	for i := range 20 {
		from, to := all[1+i%2], all[2-i%2] // n2→n3, n3→n2 (both followers)
		if i%5 == 4 {
			from = n1
		}
		name := fmt.Sprint("ryw", i)
		mustApply(t, from.node, &fsm.CreateKey{Key: key(name, byte(i+1))}, fsm.CodeOK)
		bs := time.Now()
		if err := to.node.ReadBarrier(ctxT(t)); err != nil {
			t.Fatalf("%s ReadBarrier: %v", to.id, err)
		}
		barrier += time.Since(bs)
		if _, err := to.fsm.GetKey(name); err != nil {
			t.Fatalf("%s after barrier: GetKey(%s) = %v", to.id, name, err)
		}
	}
	t.Logf("follower read barrier: %s average", barrier/20)

	// Ambiguous forwarded writes: shrink the deadline until one ends in
	// ErrUnknownOutcome; the retry with the same request id succeeds.
	amb := key("ambiguous", 0xa1)
	sawUnknown := false
	for d := 200 * time.Microsecond; d < 100*time.Millisecond && !sawUnknown; d += 200 * time.Microsecond {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		_, err := n3.node.Apply(ctx, &fsm.CreateKey{Key: amb})
		cancel()
		switch {
		case err == nil:
			d = 100 * time.Millisecond
		case errors.Is(err, ErrUnknownOutcome):
			sawUnknown = true
		case errors.Is(err, ErrNoLeader), errors.Is(err, ErrTimeout):
		default:
			t.Fatalf("Apply(short deadline) = %v", err)
		}
		if errors.Is(err, ErrNotLeader) {
			t.Fatalf("a caller saw ErrNotLeader: %v", err)
		}
	}
	t.Logf("saw an unknown outcome: %v", sawUnknown)
	mustApply(t, n3.node, &fsm.CreateKey{Key: amb}, fsm.CodeOK)
	if err := n3.node.ReadBarrier(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if got, err := n3.fsm.GetKey("ambiguous"); err != nil || got.RequestID != amb.RequestID {
		t.Fatalf("ambiguous key: %+v %v", got, err)
	}
	other := amb
	other.RequestID[3] = 9
	mustApply(t, n2.node, &fsm.CreateKey{Key: other}, fsm.CodeKeyExists)

	// Leadership transfer, asked on a follower.
	if err := n3.node.TransferLeadership(ctxT(t), "n3"); err != nil {
		t.Fatalf("TransferLeadership(n3): %v", err)
	}
	waitFor(t, 10*time.Second, "n3 to lead", n3.node.IsLeader)
	if err := n3.node.TransferLeadership(ctxT(t), "nope"); !errors.Is(err, ErrUnknownMember) {
		t.Fatalf("TransferLeadership(nope) = %v", err)
	}
	if err := cli.Transfer(ctxT(t), n1.addr, ""); err != nil { // via n1, forwarded to n3
		t.Fatalf("Client.Transfer: %v", err)
	}
	waitFor(t, 10*time.Second, "leadership to leave n3", func() bool {
		id, _ := n1.node.Leader()
		return id != "" && id != "n3" && !n3.node.IsLeader()
	})

	// Kill the leader: a new one is elected and forwarding resumes.
	leader := leaderOf(t, all...)
	var rest []*testNode
	for _, tn := range all {
		if tn != leader {
			rest = append(rest, tn)
		}
	}
	start = time.Now()
	leader.stop()
	newLeader := leaderOf(t, rest...)
	elected := time.Since(start)
	follower := rest[0]
	if follower == newLeader {
		follower = rest[1]
	}
	res := mustApply(t, follower.node, &fsm.CreateKey{Key: key("after-failover", 0xf0)}, fsm.CodeOK)
	t.Logf("failover: new leader %s after %s; first forwarded write acknowledged after %s", newLeader.id, elected, time.Since(start))
	waitReplicated(t, res.Index, rest...)

	// Remove the dead member through the follower (forwarded).
	if err := follower.node.RemoveServer(ctxT(t), leader.id); err != nil {
		t.Fatalf("RemoveServer(%s): %v", leader.id, err)
	}
	if err := follower.node.RemoveServer(ctxT(t), leader.id); !errors.Is(err, ErrUnknownMember) {
		t.Fatalf("second RemoveServer = %v", err)
	}
	waitFor(t, 5*time.Second, "2 members", func() bool { return len(follower.node.Status().Members) == 2 })
	if err := cli.Remove(ctxT(t), follower.addr, "bad id"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("Client.Remove(bad id) = %v", err)
	}
	st = newLeader.node.ClusterStatus(ctxT(t))
	if len(st.Members) != 2 || st.FailureTolerance != 0 {
		t.Fatalf("status after remove: %+v", st)
	}
}

// TestTLSSnapshotRestore: WriteSnapshot/Restore round trip through
// followers and the CLI client; a foreign or corrupt snapshot is refused.
func TestTLSSnapshotRestore(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	nodes, _ := newTLSCluster(t, ca, 3, nil)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	mustApply(t, n2.node, &fsm.PutStanza{KeyID: "hsm-1", REKID: "rek-A", Stanza: []byte{1, 2, 3}}, fsm.CodeOK)
	for i := range 5 {
		mustApply(t, n2.node, &fsm.CreateKey{Key: key(fmt.Sprint("k", i), byte(i+1))}, fsm.CodeOK)
	}
	var buf bytes.Buffer
	info, err := n3.node.WriteSnapshot(ctxT(t), &buf)
	if err != nil {
		t.Fatalf("WriteSnapshot: %v", err)
	}
	if info.Keys != 5 || info.Stanzas != 1 || info.REKID != "rek-A" || !info.ChecksumOK {
		t.Fatalf("snapshot info %+v", info)
	}
	saved := bytes.Clone(buf.Bytes())
	if bytes.Contains(saved, []byte("sealed-k")) == false {
		t.Fatal("snapshot lacks the (sealed) records")
	}
	cli := NewClient(ca.tlsFn(t, "cli"))
	defer cli.CloseIdleConnections()
	var viaCLI bytes.Buffer
	cinfo, err := cli.SnapshotSave(ctxT(t), n2.addr, &viaCLI)
	if err != nil || cinfo.Keys != 5 || cinfo.REKID != "rek-A" {
		t.Fatalf("Client.SnapshotSave = %+v, %v", cinfo, err)
	}

	// Change the state, then restore the snapshot through a follower.
	mustApply(t, n1.node, &fsm.DeleteKey{Name: "k0", RequestID: [16]byte{1}}, fsm.CodeOK)
	mustApply(t, n1.node, &fsm.CreateKey{Key: key("later", 50)}, fsm.CodeOK)
	if err := n2.node.Restore(ctxT(t), bytes.NewReader(saved)); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	want := []string{"k0", "k1", "k2", "k3", "k4"}
	sameKeys(t, want, nodes...)
	// Writes continue after the restore.
	mustApply(t, n3.node, &fsm.CreateKey{Key: key("post", 51)}, fsm.CodeOK)
	sameKeys(t, append(slices.Clone(want), "post"), nodes...)

	// The CLI path, with the CLI client's copy.
	if err := cli.SnapshotRestore(ctxT(t), n3.addr, bytes.NewReader(viaCLI.Bytes())); err != nil {
		t.Fatalf("Client.SnapshotRestore: %v", err)
	}
	sameKeys(t, want, nodes...)

	// A snapshot of another cluster (another REK) is refused.
	other := newTestNode(t, "x1", true, nil)
	other.waitLeader()
	mustApply(t, other.node, &fsm.PutStanza{KeyID: "hsm-9", REKID: "rek-B", Stanza: []byte{9}}, fsm.CodeOK)
	mustApply(t, other.node, &fsm.CreateKey{Key: key("foreign", 9)}, fsm.CodeOK)
	var fbuf bytes.Buffer
	if _, err := other.node.WriteSnapshot(ctxT(t), &fbuf); err != nil {
		t.Fatal(err)
	}
	if err := n2.node.Restore(ctxT(t), bytes.NewReader(fbuf.Bytes())); !errors.Is(err, ErrForeignSnapshot) {
		t.Fatalf("Restore(foreign) = %v", err)
	}
	if err := cli.SnapshotRestore(ctxT(t), n1.addr, bytes.NewReader(fbuf.Bytes())); !errors.Is(err, ErrForeignSnapshot) {
		t.Fatalf("Client.SnapshotRestore(foreign) = %v", err)
	}
	corrupt := bytes.Clone(saved)
	corrupt[len(corrupt)-40] ^= 1
	if err := cli.SnapshotRestore(ctxT(t), n1.addr, bytes.NewReader(corrupt)); !errors.Is(err, fsm.ErrSnapshotCorrupt) {
		t.Fatalf("Client.SnapshotRestore(corrupt) = %v", err)
	}
	if err := n3.node.Restore(ctxT(t), bytes.NewReader(saved[:100])); !errors.Is(err, fsm.ErrSnapshotCorrupt) {
		t.Fatalf("Restore(truncated) = %v", err)
	}
	sameKeys(t, want, nodes...)
}

// TestTLSWipedFollower: a follower that loses its whole data directory
// re-joins under the same id and address and is caught up from a
// snapshot (the leader's log was compacted).
func TestTLSWipedFollower(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	nodes, _ := newTLSCluster(t, ca, 3, fastSnapshots)
	for i := range 30 {
		mustApply(t, nodes[1].node, &fsm.CreateKey{Key: key(fmt.Sprint("w", i), byte(i+1))}, fsm.CodeOK)
	}
	leader := leaderOf(t, nodes...)
	if err := leader.node.Snapshot(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	victim := nodes[2]
	if victim == leader {
		victim = nodes[1]
	}
	victim.wipe()
	for i := range 10 {
		mustApply(t, leader.node, &fsm.CreateKey{Key: key(fmt.Sprint("x", i), byte(i+50))}, fsm.CodeOK)
	}
	if err := leader.node.Snapshot(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	victim.start(false)
	waitJoined(t, victim)
	want, _ := leader.fsm.ListKeys("")
	sameKeys(t, want, victim)
	if snapshotsOf(t, victim) == 0 {
		t.Fatal("the wiped follower did not install a snapshot")
	}
	if len(want) != 40 {
		t.Fatalf("keys: %d", len(want))
	}
	// It serves read barriers and forwards writes again.
	mustApply(t, victim.node, &fsm.CreateKey{Key: key("back", 99)}, fsm.CodeOK)
	if err := victim.node.ReadBarrier(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

// TestTLSRecover: two of three nodes are gone for good; the survivor is
// recovered offline as a single voter, leads, accepts writes, and a
// fresh node joins it and catches up from its snapshot.
func TestTLSRecover(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	nodes, addrs := newTLSCluster(t, ca, 3, fastSnapshots)
	for i := range 12 {
		mustApply(t, nodes[2].node, &fsm.CreateKey{Key: key(fmt.Sprint("r", i), byte(i+1))}, fsm.CodeOK)
	}
	survivor := nodes[0]
	waitReplicated(t, nodes[2].fsm.AppliedIndex(), survivor)
	nodes[1].stop()
	nodes[2].stop()
	// No quorum: writes fail with ErrNoLeader (or the survivor's lost lease).
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	_, err := survivor.node.Apply(ctx, &fsm.CreateKey{Key: key("no-quorum", 0x77)})
	cancel()
	if !errors.Is(err, ErrUnknownOutcome) && !errors.Is(err, ErrNoLeader) || errors.Is(err, ErrNotLeader) {
		t.Fatalf("Apply without quorum = %v", err)
	}
	// Leaderless for longer than LeaderWait: a write answers ErrNoLeader
	// on its own, long before the caller's generous deadline.
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	_, err2 := survivor.node.Apply(ctx, &fsm.CreateKey{Key: key("no-quorum-2", 0x76)})
	cancel()
	if !errors.Is(err2, ErrNoLeader) || errors.Is(err2, context.DeadlineExceeded) {
		t.Fatalf("Apply without quorum, 30 s deadline = %v; want ErrNoLeader from LeaderWait", err2)
	}
	want, _ := survivor.fsm.ListKeys("")
	if errors.Is(err, ErrUnknownOutcome) {
		// It reached the survivor's log: recovery commits it (documented).
		want = append(want, "no-quorum")
		slices.Sort(want)
	}

	survivor.stop()
	db, f := survivor.openFSM()
	cfg := Config{NodeID: survivor.id, DataDir: survivor.dir, Logger: quiet}
	// Refused: the node must be a voter of the new configuration.
	if err := Recover(ctxT(t), cfg, f, []Member{{ID: "n2", Addr: addrs[1]}}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("Recover without self = %v", err)
	}
	if err := Recover(ctxT(t), cfg, f, []Member{{ID: survivor.id, Addr: survivor.addr}}); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	survivor.start(false)
	survivor.waitLeader()
	if st := survivor.node.Status(); len(st.Members) != 1 {
		t.Fatalf("members after recover: %+v", st.Members)
	}
	sameKeys(t, want, survivor)
	mustApply(t, survivor.node, &fsm.CreateKey{Key: key("recovered", 0x78)}, fsm.CodeOK)

	// A fresh node (new id, empty directory) joins and catches up.
	fresh := newTLSNode(t, ca, "n4", reservePorts(t, 1)[0], false, []string{survivor.addr}, fastSnapshots)
	waitJoined(t, fresh)
	want, _ = survivor.fsm.ListKeys("")
	sameKeys(t, want, fresh)
	if snapshotsOf(t, fresh) == 0 {
		t.Fatal("the fresh node did not install a snapshot")
	}
	mustApply(t, fresh.node, &fsm.CreateKey{Key: key("from-fresh", 0x79)}, fsm.CodeOK)
	if err := fresh.node.ReadBarrier(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

// TestTLSForeignCA: a peer with a certificate from another CA is
// rejected in both directions, cannot join and cannot read anything.
func TestTLSForeignCA(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	foreign := newTestCA(t, "foreign CA")
	var logs logBuffer
	addrs := reservePorts(t, 2)
	n1 := newTLSNode(t, ca, "n1", addrs[0], true, addrs, func(c *Config) { c.Logger = logs.logger() })
	n1.waitLeader()
	mustApply(t, n1.node, &fsm.CreateKey{Key: key("secret-name", 1)}, fsm.CodeOK)

	// A foreign-CA client dialing the node: TLS 1.3 lets the client finish
	// its handshake, the refusal shows on its first read.
	fcli := NewClient(foreign.tlsFn(t, "intruder"))
	defer fcli.CloseIdleConnections()
	if _, err := fcli.Status(ctxT(t), n1.addr); err == nil || !isNotSent(err) {
		t.Fatalf("foreign Status = %v", err)
	}
	if _, err := fcli.SnapshotSave(ctxT(t), n1.addr, io.Discard); err == nil {
		t.Fatal("foreign SnapshotSave succeeded")
	}
	waitFor(t, 5*time.Second, "the node to log the rejected handshake", func() bool {
		return logs.contains("TLS handshake failed")
	})
	// Raw: the first read after the handshake fails with a TLS alert.
	raw, err := tls.Dial("tcp", n1.addr, &tls.Config{
		Certificates: []tls.Certificate{foreign.nodeCert(t, "raw")}, RootCAs: ca.pool,
		NextProtos: []string{protoRPC}, MinVersion: tls.VersionTLS13,
	})
	if err == nil {
		raw.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = raw.Write([]byte("GET /cluster/v1/status HTTP/1.1\r\nHost: x\r\n\r\n"))
		_, err = raw.Read(make([]byte, 1))
		raw.Close()
	}
	if err == nil || !isTLSAlert(err) {
		t.Fatalf("foreign raw client: %v", err)
	}
	// No client certificate, a wrong ALPN, plain garbage: all refused.
	for name, cfg := range map[string]*tls.Config{
		"no cert":    {RootCAs: ca.pool, NextProtos: []string{protoRPC}},
		"wrong alpn": {Certificates: []tls.Certificate{ca.nodeCert(t, "x")}, RootCAs: ca.pool, NextProtos: []string{"h2"}},
	} {
		c, err := tls.Dial("tcp", n1.addr, cfg)
		if err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if err == nil {
			t.Fatalf("%s: connection accepted", name)
		}
	}
	if c, err := net.Dial("tcp", n1.addr); err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("plain TCP got an answer")
		}
		c.Close()
	}

	// A foreign node trying to join through n1 never becomes a member.
	fnode := newTLSNode(t, foreign, "n2", addrs[1], false, addrs, nil)
	time.Sleep(time.Second)
	select {
	case <-fnode.node.Joined():
		t.Fatal("the foreign node joined")
	default:
	}
	if st := n1.node.Status(); len(st.Members) != 1 {
		t.Fatalf("members: %+v", st.Members)
	}
	if _, err := fnode.node.Apply(testContext(t, 500*time.Millisecond), &fsm.CreateKey{Key: key("x", 2)}); !errors.Is(err, ErrNoLeader) {
		t.Fatalf("foreign Apply = %v", err)
	}
	// The cluster node dialing the foreign node's server fails too (its
	// certificate is not from the cluster CA), for RPC and raft alike.
	if _, err := n1.node.Call(ctxT(t), fnode.addr, http.MethodGet, pathStatus, nil); err == nil {
		t.Fatal("n1 reached the foreign node")
	} else if !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("n1 → foreign: %v", err)
	}
	if _, err := (streamLayer{n1.node.mux.raft}).Dial("127.0.0.1:1", time.Second); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
	if _, err := (streamLayer{n1.node.mux.raft}).Dial(raft.ServerAddress(fnode.addr), time.Second); err == nil {
		t.Fatal("raft dial to the foreign node succeeded")
	}
	// The foreign node's raft dialing n1: TLS 1.3 again fails on the
	// first read at the latest.
	if c, err := (streamLayer{fnode.node.mux.raft}).Dial(raft.ServerAddress(n1.addr), time.Second); err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write([]byte{0})
		_, err = c.Read(make([]byte, 1))
		c.Close()
		if err == nil {
			t.Fatal("foreign raft connection accepted")
		}
	}
}

// TestTLSBadRequests: malformed RPCs get error codes, never a panic or
// an applied command.
func TestTLSBadRequests(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	addr := reservePorts(t, 1)[0]
	n1 := newTLSNode(t, ca, "n1", addr, true, nil, func(c *Config) {
		c.RPC = map[string]http.Handler{"POST echo": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || r.TLS.PeerCertificates[0].Subject.CommonName != "n1" {
				w.WriteHeader(http.StatusForbidden)
				return
			}
			b, err := io.ReadAll(r.Body)
			if err != nil {
				w.WriteHeader(http.StatusRequestEntityTooLarge)
				return
			}
			w.Write(b)
		})}
	})
	n1.waitLeader()
	if err := n1.node.ReadBarrier(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	before := n1.fsm.AppliedIndex()
	tests := []struct {
		method, path string
		body         []byte
		status       int
		code         string
	}{
		{"POST", pathApply, []byte{0x7f, 1, 2}, 400, "invalid"}, // unknown, not ignorable
		{"POST", pathApply, nil, 400, "invalid"},
		{"POST", pathApply, make([]byte, MaxCommandSize+1), 400, "invalid"},
		{"POST", pathJoin, []byte("{"), 400, "invalid"},
		{"POST", pathJoin, []byte(`{"id":"","addr":"x"}`), 400, "invalid"},
		{"POST", pathJoin, []byte(`{"id":"n9","addr":"nohost"}`), 400, "invalid"},
		{"POST", pathJoin, []byte(`{"id":"n1","addr":"127.0.0.1:9"}`), 400, "invalid"}, // the leader's own id
		{"POST", pathRemove, []byte(`{"id":"ghost"}`), 404, "unknown_member"},
		{"POST", pathTransfer, []byte(`{"id":"ghost"}`), 404, "unknown_member"},
		{"POST", pathRestore, []byte("not a snapshot"), 400, "snapshot_corrupt"},
		{"GET", pathApply, nil, 405, ""},
		{"GET", "/cluster/v1/nope", nil, 404, ""},
		{"POST", ExtPrefix + "echo", make([]byte, maxExtBody+1), 413, ""},
	}
	for i, tc := range tests {
		var body io.Reader
		if tc.body != nil {
			body = bytes.NewReader(tc.body)
		}
		resp, err := n1.node.Call(ctxT(t), n1.addr, tc.method, tc.path, body)
		if err != nil {
			t.Fatalf("Test %d: %v", i, err)
		}
		rerr := decodeErr(n1.addr, resp)
		resp.Body.Close()
		var re *RemoteError
		errors.As(rerr, &re)
		if resp.StatusCode != tc.status || (tc.code != "" && re.Code != tc.code) {
			t.Fatalf("Test %d: %s %s = %d %v", i, tc.method, tc.path, resp.StatusCode, rerr)
		}
	}
	// Bad timeout header.
	req := http.Header{hdrTimeout: {"-5"}}
	if err := n1.node.client.call(ctxT(t), n1.addr, "GET", pathStatus, req, nil, nil); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad timeout header: %v", err)
	}
	resp, err := n1.node.Call(ctxT(t), n1.addr, "POST", ExtPrefix+"echo", strings.NewReader("hi"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "hi" {
		t.Fatalf("ext echo = %d %q", resp.StatusCode, b)
	}
	if got := n1.fsm.AppliedIndex(); got != before {
		t.Fatalf("applied index moved %d → %d", before, got)
	}
}

// TestTLSConfig: invalid node-channel configurations are refused.
func TestTLSConfig(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	good := ca.tlsFn(t, "n1")
	h := http.NotFoundHandler()
	tests := []func(*Config){
		func(c *Config) { c.TLS = func() *tls.Config { return &tls.Config{} } },                   // no CA
		func(c *Config) { c.TLS = func() *tls.Config { return &tls.Config{RootCAs: ca.pool} } },   // no cert
		func(c *Config) { c.TLS = func() *tls.Config { return nil } },                             // nil config
		func(c *Config) { c.TLS = good; c.StreamLayer = streamLayer{} },                           // both
		func(c *Config) { c.Peers = []string{"127.0.0.1:1"} },                                     // peers without TLS
		func(c *Config) { c.TLS = good; c.Peers = []string{"no-port"} },                           // bad peer
		func(c *Config) { c.TLS = good; c.RPC = map[string]http.Handler{"/cluster/v1/apply": h} }, // outside ext
		func(c *Config) { c.TLS = good; c.RPC = map[string]http.Handler{"x": nil} },               // nil handler
		func(c *Config) { c.TLS = good; c.BindAddr = "0.0.0.0:0" },                                // no advertise
		func(c *Config) { c.TLS = good; c.AdvertiseAddr = "no-port" },                             // bad advertise
		func(c *Config) { c.RPC = map[string]http.Handler{"x": h} },                               // RPC without TLS
	}
	for i, tune := range tests {
		db, f := (&testNode{t: t, dir: t.TempDir()}).openFSM()
		cfg := Config{NodeID: "n1", DataDir: t.TempDir(), BindAddr: "127.0.0.1:0", Logger: quiet}
		tune(&cfg)
		if n, err := Open(ctxT(t), cfg, f); err == nil {
			n.Shutdown()
			t.Errorf("Test %d: Open succeeded", i)
		}
		db.Close()
	}
	for _, k := range []string{"rek", "POST rek", ExtPrefix + "rek", "GET " + ExtPrefix + "a/b"} {
		if _, err := extPattern(k); err != nil {
			t.Errorf("extPattern(%q): %v", k, err)
		}
	}
}

// TestTLSShutdownLeaks: after a TLS cluster with forwarded traffic, an
// in-flight join loop and open RPC connections shuts down, the
// goroutine count returns to where it was.
func TestTLSShutdownLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Run("cluster", func(t *testing.T) {
		ca := newTestCA(t, "cluster CA")
		nodes, addrs := newTLSCluster(t, ca, 2, nil)
		mustApply(t, nodes[1].node, &fsm.CreateKey{Key: key("a", 1)}, fsm.CodeOK)
		if err := nodes[1].node.ReadBarrier(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		_ = nodes[0].node.ClusterStatus(ctxT(t))
		// A node whose join can never succeed (nobody listens there).
		newTLSNode(t, ca, "lonely", reservePorts(t, 1)[0], false, []string{reservePorts(t, 1)[0]}, nil)
		// A half-open connection that never handshakes.
		c, err := net.Dial("tcp", addrs[0])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	})
	var after int
	deadline := time.Now().Add(10 * time.Second)
	for {
		after = runtime.NumGoroutine()
		if after <= before+2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("goroutines: %d before, %d after", before, after)
	if after > before+2 {
		buf := make([]byte, 1<<20)
		t.Fatalf("goroutines: %d before, %d after\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
}
