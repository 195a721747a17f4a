package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// Set by the linker (-X main.version=... -X main.commit=...).
var (
	version = ""
	commit  = ""
)

const usage = `usage: kmsd <command> [flags]

commands:
  server --config FILE [--addr HOST:PORT]    serve the KES key API over mTLS
  init --config FILE                         on the first node only: create the root key, seal it
       [--recovery-shares N                  under the HSM; this node then bootstraps the cluster;
        --recovery-threshold M]              also print N break-glass shares, any M recover the key
  init --config FILE --restore SNAPSHOT      first node of a NEW cluster: take the snapshot's root key
       [--recovery-shares-file FILE|-]       from this node's HSM or from M recovery shares; the
                                             snapshot is restored at the first start
  cluster status [--json] --config FILE      role, leader, term, commit/applied index, members
                                             and their health, failure tolerance
  cluster remove NODE --config FILE          remove a member
  cluster transfer [NODE] --config FILE      hand leadership to NODE (default: any other voter)
  cluster recover --config FILE [--member ID=HOST:PORT ...]
                                             offline, node stopped: after a permanent loss of
                                             quorum, force the member set (default: this node)
  snapshot save FILE --config FILE           save the replicated state (key material stays sealed)
  snapshot restore FILE --config FILE        replace the cluster's state with a snapshot
  snapshot verify FILE [--config FILE]       offline: checksum, format, index, counts, root key,
                                             HSM keys that can unseal it (and whether this node's can)
  identity new [flags] [subject]             create a KES API key (kes:v1:...)
  identity of <api-key | cert.pem>           print the identity of an API key or certificate
  version                                    print the version

The cluster and snapshot commands talk to the local node over the node channel
(cluster.advertise, with the node certificate from cluster.tls).
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "server":
		err = runServer(ctx, args)
	case "init":
		err = runInit(ctx, args)
	case "cluster":
		err = runCluster(ctx, args)
	case "snapshot":
		err = runSnapshot(ctx, args)
	case "identity":
		err = runIdentity(args)
	case "version", "--version", "-v":
		fmt.Println("kmsd", versionString())
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "kmsd: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "kmsd:", err)
		os.Exit(1)
	}
}

func versionString() string {
	v := version
	if v == "" {
		v = "dev"
	}
	if commit != "" {
		v += " (" + commit + ")"
	}
	return v
}
