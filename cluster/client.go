package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/kmsd/kmsd/fsm"
)

// Client calls a node's internal RPC endpoints over the node channel
// (mTLS with the cluster CA, ALPN kmsd-rpc/1, HTTP/1.1 with keep-alive).
// Nodes use one to forward to the leader; the CLI uses one with the
// node's own certificate to talk to its local node. Safe for concurrent
// use. Every call is bounded by its ctx.
type Client struct {
	tlsFn func() *tls.Config
	hc    *http.Client
}

// NewClient returns a client that presents and verifies certificates as
// configured by tlsFn (called for every new connection; see Config.TLS).
func NewClient(tlsFn func() *tls.Config) *Client {
	c := &Client{tlsFn: tlsFn}
	tr := &http.Transport{
		DialTLSContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
			defer cancel()
			return dialNode(ctx, c.tlsFn, addr, protoRPC)
		},
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 64, // forwarding under load reuses connections
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	c.hc = &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c
}

// CloseIdleConnections closes the client's idle keep-alive connections.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// notSentError marks a request that certainly did not reach the remote
// handler: the connection failed before the request was written, or the
// server rejected the TLS handshake (in TLS 1.3 the client only learns
// that on its first read, after writing). Retrying it is safe.
type notSentError struct{ err error }

func (e *notSentError) Error() string { return e.err.Error() }
func (e *notSentError) Unwrap() error { return e.err }

func isNotSent(err error) bool {
	var ns *notSentError
	return errors.As(err, &ns)
}

// isTLSAlert reports whether err is a TLS alert sent by the peer, i.e.
// the peer refused the handshake (e.g. our certificate).
func isTLSAlert(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error"
}

// Do sends one request to the node at addr (its node-channel address)
// and returns the response as is; the caller closes its body. A non-2xx
// response is not an error here. A transport failure is.
func (c *Client) Do(ctx context.Context, addr, method, path string, body io.Reader) (*http.Response, error) {
	resp, _, err := c.do(ctx, addr, method, path, nil, body)
	return resp, err
}

// do sends a request. sent reports whether the request may have reached
// the remote handler (for ambiguity decisions); a failure that certainly
// did not is wrapped in notSentError.
func (c *Client) do(ctx context.Context, addr, method, path string, hdr http.Header, body io.Reader) (*http.Response, bool, error) {
	if c == nil || c.tlsFn == nil {
		return nil, false, &notSentError{errNoTLS}
	}
	req, err := http.NewRequestWithContext(ctx, method, "https://"+addr+path, body)
	if err != nil {
		return nil, false, fmt.Errorf("cluster: %s %s: %w: %w", method, path, ErrInvalidArgument, err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if method != http.MethodGet && (req.Body == nil || req.Body == http.NoBody || req.GetBody != nil) {
		// Every kmsd RPC with a rewindable body may be replayed (commands
		// are idempotent by request id): let the transport retry it on a
		// keep-alive connection the server had already closed.
		req.Header.Set("Idempotency-Key", "kmsd")
	}
	if d, ok := ctx.Deadline(); ok && req.Header.Get(hdrTimeout) == "" {
		rem := time.Until(d)
		rem -= min(rem/10, 250*time.Millisecond) // answer before we give up
		req.Header.Set(hdrTimeout, strconv.FormatInt(max(rem.Milliseconds(), 1), 10))
	}
	var wrote atomic.Bool
	req = req.WithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				wrote.Store(true)
			}
		},
	}))
	resp, err := c.hc.Do(req)
	if err != nil {
		err = fmt.Errorf("cluster: %s %s%s: %w", method, addr, path, err)
		if !wrote.Load() || isTLSAlert(err) {
			return nil, false, &notSentError{err}
		}
		return nil, true, err
	}
	return resp, true, nil
}

// call sends a request and decodes a 2xx JSON response into out (if
// non-nil); a non-2xx response becomes a *RemoteError.
func (c *Client) call(ctx context.Context, addr, method, path string, hdr http.Header, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("cluster: %s: %w", path, err)
		}
		body = bytes.NewReader(b)
		if hdr == nil {
			hdr = http.Header{}
		}
		hdr.Set("Content-Type", "application/json")
	}
	resp, _, err := c.do(ctx, addr, method, path, hdr, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return decodeErr(addr, resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxStatusBody)).Decode(out); err != nil {
		return fmt.Errorf("cluster: %s %s: bad response: %w", addr, path, err)
	}
	return nil
}

func forwardedHeader(forwarded bool) http.Header {
	if !forwarded {
		return nil
	}
	return http.Header{hdrForwarded: {"1"}}
}

// Status returns the ClusterStatus of the node at addr (its view, with
// every member's reachability, raft state and health report).
func (c *Client) Status(ctx context.Context, addr string) (Status, error) {
	var s Status
	err := c.call(ctx, addr, http.MethodGet, pathStatus+"?health=1", nil, nil, &s)
	return s, err
}

// localStatus returns the node's own Status and health report (Report),
// without member health.
func (c *Client) localStatus(ctx context.Context, addr string) (Status, error) {
	var s Status
	err := c.call(ctx, addr, http.MethodGet, pathStatus, nil, nil, &s)
	return s, err
}

// Remove asks the node at addr to remove member id (forwarded to the
// leader by that node).
func (c *Client) Remove(ctx context.Context, addr, id string) error {
	return c.remove(ctx, addr, id, false)
}

func (c *Client) remove(ctx context.Context, addr, id string, forwarded bool) error {
	return c.call(ctx, addr, http.MethodPost, pathRemove, forwardedHeader(forwarded), idRequest{ID: id}, nil)
}

// Transfer asks the node at addr to move leadership to id ("" = any
// voter); forwarded to the leader by that node.
func (c *Client) Transfer(ctx context.Context, addr, id string) error {
	return c.transfer(ctx, addr, id, false)
}

func (c *Client) transfer(ctx context.Context, addr, id string, forwarded bool) error {
	return c.call(ctx, addr, http.MethodPost, pathTransfer, forwardedHeader(forwarded), idRequest{ID: id}, nil)
}

// join asks the node at addr to add (id, joinAddr) as a voter.
func (c *Client) join(ctx context.Context, addr, id, joinAddr string, forwarded bool) error {
	return c.call(ctx, addr, http.MethodPost, pathJoin, forwardedHeader(forwarded), joinRequest{ID: id, Addr: joinAddr}, nil)
}

// barrier asks the leader at addr for its read index.
func (c *Client) barrier(ctx context.Context, addr string) (uint64, error) {
	var br barrierResponse
	err := c.call(ctx, addr, http.MethodPost, pathBarrier, forwardedHeader(true), nil, &br)
	return br.Index, err
}

// apply sends an encoded command to the leader at addr. A failure after
// the request may have reached the leader is ErrUnknownOutcome.
func (c *Client) apply(ctx context.Context, addr string, cmd []byte) (fsm.Result, error) {
	hdr := forwardedHeader(true)
	hdr.Set("Content-Type", "application/octet-stream")
	resp, _, err := c.do(ctx, addr, http.MethodPost, pathApply, hdr, bytes.NewReader(cmd))
	if err != nil {
		if isNotSent(err) {
			return fsm.Result{}, err
		}
		return fsm.Result{}, fmt.Errorf("%w: %w", ErrUnknownOutcome, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fsm.Result{}, decodeErr(addr, resp)
	}
	var wr wireResult
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxErrorBody)).Decode(&wr); err != nil {
		return fsm.Result{}, fmt.Errorf("%w: %s: reading the result: %w", ErrUnknownOutcome, addr, err)
	}
	return fsm.Result{Code: wr.Code, Message: wr.Message, Index: wr.Index}, nil
}

// SnapshotSave streams a snapshot of the node at addr (taken after a
// read barrier on that node) into w, verifying it on the way: the
// returned info comes from this side's fsm.VerifySnapshot, so a stream
// cut short or damaged in transit is an error.
func (c *Client) SnapshotSave(ctx context.Context, addr string, w io.Writer) (fsm.SnapshotInfo, error) {
	resp, _, err := c.do(ctx, addr, http.MethodGet, pathSnapshot, nil, nil)
	if err != nil {
		return fsm.SnapshotInfo{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fsm.SnapshotInfo{}, decodeErr(addr, resp)
	}
	info, err := fsm.VerifySnapshot(io.TeeReader(resp.Body, w))
	if err != nil {
		return info, fmt.Errorf("cluster: snapshot from %s: %w", addr, err)
	}
	return info, nil
}

// SnapshotRestore sends a snapshot to the node at addr, which verifies
// it and has the leader restore it (see Node.Restore).
func (c *Client) SnapshotRestore(ctx context.Context, addr string, r io.Reader) error {
	return c.restore(ctx, addr, r, false)
}

func (c *Client) restore(ctx context.Context, addr string, r io.Reader, forwarded bool) error {
	hdr := forwardedHeader(forwarded)
	if hdr == nil {
		hdr = http.Header{}
	}
	hdr.Set("Content-Type", "application/octet-stream")
	resp, _, err := c.do(ctx, addr, http.MethodPost, pathRestore, hdr, io.NopCloser(r))
	if err != nil {
		if isNotSent(err) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrUnknownOutcome, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return decodeErr(addr, resp)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
	return nil
}
