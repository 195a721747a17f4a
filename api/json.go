package api

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
)

// writeJSON sends v as a 200 application/json response written by a
// json.Encoder (so a '\n' follows the object), with Content-Length. The
// encoded bytes are zeroed afterwards: responses may carry plaintext.
func writeJSON(w http.ResponseWriter, v any) error {
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(v); err != nil {
		return fail500("failed to encode response", err)
	}
	b := buf.Bytes()
	defer clear(b)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
	return nil
}

// writeEmpty sends the 200 of a mutation: no body, Content-Length 0 and
// no Content-Type.
func writeEmpty(w http.ResponseWriter) error {
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusOK)
	return nil
}

// readBody reads the whole (size-limited) request body. Whether a body
// is present is decided by its bytes, not by Content-Length, so chunked
// bodies are read too (KES Q5).
func readBody(req *request) ([]byte, error) {
	b, err := io.ReadAll(req.r.Body)
	if err != nil {
		clear(b)
		return nil, err
	}
	return b, nil
}

// decodeBody reads and decodes a JSON request body into v. An empty body
// decodes to v unchanged if emptyOK, and fails otherwise. Every failure
// is bad (a 400 the caller picks). Read and decode failures are logged at
// ERROR, as KES does (spec §9.3), so they show on /v1/log/error; the
// decoder's messages quote at most one byte of the body. The raw body is
// zeroed.
func decodeBody(req *request, v any, emptyOK bool, bad *apiError) error {
	b, err := readBody(req)
	if err != nil {
		return &apiError{status: bad.status, message: bad.message, cause: err, logIt: true}
	}
	defer clear(b)
	if len(bytes.TrimSpace(b)) == 0 {
		if emptyOK {
			return nil
		}
		return bad
	}
	if err := json.Unmarshal(b, v); err != nil {
		return &apiError{status: bad.status, message: bad.message, cause: err, logIt: true}
	}
	return nil
}
