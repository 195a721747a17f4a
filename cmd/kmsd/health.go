package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/kmsd/kmsd/cluster"
	"github.com/kmsd/kmsd/fsm"
	"github.com/kmsd/kmsd/health"
	"github.com/kmsd/kmsd/hsm"
)

// The node's own checks in n.health: "seal" and "raft" (readiness) and
// "store" (liveness). Other files register "certificates", "audit",
// "error_log" and "snapshots". The model is in DESIGN.md (Health).

// raftLagDegraded is how many committed entries the FSM may trail before
// the "raft" check reports Degraded. A healthy node applies within
// milliseconds of a commit; raft also commits entries the FSM never sees
// (a no-op per term, configuration changes), which this margin absorbs.
const raftLagDegraded = 1000

// healthProbeKey is looked up by the "store" check; it need not exist.
const healthProbeKey = "kmsd-health-probe"

// errorBox holds the last unseal error (nil after a success).
type errorBox struct{ err error }

// noteUnseal records the outcome of one unseal attempt for the "seal"
// check.
func (n *node) noteUnseal(err error) { n.unsealErr.Store(&errorBox{err}) }

// registerHealth adds the seal, raft and store checks to n.health. The
// checks read n's fields when they run, so they may be registered before
// the components exist (they report Fail until then).
func (n *node) registerHealth() {
	n.health.Register("seal", health.Readiness, n.sealCheck)
	n.health.Register("store", health.Liveness, n.storeCheck)
	// "raft" is registered by openState once n.raft is set: cluster.Open
	// already answers peers' status probes (which run the checks) before
	// it returns, and the registry's lock orders the field's write before
	// any read by the check.
}

// sealCheck fails while the node has no keyring, with the reason if one
// is known.
func (n *node) sealCheck(context.Context) (health.Status, string) {
	if n.keyring.Load() != nil {
		return health.OK, "unsealed"
	}
	var last error
	if b := n.unsealErr.Load(); b != nil {
		last = b.err
	}
	switch {
	case last != nil && (errors.Is(last, hsm.ErrPINIncorrect) || errors.Is(last, hsm.ErrPINLocked)):
		return health.Fail, "node is sealed: " + last.Error() + " (not retrying: fix the HSM PIN, then send SIGHUP or restart)"
	case last != nil:
		return health.Fail, "node is sealed: " + last.Error() + " (retrying)"
	}
	if cfg := n.cfg.Load(); cfg != nil {
		if _, err := readStanza(cfg.DataDir); errors.Is(err, errNotInitialised) {
			return health.Fail, "node is sealed: joining: waiting for a member to hand over the root key"
		}
	}
	return health.Fail, "node is sealed: unsealing"
}

// raftCheck reads the node's raft status.
func (n *node) raftCheck(context.Context) (health.Status, string) {
	if n.raft == nil {
		return health.Fail, "raft is not running yet"
	}
	return raftHealth(n.raft.Status())
}

// raftHealth judges a raft status: Fail when the node cannot take part
// (shut down, or not in the configuration it knows: not joined yet, or
// removed), Degraded when it serves reads but not writes (no leader
// known) or trails the commit index by more than raftLagDegraded
// entries, OK otherwise.
func raftHealth(st cluster.Status) (health.Status, string) {
	member := false
	for _, m := range st.Members {
		member = member || m.ID == st.NodeID
	}
	switch {
	case st.State == "Shutdown":
		return health.Fail, "raft is shut down"
	case !member:
		return health.Fail, fmt.Sprintf("%s is not in the raft configuration (not joined yet, or removed)", st.NodeID)
	case st.Leader == "":
		return health.Degraded, fmt.Sprintf("no leader known (%s, term %d): reads are served locally, writes fail with 503", strings.ToLower(st.State), st.Term)
	case st.CommitIndex > st.AppliedIndex+raftLagDegraded:
		return health.Degraded, fmt.Sprintf("applied index %d is %d entries behind the commit index %d",
			st.AppliedIndex, st.CommitIndex-st.AppliedIndex, st.CommitIndex)
	}
	if st.Leader == st.NodeID {
		return health.OK, fmt.Sprintf("leader, term %d", st.Term)
	}
	return health.OK, fmt.Sprintf("%s of %s, term %d", strings.ToLower(st.State), st.Leader, st.Term)
}

// storeCheck does one local record lookup (badger, no raft). A failure
// means this process cannot read its own state: a restart may help.
func (n *node) storeCheck(context.Context) (health.Status, string) {
	if n.fsm == nil {
		return health.Fail, "local state is not open"
	}
	if _, err := n.fsm.GetKey(healthProbeKey); err != nil && !errors.Is(err, fsm.ErrKeyNotFound) {
		return health.Fail, "local state read failed: " + err.Error()
	}
	return health.OK, ""
}
