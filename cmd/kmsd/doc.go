// Command kmsd is the kmsd key-management server and its operator tool.
//
//	kmsd server --config FILE      serve the KES API
//	kmsd init --config FILE        first node only: create the cluster root key, sealed under the HSM
//	kmsd cluster status|remove|transfer|recover   operate the raft cluster
//	kmsd snapshot save|restore|verify             snapshots of the replicated state
//	kmsd identity new [...]        create a KES API key (and optionally key/cert files)
//	kmsd identity of ARG           print the identity of an API key or certificate
//
// main only wires: each subcommand lives in its own file.
package main
