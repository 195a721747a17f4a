package main

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"
)

// TestCloseWaitsForBackground: close cancels the node's context and waits
// for background work (an unseal loop) before tearing down raft, badger
// and the HSM, so nothing installs a keyring after the teardown.
func TestCloseWaitsForBackground(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	n := &node{ctx: ctx, cancel: cancel, log: slog.New(slog.DiscardHandler)}
	var finished atomic.Bool
	started := make(chan struct{})
	n.background(func() {
		close(started)
		<-ctx.Done()
		time.Sleep(50 * time.Millisecond) // e.g. an HSM call finishing
		finished.Store(true)
	})
	<-started
	n.close()
	if !finished.Load() {
		t.Fatal("close returned before the background work ended")
	}
	if n.keyring.Load() != nil {
		t.Fatal("a keyring is installed after close")
	}
}
