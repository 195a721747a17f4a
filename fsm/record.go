package fsm

import "fmt"

// Store layout (keys in the storage package's namespace):
//
//	k/<name>   key record        (encodeKeyRecord)
//	d/<name>   delete tombstone  (encodeTombstone): request id of the
//	           delete that removed <name>; dropped when <name> is created
//	s/<keyID>  stanza record     (encodeStanzaRecord)
//	m/rekid    the cluster's REK id, raw bytes
//
// Every record value starts with a record format version byte.
const (
	prefixKey       = "k/"
	prefixTombstone = "d/"
	prefixStanza    = "s/"
	keyREKID        = "m/rekid"

	recordVersion1 = 1
)

func keyKey(name string) []byte       { return []byte(prefixKey + name) }
func tombstoneKey(name string) []byte { return []byte(prefixTombstone + name) }
func stanzaKey(keyID string) []byte   { return []byte(prefixStanza + keyID) }

func encodeKeyRecord(k *Key) []byte {
	e := &enc{}
	e.u8(recordVersion1)
	encodeKeyFields(e, k)
	return e.b
}

func decodeKeyRecord(b []byte) (Key, error) {
	var k Key
	d := &dec{b: b}
	d.version(recordVersion1)
	decodeKeyFields(d, &k)
	if err := d.finish(); err != nil {
		return Key{}, fmt.Errorf("fsm: key record: %w", err)
	}
	return k, nil
}

func encodeStanzaRecord(s *PutStanza) []byte {
	e := &enc{}
	e.u8(recordVersion1)
	e.str(s.KeyID)
	e.str(s.REKID)
	e.bytes(s.Stanza)
	return e.b
}

func decodeStanzaRecord(b []byte) (PutStanza, error) {
	d := &dec{b: b}
	d.version(recordVersion1)
	s := PutStanza{KeyID: d.str(), REKID: d.str(), Stanza: d.bytes()}
	if err := d.finish(); err != nil {
		return PutStanza{}, fmt.Errorf("fsm: stanza record: %w", err)
	}
	return s, nil
}

func encodeTombstone(requestID [16]byte) []byte {
	e := &enc{}
	e.u8(recordVersion1)
	e.fixed16(requestID)
	return e.b
}

func decodeTombstone(b []byte) ([16]byte, error) {
	d := &dec{b: b}
	d.version(recordVersion1)
	id := d.fixed16()
	if err := d.finish(); err != nil {
		return [16]byte{}, fmt.Errorf("fsm: tombstone: %w", err)
	}
	return id, nil
}
