// Package deptest holds only a test: it enforces the import directions of
// style.md §8.3 (api → cluster → fsm → storage; api → seal; hsm, seal and
// storage depend on nothing of ours) so a shortcut import fails CI.
package deptest
