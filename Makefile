# kmsd — `make help` lists the targets. Logic lives in scripts/.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

.DEFAULT_GOAL := help

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build bin/kmsd
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/kmsd ./cmd/kmsd

run: ## start a local three-node kmsd cluster (SoftHSM per node, certs, configs under .kmsd-dev/) and print how to use it
	scripts/dev.sh up

stop: ## stop the local cluster started by `make run` (state is kept)
	scripts/dev.sh down

status: ## show the local cluster's nodes: pid, readiness, raft role, term, applied index
	scripts/dev.sh status

test: ## vet + all tests with the race detector (unit, SoftHSM, real processes, kms-go compat)
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 15m ./...
	cd compat && $(GO) vet ./... && $(GO) test -race -count=1 -timeout 15m ./...

bench: ## benchmark the dev cluster: crypto vs a bare mTLS baseline, creates, one vs three nodes, leader failover (a few minutes)
	scripts/bench.sh

lint: ## gofmt, go vet, staticcheck
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	cd compat && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...

clean: ## stop the dev cluster and remove build and dev state
	scripts/dev.sh clean
	rm -rf bin

.PHONY: help build run stop status test bench lint clean
