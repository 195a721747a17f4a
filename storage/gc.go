package storage

import (
	"context"
	"time"
)

const (
	defaultGCInterval = 5 * time.Minute
	gcDiscardRatio    = 0.5
	gcMaxRounds       = 16 // per tick, so one tick cannot run forever
)

// startGC starts the value log garbage collector. Close stops it.
func (db *DB) startGC(interval time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	db.stopGC = cancel
	db.gcDone = make(chan struct{})
	if db.dir == "" || interval < 0 {
		close(db.gcDone)
		return
	}
	if interval == 0 {
		interval = defaultGCInterval
	}
	go func() {
		defer close(db.gcDone)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				db.runGC(ctx)
			}
		}
	}()
}

// runGC rewrites value log files while at least half of one can be
// reclaimed. badger returns ErrNoRewrite when there is nothing to do.
func (db *DB) runGC(ctx context.Context) {
	for range gcMaxRounds {
		if ctx.Err() != nil {
			return
		}
		db.mu.RLock()
		if db.closed {
			db.mu.RUnlock()
			return
		}
		err := db.bdb.RunValueLogGC(gcDiscardRatio)
		db.mu.RUnlock()
		if err != nil {
			return
		}
	}
}
