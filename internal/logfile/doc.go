// Package logfile is a bounded, asynchronous sink for NDJSON lines: the
// audit file and the error-log file of kmsd.
//
// Callers hand complete lines to Enqueue, which never blocks longer than
// the wait it is given (0: not at all) and reports whether the line was
// queued. One writer goroutine per Sink takes lines off a bounded queue,
// writes them in batches with one write call each, and owns the file:
// created 0600 with O_APPEND (its directory 0700), reopened on Reopen
// (logrotate's SIGHUP), and reopened by itself when the path no longer
// names the open file (deleted or renamed).
//
// A failed open or write, or an I/O operation still running after
// Options.StallAfter (a hung NFS mount, a FIFO without reader), makes the
// sink unhealthy; Healthy and State say so at once. The writer retries
// with bounded exponential backoff and becomes healthy again on its own.
// Lines that cannot be queued or written are counted (Stats.Lost), never
// dropped silently. See DESIGN.md for the invariants.
package logfile
