package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// ALPN protocol names on the node channel. One TCP port carries both:
// the TLS handshake's negotiated protocol decides where a connection goes.
const (
	protoRaft = "kmsd-raft/1"
	protoRPC  = "kmsd-rpc/1"
)

const (
	// handshakeTimeout bounds an inbound TLS handshake; a slow or silent
	// peer never holds up the accept loop (each handshake runs in its own
	// goroutine) and is cut off after this long.
	handshakeTimeout = 5 * time.Second
	// maxHandshakes bounds concurrent inbound handshakes; beyond it new
	// connections are closed at once.
	maxHandshakes = 256
	// dialTimeout bounds a TCP connect to a peer (a LAN: a peer that does
	// not answer in this time is down).
	dialTimeout = 2 * time.Second
)

// errNoTLS is returned by node-channel clients when no TLS was configured.
var errNoTLS = errors.New("cluster: node channel needs TLS (Config.TLS is nil)")

// nodeTLS returns a fresh per-connection TLS configuration from fn: a
// clone (the caller's value is never modified) with TLS 1.3 as the
// minimum, client certificates required and verified against the cluster
// CA, and the given ALPN protocols. It refuses a configuration without a
// cluster CA, so the system roots are never trusted on the node channel.
func nodeTLS(fn func() *tls.Config, protos ...string) (*tls.Config, error) {
	if fn == nil {
		return nil, errNoTLS
	}
	base := fn()
	if base == nil {
		return nil, errors.New("cluster: tls: the TLS config function returned nil")
	}
	c := base.Clone()
	if c.RootCAs == nil && c.ClientCAs == nil {
		return nil, errors.New("cluster: tls: no cluster CA (RootCAs/ClientCAs) configured")
	}
	if c.RootCAs == nil {
		c.RootCAs = c.ClientCAs
	}
	if c.ClientCAs == nil {
		c.ClientCAs = c.RootCAs
	}
	if len(c.Certificates) == 0 && c.GetCertificate == nil && c.GetClientCertificate == nil {
		return nil, errors.New("cluster: tls: no node certificate configured")
	}
	// A node certificate given only as GetCertificate is also presented
	// as the client certificate when this node dials.
	if len(c.Certificates) == 0 && c.GetClientCertificate == nil && c.GetCertificate != nil {
		get := c.GetCertificate
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return get(&tls.ClientHelloInfo{})
		}
	}
	c.MinVersion = tls.VersionTLS13
	c.ClientAuth = tls.RequireAndVerifyClientCert
	c.NextProtos = protos
	c.InsecureSkipVerify = false
	c.VerifyConnection = nil
	c.VerifyPeerCertificate = nil
	return c, nil
}

// dialNode opens a TLS connection to a node-channel address with the
// given ALPN protocol, verifying the server against the cluster CA and
// the address's host (standard hostname verification: the node
// certificate carries its advertise host as an IP or DNS SAN).
func dialNode(ctx context.Context, fn func() *tls.Config, addr, proto string) (*tls.Conn, error) {
	cfg, err := nodeTLS(fn, proto)
	if err != nil {
		return nil, err
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("cluster: dial %s: %w", addr, err)
	}
	cfg.ServerName = host
	d := net.Dialer{Timeout: dialTimeout, KeepAlive: 15 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cluster: dial %s: %w", addr, err)
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("cluster: dial %s: tls: %w", addr, err)
	}
	if got := tc.ConnectionState().NegotiatedProtocol; got != proto {
		tc.Close()
		return nil, fmt.Errorf("cluster: dial %s: peer negotiated protocol %q, want %q", addr, got, proto)
	}
	return tc, nil
}

// nodeAddr is a net.Addr that reports the advertise address verbatim
// (which may be a host name), as raft's LocalAddr.
type nodeAddr string

func (a nodeAddr) Network() string { return "tcp" }
func (a nodeAddr) String() string  { return string(a) }

// mux owns the node-channel listener. Every accepted connection does
// its TLS handshake in its own goroutine (bounded by handshakeTimeout and
// maxHandshakes) and is then routed by ALPN to the raft stream layer or
// the RPC listener. Connections it handed out are tracked so that Close
// ends them all (raft's NetworkTransport does not close inbound
// connections itself).
type mux struct {
	ln    net.Listener
	adv   nodeAddr
	tlsFn func() *tls.Config
	log   *slog.Logger

	raft *subListener
	rpc  *subListener

	sem  chan struct{}
	done chan struct{}
	wg   sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func newMux(bind, advertise string, tlsFn func() *tls.Config, log *slog.Logger) (*mux, error) {
	if _, err := nodeTLS(tlsFn, protoRaft); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("cluster: listen %s: %w", bind, err)
	}
	adv := advertise
	if adv == "" {
		a := ln.Addr().(*net.TCPAddr)
		if a.IP.IsUnspecified() {
			ln.Close()
			return nil, fmt.Errorf("cluster: bind address %s is unspecified: set an advertise address", bind)
		}
		adv = a.String()
	} else if _, _, err := net.SplitHostPort(adv); err != nil {
		ln.Close()
		return nil, fmt.Errorf("cluster: advertise address %q: %w", adv, err)
	}
	m := &mux{
		ln: ln, adv: nodeAddr(adv), tlsFn: tlsFn, log: log,
		sem:   make(chan struct{}, maxHandshakes),
		done:  make(chan struct{}),
		conns: map[net.Conn]struct{}{},
	}
	m.raft = m.newSub()
	m.rpc = m.newSub()
	m.wg.Add(1)
	go m.acceptLoop()
	return m, nil
}

func (m *mux) newSub() *subListener {
	return &subListener{m: m, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (m *mux) acceptLoop() {
	defer m.wg.Done()
	var delay time.Duration
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Transient (e.g. EMFILE): back off like net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			m.log.Warn("node channel: accept failed", "error", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-m.done:
				return
			}
			continue
		}
		delay = 0
		select {
		case m.sem <- struct{}{}:
		default:
			m.log.Warn("node channel: too many pending handshakes; dropping connection", "remote", c.RemoteAddr().String())
			c.Close()
			continue
		}
		if !m.track(c) {
			<-m.sem
			c.Close()
			return
		}
		m.wg.Add(1)
		go m.handshake(c)
	}
}

// track registers c so Close ends it; false once the mux is closed.
func (m *mux) track(c net.Conn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return false
	}
	m.conns[c] = struct{}{}
	return true
}

func (m *mux) untrack(c net.Conn) {
	m.mu.Lock()
	delete(m.conns, c)
	m.mu.Unlock()
}

func (m *mux) handshake(raw net.Conn) {
	defer m.wg.Done()
	release := func() { <-m.sem }
	cfg, err := nodeTLS(m.tlsFn, protoRaft, protoRPC)
	if err != nil {
		release()
		m.log.Error("node channel: no TLS configuration; closing connection", "remote", raw.RemoteAddr().String(), "error", err)
		m.drop(raw)
		return
	}
	tc := tls.Server(raw, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	err = tc.HandshakeContext(ctx)
	cancel()
	release()
	if err != nil {
		select {
		case <-m.done: // closed under us: not the peer's fault
		default:
			m.log.Warn("node channel: TLS handshake failed; connection rejected",
				"remote", raw.RemoteAddr().String(), "error", err)
		}
		m.drop(raw)
		return
	}
	var sub *subListener
	switch p := tc.ConnectionState().NegotiatedProtocol; p {
	case protoRaft:
		sub = m.raft
	case protoRPC:
		sub = m.rpc
	default:
		m.log.Warn("node channel: no ALPN protocol negotiated; connection rejected",
			"remote", raw.RemoteAddr().String(), "protocol", p)
		m.drop(raw)
		return
	}
	// Hand over; the tracked raw conn is closed by Close either way.
	conn := &trackedConn{Conn: tc, tc: tc, m: m, raw: raw}
	select {
	case sub.ch <- conn:
	case <-sub.done:
		m.drop(raw)
	case <-m.done:
		m.drop(raw)
	}
}

func (m *mux) drop(c net.Conn) {
	m.untrack(c)
	c.Close()
}

// Close stops accepting, ends every tracked connection (pending
// handshakes included) and waits for the mux's goroutines.
func (m *mux) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	close(m.done)
	conns := m.conns
	m.conns = map[net.Conn]struct{}{}
	m.mu.Unlock()
	err := m.ln.Close()
	for c := range conns {
		c.Close()
	}
	m.wg.Wait()
	return err
}

// trackedConn forgets its raw connection when closed. It is not a
// *tls.Conn on purpose: net/http would refuse a *tls.Conn whose ALPN
// protocol it has no TLSNextProto handler for; through ConnectionState
// it still fills Request.TLS (the peer's certificates) for handlers.
type trackedConn struct {
	net.Conn
	tc   *tls.Conn
	m    *mux
	raw  net.Conn
	once sync.Once
}

// ConnectionState returns the TLS state (used by net/http for r.TLS).
func (c *trackedConn) ConnectionState() tls.ConnectionState { return c.tc.ConnectionState() }

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.m.untrack(c.raw) })
	return err
}

// subListener is the net.Listener for one ALPN protocol. Closing it
// only stops its own Accept; the mux is closed by the node.
type subListener struct {
	m    *mux
	ch   chan net.Conn
	once sync.Once
	done chan struct{}
}

func (l *subListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-l.m.done:
		return nil, net.ErrClosed
	}
}

func (l *subListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *subListener) Addr() net.Addr { return l.m.adv }

// streamLayer is raft's StreamLayer on the node channel: inbound raft
// connections from the mux, outbound ones dialled with ALPN kmsd-raft/1.
type streamLayer struct {
	*subListener
}

var _ raft.StreamLayer = streamLayer{}

func (s streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	select {
	case <-s.m.done:
		return nil, net.ErrClosed
	default:
	}
	c, err := dialNode(ctx, s.m.tlsFn, string(addr), protoRaft)
	if err != nil {
		return nil, err
	}
	raw := c.NetConn() // closing it never blocks on a close_notify
	if !s.m.track(raw) {
		raw.Close()
		return nil, net.ErrClosed
	}
	return &trackedConn{Conn: c, tc: c, m: s.m, raw: raw}, nil
}
