package fsm

import (
	"errors"
	"fmt"
)

// Payload format version of every command type defined so far. A new
// field means a new version (and a new golden vector), never an
// appended field: decoding rejects trailing bytes.
const cmdVersion1 = 1

// ErrUnknownCommand is returned (wrapped) by Decode for a command type
// this build does not know and that is not marked ignorable.
var ErrUnknownCommand = errors.New("fsm: unknown command type")

// Ignored is what Decode returns for an unknown command type that has
// IgnorableFlag set: a newer leader marked it safe for older replicas to
// skip. Apply records its index and does nothing else. It cannot be
// encoded.
type Ignored struct {
	Raw     CommandType // the type byte as found, flag included
	Payload []byte
}

// Type returns the raw type byte.
func (c *Ignored) Type() CommandType { return c.Raw }

// Encode returns the log-entry bytes of c: [type byte][payload]. The
// payload starts with a version byte; strings and byte slices are a
// uvarint length followed by the bytes. See DESIGN.md for each layout.
func Encode(c Command) ([]byte, error) {
	e := &enc{}
	switch c := c.(type) {
	case *CreateKey:
		e.u8(uint8(CmdCreateKey))
		e.u8(cmdVersion1)
		encodeKeyFields(e, &c.Key)
	case *DeleteKey:
		e.u8(uint8(CmdDeleteKey))
		e.u8(cmdVersion1)
		e.str(c.Name)
		e.fixed16(c.RequestID)
	case *PutStanza:
		e.u8(uint8(CmdPutStanza))
		e.u8(cmdVersion1)
		e.str(c.KeyID)
		e.str(c.REKID)
		e.bytes(c.Stanza)
	case nil:
		return nil, errors.New("fsm: encode: nil command")
	default:
		return nil, fmt.Errorf("fsm: encode: cannot encode %T", c)
	}
	return e.b, nil
}

// decoders maps a (flag-less) command type to its payload decoder.
var decoders = map[CommandType]func(d *dec) Command{
	CmdCreateKey: func(d *dec) Command {
		c := &CreateKey{}
		d.version(cmdVersion1)
		decodeKeyFields(d, &c.Key)
		return c
	},
	CmdDeleteKey: func(d *dec) Command {
		d.version(cmdVersion1)
		return &DeleteKey{Name: d.str(), RequestID: d.fixed16()}
	},
	CmdPutStanza: func(d *dec) Command {
		d.version(cmdVersion1)
		return &PutStanza{KeyID: d.str(), REKID: d.str(), Stanza: d.bytes()}
	},
}

// Decode parses log-entry bytes made by Encode. It never panics. The
// IgnorableFlag bit is masked before the type is looked up (Consul's
// rule); an unknown type decodes to *Ignored if the flag is set and
// fails with ErrUnknownCommand otherwise.
func Decode(b []byte) (Command, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty command", ErrMalformed)
	}
	raw := CommandType(b[0])
	fn, ok := decoders[raw&^IgnorableFlag]
	if !ok {
		if raw&IgnorableFlag != 0 {
			return &Ignored{Raw: raw, Payload: append([]byte(nil), b[1:]...)}, nil
		}
		return nil, fmt.Errorf("%w: %d", ErrUnknownCommand, raw)
	}
	d := &dec{b: b[1:]}
	c := fn(d)
	if err := d.finish(); err != nil {
		return nil, fmt.Errorf("fsm: decode command type %d: %w", raw, err)
	}
	return c, nil
}

func encodeKeyFields(e *enc, k *Key) {
	e.str(k.Name)
	e.u8(k.Algorithm)
	e.uvarint(uint64(k.Version))
	e.bytes(k.Sealed)
	e.timestamp(k.CreatedAt)
	e.str(k.CreatedBy)
	e.boolean(k.Imported)
	e.fixed16(k.RequestID)
}

func decodeKeyFields(d *dec, k *Key) {
	k.Name = d.str()
	k.Algorithm = d.u8()
	v := d.uvarint()
	if v > 1<<32-1 {
		d.fail("key version overflows uint32")
	}
	k.Version = uint32(v)
	k.Sealed = d.bytes()
	k.CreatedAt = d.timestamp()
	k.CreatedBy = d.str()
	k.Imported = d.boolean()
	k.RequestID = d.fixed16()
}
