package fsm

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"

	"github.com/hashicorp/raft"

	"github.com/kmsd/kmsd/storage"
)

// Snapshot stream format, version 1 (all integers big-endian):
//
//	header   "KMSDSNAP" | version uint16 | applied index uint64 |
//	         applied term uint64 | record count uint64
//	records  count × ( uvarint len | key | uvarint len | value )
//	trailer  SHA-256 of header and records (32 bytes), then end of stream
//
// Records are the storage key/value pairs in ascending key order, values
// exactly as stored (key material stays sealed).
const (
	snapMagic    = "KMSDSNAP"
	snapVersion1 = 1
	snapHdrLen   = 8 + 2 + 8 + 8 + 8

	maxSnapKey   = 64 << 10 // bounds allocations when reading garbage
	maxSnapValue = 16 << 20
)

// Snapshot errors. Compare with errors.Is.
var (
	ErrSnapshotCorrupt = errors.New("fsm: snapshot corrupt")
	ErrSnapshotVersion = errors.New("fsm: unsupported snapshot version")
)

// SnapshotHeader is the fixed header of a snapshot stream.
type SnapshotHeader struct {
	Version uint16
	Index   uint64 // applied index of the state in the snapshot
	Term    uint64
	Records uint64
}

// SnapshotInfo describes a verified snapshot (VerifySnapshot).
type SnapshotInfo struct {
	SnapshotHeader
	Keys         int      // k/ records
	Tombstones   int      // d/ records
	Stanzas      int      // s/ records
	Other        int      // any other record
	StanzaKeyIDs []string // HSM key ids with a stanza, sorted
	REKID        string   // "" if none recorded
	Checksum     [sha256.Size]byte
	ChecksumOK   bool
}

// Snapshot captures a point-in-time storage view. It is cheap and returns
// at once; Persist streams the view while Apply continues.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	v := f.db.Snapshot()
	if _, _, err := v.Applied(); err != nil {
		v.Release()
		return nil, fmt.Errorf("fsm: snapshot: %w", err)
	}
	return &fsmSnapshot{view: v}, nil
}

type fsmSnapshot struct{ view *storage.View }

// Persist writes the view to sink in the snapshot format.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := writeSnapshot(sink, s.view); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("fsm: persist snapshot: %w", err)
	}
	return sink.Close()
}

// Release discards the view.
func (s *fsmSnapshot) Release() { s.view.Release() }

func writeSnapshot(w io.Writer, v *storage.View) error {
	index, term, err := v.Applied()
	if err != nil {
		return err
	}
	count, err := v.Count()
	if err != nil {
		return err
	}
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, h), 64<<10)
	bw.Write(encodeSnapHeader(SnapshotHeader{Version: snapVersion1, Index: index, Term: term, Records: count}))
	var n uint64
	var lb [binary.MaxVarintLen64]byte
	err = v.Iterate(func(key, val []byte) (bool, error) {
		n++
		bw.Write(lb[:binary.PutUvarint(lb[:], uint64(len(key)))])
		bw.Write(key)
		bw.Write(lb[:binary.PutUvarint(lb[:], uint64(len(val)))])
		_, err := bw.Write(val)
		return true, err
	})
	if err != nil {
		return err
	}
	if n != count { // the view is immutable: this cannot happen
		return fmt.Errorf("view yielded %d records, counted %d", n, count)
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	_, err = w.Write(h.Sum(nil))
	return err
}

func encodeSnapHeader(hd SnapshotHeader) []byte {
	b := make([]byte, 0, snapHdrLen)
	b = append(b, snapMagic...)
	b = binary.BigEndian.AppendUint16(b, hd.Version)
	b = binary.BigEndian.AppendUint64(b, hd.Index)
	b = binary.BigEndian.AppendUint64(b, hd.Term)
	return binary.BigEndian.AppendUint64(b, hd.Records)
}

// snapReader reads a snapshot stream record by record, hashing as it
// goes; the record after the last one reports ok == false only once the
// trailer checksum matched and the stream ended.
type snapReader struct {
	r         *bufio.Reader
	h         hash.Hash
	hdr       SnapshotHeader
	remaining uint64
	sum       [sha256.Size]byte
}

func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrSnapshotCorrupt, fmt.Sprintf(format, a...))
}

// ReadSnapshotHeader reads and checks only the header of a snapshot.
func ReadSnapshotHeader(r io.Reader) (SnapshotHeader, error) {
	sr, err := newSnapReader(r)
	if err != nil {
		return SnapshotHeader{}, err
	}
	return sr.hdr, nil
}

func newSnapReader(r io.Reader) (*snapReader, error) {
	sr := &snapReader{r: bufio.NewReaderSize(r, 64<<10), h: sha256.New()}
	b := make([]byte, snapHdrLen)
	if err := sr.full(b); err != nil {
		return nil, err
	}
	if string(b[:8]) != snapMagic {
		return nil, corrupt("bad magic %q", b[:8])
	}
	sr.hdr = SnapshotHeader{
		Version: binary.BigEndian.Uint16(b[8:]),
		Index:   binary.BigEndian.Uint64(b[10:]),
		Term:    binary.BigEndian.Uint64(b[18:]),
		Records: binary.BigEndian.Uint64(b[26:]),
	}
	if sr.hdr.Version != snapVersion1 {
		return nil, fmt.Errorf("%w: %d (this build reads %d)", ErrSnapshotVersion, sr.hdr.Version, snapVersion1)
	}
	sr.remaining = sr.hdr.Records
	return sr, nil
}

// full reads len(b) hashed bytes.
func (sr *snapReader) full(b []byte) error {
	if _, err := io.ReadFull(sr.r, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return corrupt("truncated")
		}
		return err
	}
	sr.h.Write(b)
	return nil
}

func (sr *snapReader) field(limit uint64) ([]byte, error) {
	n, err := binary.ReadUvarint(hashingByteReader{sr})
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, corrupt("truncated")
		}
		return nil, corrupt("bad length: %v", err)
	}
	if n > limit {
		return nil, corrupt("field of %d bytes exceeds %d", n, limit)
	}
	b := make([]byte, n)
	return b, sr.full(b)
}

type hashingByteReader struct{ sr *snapReader }

func (h hashingByteReader) ReadByte() (byte, error) {
	c, err := h.sr.r.ReadByte()
	if err == nil {
		h.sr.h.Write([]byte{c})
	}
	return c, err
}

// next returns the next record; see snapReader.
func (sr *snapReader) next() (key, val []byte, ok bool, err error) {
	if sr.remaining == 0 {
		return nil, nil, false, sr.finish()
	}
	if key, err = sr.field(maxSnapKey); err != nil {
		return nil, nil, false, err
	}
	if len(key) == 0 || key[0] == 0 {
		return nil, nil, false, corrupt("reserved or empty key")
	}
	if val, err = sr.field(maxSnapValue); err != nil {
		return nil, nil, false, err
	}
	sr.remaining--
	return key, val, true, nil
}

func (sr *snapReader) finish() error {
	want := sr.h.Sum(nil)
	if _, err := io.ReadFull(sr.r, sr.sum[:]); err != nil {
		return corrupt("truncated checksum")
	}
	if !bytes.Equal(want, sr.sum[:]) {
		return corrupt("checksum mismatch")
	}
	if _, err := sr.r.ReadByte(); err != io.EOF {
		if err != nil {
			return err
		}
		return corrupt("trailing bytes after checksum")
	}
	return nil
}

// VerifySnapshot reads a whole snapshot stream, checks its structure and
// checksum and decodes every record it knows. It returns what it learnt
// even on error (ChecksumOK reports whether the checksum matched).
func VerifySnapshot(r io.Reader) (SnapshotInfo, error) {
	var info SnapshotInfo
	sr, err := newSnapReader(r)
	if err != nil {
		return info, err
	}
	info.SnapshotHeader = sr.hdr
	for {
		key, val, ok, err := sr.next()
		if err != nil {
			return info, err
		}
		if !ok {
			break
		}
		if err := info.add(key, val); err != nil {
			return info, err
		}
	}
	info.Checksum = sr.sum
	info.ChecksumOK = true
	return info, nil
}

func (info *SnapshotInfo) add(key, val []byte) error {
	k := string(key)
	var err error
	switch {
	case strings.HasPrefix(k, prefixKey):
		info.Keys++
		_, err = decodeKeyRecord(val)
	case strings.HasPrefix(k, prefixTombstone):
		info.Tombstones++
		_, err = decodeTombstone(val)
	case strings.HasPrefix(k, prefixStanza):
		info.Stanzas++
		var s PutStanza
		s, err = decodeStanzaRecord(val)
		info.StanzaKeyIDs = append(info.StanzaKeyIDs, s.KeyID)
	case k == keyREKID:
		info.REKID = string(val)
	default:
		info.Other++
	}
	if err != nil {
		return corrupt("record %q: %v", key, err)
	}
	return nil
}

// Restore replaces the whole state with the snapshot read from rc.
//
// The stream is first spooled to a temporary file and verified
// completely (structure, every record, checksum); only then is the
// storage replaced. A corrupt snapshot is therefore rejected with the
// state untouched. If storage fails after it began replacing the state,
// Restore panics: the replica holds a partial state and must not run (on
// restart storage refuses the directory, see storage.ErrRestoreIncomplete).
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	tmp, err := os.CreateTemp(f.cfg.TempDir, "kmsd-snapshot-restore-*")
	if err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()

	info, err := VerifySnapshot(io.TeeReader(rc, tmp))
	if err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	sr, err := newSnapReader(tmp)
	if err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.db.Restore(sr.next, info.Index, info.Term); err != nil {
		if errors.Is(err, storage.ErrRestoreIncomplete) {
			f.log.Error("restore failed after the state was dropped", "error", err)
			panic(fmt.Sprintf("fsm: restore left a partial state: %v", err))
		}
		return fmt.Errorf("fsm: restore: %w", err)
	}
	if f.cfg.OnRestore != nil {
		f.cfg.OnRestore()
	}
	f.setApplied(info.Index, info.Term)
	f.log.Info("restored snapshot", "index", info.Index, "term", info.Term,
		"keys", info.Keys, "stanzas", info.Stanzas)
	return nil
}
