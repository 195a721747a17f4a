package api

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// TestAppendAuditEvent holds the hand-written encoder byte-equal to
// encoding/json (HTML escaping off) for ordinary and hostile values.
func TestAppendAuditEvent(t *testing.T) {
	ts := time.Date(2026, 11, 22, 10, 15, 0, 123456789, time.UTC)
	tests := []struct {
		name string
		ev   auditEvent
	}{
		{"full", auditEvent{Time: ts, Node: "node1", Request: auditRequest{
			IP: "127.0.0.1", Path: "/v1/key/generate/my-key", Identity: "3ecfcdf38fcbe141ae26a1030f81e96b753365a46760ae6b578698a97c59fd22",
			Method: "POST", Key: "my-key"}, Response: auditResponse{Code: 200, Time: 312796}}},
		{"minimal", auditEvent{Time: ts.Truncate(time.Second), Request: auditRequest{Path: "/version"}, Response: auditResponse{Code: 404}}},
		{"escapes", auditEvent{Time: ts, Node: "n\"\\", Request: auditRequest{
			IP: "::1", Path: "/v1/key/create/a\x00b\x1f\n\r\t\b\f\x7f<>&", Identity: "ü€😀\u2028\u2029",
			Method: "GET", Key: "bad\xff\xfeutf8\xc3"}, Response: auditResponse{Code: 503, Time: -1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var want bytes.Buffer
			enc := json.NewEncoder(&want)
			enc.SetEscapeHTML(false)
			if err := enc.Encode(tt.ev); err != nil {
				t.Fatal(err)
			}
			got := appendAuditEvent(nil, &tt.ev)
			if !bytes.Equal(append(got, '\n'), want.Bytes()) {
				t.Fatalf("appendAuditEvent:\n got %s\nwant %s", got, want.Bytes())
			}
		})
	}
}

func BenchmarkAuditEncode(b *testing.B) {
	ev := auditEvent{Time: time.Now().UTC(), Node: "node1", Request: auditRequest{
		IP: "127.0.0.1", Path: "/v1/key/generate/my-key", Identity: "3ecfcdf38fcbe141ae26a1030f81e96b753365a46760ae6b578698a97c59fd22",
		Method: "POST", Key: "my-key"}, Response: auditResponse{Code: 200, Time: 312796}}
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 384)
		for b.Loop() {
			buf = appendAuditEvent(buf[:0], &ev)
		}
	})
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(ev); err != nil {
				b.Fatal(err)
			}
		}
	})
}
