// Package replication is the wire format between the two storage nodes of
// a pair (docs/storage-pairs.md): a hello that compares the nodes' volumes
// and epoch history, writes sent for replication or forwarded to the
// owner, their acknowledgements, and pings that carry the follower's read
// lease. It is a pure codec: bytes in, values out; the connection belongs
// to its user.
//
// Every message is a frame: magic (2 bytes), version (1), type (1),
// payload length (4, big-endian), CRC-32C of the header's first 8 bytes
// and the payload (4), then the payload.
package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Frame constants.
const (
	Magic      = 0xFA1B
	Version    = 1
	HeaderLen  = 12
	MaxPayload = 1 << 20 // a write of up to 1 MiB
	SectorSize = 512
	MaxSerial  = 20 // ATA IDENTIFY serial number field
	MaxVolumes = 4096
	MaxName    = 64 // pair and node names, a refusal's reason is up to 1 KiB
	MaxReason  = 1024
	MaxMACs    = 16
)

// Type is a message type.
type Type uint8

// Message types.
const (
	TypeHello Type = 1
	TypeWrite Type = 2
	TypeAck   Type = 3
	TypePing  Type = 4
	// TypeRefuse closes a connection with the reason, for the other side's
	// log and status.
	TypeRefuse Type = 5
	// TypeInSync tells the follower that resync is complete: it holds the
	// owner's data generation and may serve initiators.
	TypeInSync Type = 6
	// TypeLeave announces a planned departure: from the owner, "I have
	// released ownership, take it"; from the follower, "I no longer serve,
	// my read lease is void".
	TypeLeave Type = 7
)

// Decoding errors; a connection that yields one is closed.
var (
	ErrTruncated   = errors.New("replication: truncated message")
	ErrBadMagic    = errors.New("replication: not a replication message (bad magic)")
	ErrVersion     = errors.New("replication: unsupported version")
	ErrChecksum    = errors.New("replication: checksum mismatch")
	ErrTooLarge    = errors.New("replication: payload too large")
	ErrUnknownType = errors.New("replication: unknown message type")
	ErrMalformed   = errors.New("replication: malformed payload")
)

// Message is one of *Hello, *Write, *Ack, *Ping, *Refuse, *InSync, *Leave.
type Message interface {
	Type() Type
	check() error
	appendPayload([]byte) []byte
	parsePayload([]byte) error
}

// VolumeInfo is what a node says of one replicated volume in its hello:
// both nodes must agree on all of it.
type VolumeInfo struct {
	Shelf   uint16
	Slot    uint8
	Sectors uint64
	Serial  string // at most MaxSerial bytes
}

// Hello flags.
const (
	HelloOwner = 1 << 0 // the sender holds write ownership
	// HelloIdentified: forwards to the sender may name the initiator
	// (FlagIdentified). A node without it takes only the older form.
	HelloIdentified = 1 << 1
)

// Hello opens a replication connection.
type Hello struct {
	Pair  string // the pair's name, at most MaxName bytes
	Node  string // the sender's name
	Epoch uint64 // the highest epoch the sender has seen
	Flags uint8
	// Generation is the data generation the sender's volumes hold: the
	// owner's current one, or the one a follower last was in sync with;
	// zero when the sender cannot vouch for its data (it was owner of an
	// older epoch, or has never been in sync).
	Generation [16]byte
	MACs       [][6]byte // the sender's AoE interfaces' addresses
	Volumes    []VolumeInfo
}

// Refuse ends a connection and says why.
type Refuse struct {
	Reason string
}

// Leave is a planned departure (TypeLeave). From an owner that had the
// witness hand ownership to the peer (witness.OpHandover), NewEpoch is the
// peer's epoch and LeaseMS what is left of its lease as the message
// leaves; the peer owns writes on receipt, alone.
type Leave struct {
	Epoch    uint64
	NewEpoch uint64 // 0: no handover; the peer acquires at the witness
	LeaseMS  uint32
}

// InSync ends a resync: the follower holds Generation and may serve.
type InSync struct {
	Epoch      uint64
	Generation [16]byte
}

// Write flags.
const (
	FlagForward = 1 << 0 // from the follower to the owner: apply, replicate, then acknowledge
	FlagSync    = 1 << 1 // the volume is a sync (O_DSYNC) volume
	FlagResync  = 1 << 2 // region copied by a resync, not an initiator's write
	// FlagIdentified: a forward that names its initiator and tag
	// (Write.Initiator, Write.Tag), sent only to an owner whose hello has
	// HelloIdentified.
	FlagIdentified = 1 << 3
)

// Write carries sectors to apply at LBA of the volume at Shelf.Slot.
type Write struct {
	Epoch uint64
	Seq   uint64 // the sender's sequence number, echoed in the Ack
	Shelf uint16
	Slot  uint8
	Flags uint8
	LBA   uint64
	// Seen, on a forward, is the highest owner sequence number the
	// follower had applied when the initiator's frame reached it: an
	// overlapping write the owner sequenced later was not yet
	// acknowledged when the initiator sent this frame, so this frame is
	// a late resend or concurrent with it, and the owner drops it.
	Seen uint64
	// Initiator and Tag, on a forward with FlagIdentified, are the
	// initiator's address and the frame's tag: the owner answers, and
	// does not apply, a write it completed already, whichever node it
	// came through (the late original of a resend: our initiator resends
	// through the other node under the same tag).
	Initiator [6]byte
	Tag       uint32
	Data      []byte // a whole number of sectors
}

// Status is the outcome of a Write.
type Status uint8

// Write outcomes.
const (
	StatusOK         Status = 0
	StatusStaleEpoch Status = 1 // the write's epoch is older than the receiver's
	StatusNotOwner   Status = 2 // a forward reached a node that does not own writes
	StatusIOError    Status = 3
	StatusNoVolume   Status = 4
	StatusOutOfRange Status = 5
)

// Ack answers a Write.
type Ack struct {
	Epoch  uint64 // the receiver's epoch (a stale sender learns the new one)
	Seq    uint64
	Status Status
}

// Ping keeps the connection alive and renews the follower's read lease.
type Ping struct {
	Epoch       uint64
	ReadLeaseMS uint32 // the follower may serve reads this long from sending its ping
	Applied     uint64 // from the follower: the highest owner sequence number it has applied
}

func (*Hello) Type() Type  { return TypeHello }
func (*Write) Type() Type  { return TypeWrite }
func (*Ack) Type() Type    { return TypeAck }
func (*Ping) Type() Type   { return TypePing }
func (*Refuse) Type() Type { return TypeRefuse }
func (*InSync) Type() Type { return TypeInSync }
func (*Leave) Type() Type  { return TypeLeave }

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Append appends m as one frame to b. A message the decoder would refuse
// is refused here too.
func Append(b []byte, m Message) ([]byte, error) {
	if err := m.check(); err != nil {
		return b, err
	}
	start := len(b)
	b = append(b, byte(Magic>>8), byte(Magic&0xff), Version, byte(m.Type()), 0, 0, 0, 0, 0, 0, 0, 0)
	b = m.appendPayload(b)
	n := len(b) - start - HeaderLen
	if n > MaxPayload {
		return b[:start], fmt.Errorf("%w: %d bytes", ErrTooLarge, n)
	}
	binary.BigEndian.PutUint32(b[start+4:], uint32(n))
	binary.BigEndian.PutUint32(b[start+8:], crcOf(b[start:]))
	return b, nil
}

// crcOf is the checksum of a frame: its first 8 header bytes and its
// payload.
func crcOf(frame []byte) uint32 {
	return crc32.Update(crc32.Checksum(frame[:8], castagnoli), castagnoli, frame[HeaderLen:])
}

// header checks a frame header and returns the type and payload length.
func header(h []byte) (Type, int, error) {
	if len(h) < HeaderLen {
		return 0, 0, ErrTruncated
	}
	if binary.BigEndian.Uint16(h) != Magic {
		return 0, 0, ErrBadMagic
	}
	if h[2] != Version {
		return 0, 0, fmt.Errorf("%w %d", ErrVersion, h[2])
	}
	n := binary.BigEndian.Uint32(h[4:])
	if n > MaxPayload {
		return 0, 0, fmt.Errorf("%w: %d bytes", ErrTooLarge, n)
	}
	return Type(h[3]), int(n), nil
}

func newMessage(t Type) (Message, error) {
	switch t {
	case TypeHello:
		return &Hello{}, nil
	case TypeWrite:
		return &Write{}, nil
	case TypeAck:
		return &Ack{}, nil
	case TypePing:
		return &Ping{}, nil
	case TypeRefuse:
		return &Refuse{}, nil
	case TypeInSync:
		return &InSync{}, nil
	case TypeLeave:
		return &Leave{}, nil
	}
	return nil, fmt.Errorf("%w %d", ErrUnknownType, t)
}

// Parse decodes the frame at the start of b and returns the message and
// the number of bytes it took. A Write's Data aliases b.
func Parse(b []byte) (Message, int, error) {
	t, n, err := header(b)
	if err != nil {
		return nil, 0, err
	}
	if len(b) < HeaderLen+n {
		return nil, 0, ErrTruncated
	}
	if crcOf(b[:HeaderLen+n]) != binary.BigEndian.Uint32(b[8:]) {
		return nil, 0, ErrChecksum
	}
	m, err := newMessage(t)
	if err != nil {
		return nil, 0, err
	}
	if err := m.parsePayload(b[HeaderLen : HeaderLen+n]); err != nil {
		return nil, 0, err
	}
	return m, HeaderLen + n, nil
}

// Read reads one frame from r into buf (grown as needed) and decodes it.
// The message may alias the returned buffer.
func Read(r io.Reader, buf []byte) (Message, []byte, error) {
	if cap(buf) < HeaderLen {
		buf = make([]byte, HeaderLen, 64<<10)
	}
	buf = buf[:HeaderLen]
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = ErrTruncated
		}
		return nil, buf, err
	}
	_, n, err := header(buf)
	if err != nil {
		return nil, buf, err
	}
	if cap(buf) < HeaderLen+n {
		nb := make([]byte, HeaderLen, HeaderLen+n)
		copy(nb, buf)
		buf = nb
	}
	buf = buf[:HeaderLen+n]
	if _, err := io.ReadFull(r, buf[HeaderLen:]); err != nil {
		return nil, buf, ErrTruncated
	}
	m, _, err := Parse(buf)
	return m, buf, err
}

func (h *Hello) check() error {
	if len(h.Pair) > MaxName || len(h.Node) > MaxName {
		return fmt.Errorf("%w: pair or node name longer than %d bytes", ErrMalformed, MaxName)
	}
	if len(h.MACs) > MaxMACs {
		return fmt.Errorf("%w: %d MAC addresses", ErrMalformed, len(h.MACs))
	}
	if len(h.Volumes) > MaxVolumes {
		return fmt.Errorf("%w: %d volumes", ErrMalformed, len(h.Volumes))
	}
	for _, v := range h.Volumes {
		if len(v.Serial) > MaxSerial {
			return fmt.Errorf("%w: serial %q longer than %d bytes", ErrMalformed, v.Serial, MaxSerial)
		}
	}
	return nil
}

func (w *Write) check() error {
	if len(w.Data) == 0 || len(w.Data)%SectorSize != 0 {
		return fmt.Errorf("%w: write of %d bytes, not a whole number of sectors", ErrMalformed, len(w.Data))
	}
	if w.Flags&^(FlagForward|FlagSync|FlagResync|FlagIdentified) != 0 {
		return fmt.Errorf("%w: unknown write flags %#x", ErrMalformed, w.Flags)
	}
	return nil
}

func (a *Ack) check() error {
	if a.Status > StatusOutOfRange {
		return fmt.Errorf("%w: status %d", ErrMalformed, a.Status)
	}
	return nil
}

func (*Ping) check() error   { return nil }
func (*InSync) check() error { return nil }
func (m *Leave) check() error {
	if m.NewEpoch != 0 && (m.NewEpoch <= m.Epoch || m.LeaseMS == 0) {
		return fmt.Errorf("%w: handover to epoch %d from %d with a %d ms lease", ErrMalformed, m.NewEpoch, m.Epoch, m.LeaseMS)
	}
	return nil
}

func (m *Leave) appendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.Epoch)
	if m.NewEpoch == 0 {
		return b
	}
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(b, m.NewEpoch), m.LeaseMS)
}

func (m *Leave) parsePayload(p []byte) error {
	if len(p) != 8 && len(p) != 20 {
		return fmt.Errorf("%w: leave of %d bytes", ErrMalformed, len(p))
	}
	m.Epoch = binary.BigEndian.Uint64(p)
	if len(p) == 20 {
		m.NewEpoch, m.LeaseMS = binary.BigEndian.Uint64(p[8:]), binary.BigEndian.Uint32(p[16:])
		if m.NewEpoch == 0 {
			return fmt.Errorf("%w: handover to epoch 0", ErrMalformed)
		}
	}
	return m.check()
}

func (r *Refuse) check() error {
	if len(r.Reason) > MaxReason {
		return fmt.Errorf("%w: reason of %d bytes", ErrMalformed, len(r.Reason))
	}
	return nil
}

func (r *Refuse) appendPayload(b []byte) []byte { return append(b, r.Reason...) }

func (r *Refuse) parsePayload(p []byte) error {
	r.Reason = string(p)
	return r.check()
}

func (s *InSync) appendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, s.Epoch)
	return append(b, s.Generation[:]...)
}

func (s *InSync) parsePayload(p []byte) error {
	if len(p) != 24 {
		return fmt.Errorf("%w: in-sync of %d bytes", ErrMalformed, len(p))
	}
	s.Epoch = binary.BigEndian.Uint64(p)
	copy(s.Generation[:], p[8:])
	return nil
}

// appendString appends a one-byte length and s (at most 255 bytes).
func appendString(b []byte, s string) []byte { return append(append(b, byte(len(s))), s...) }

// cutString reads what appendString wrote.
func cutString(p []byte, max int) (string, []byte, bool) {
	if len(p) < 1 || int(p[0]) > max || len(p) < 1+int(p[0]) {
		return "", p, false
	}
	return string(p[1 : 1+int(p[0])]), p[1+int(p[0]):], true
}

func (h *Hello) appendPayload(b []byte) []byte {
	b = appendString(b, h.Pair)
	b = appendString(b, h.Node)
	b = binary.BigEndian.AppendUint64(b, h.Epoch)
	b = append(b, h.Flags)
	b = append(b, h.Generation[:]...)
	b = append(b, byte(len(h.MACs)))
	for _, m := range h.MACs {
		b = append(b, m[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.Volumes)))
	for _, v := range h.Volumes {
		b = binary.BigEndian.AppendUint16(b, v.Shelf)
		b = append(b, v.Slot)
		b = binary.BigEndian.AppendUint64(b, v.Sectors)
		b = append(b, byte(len(v.Serial)))
		b = append(b, v.Serial...)
	}
	return b
}

func (h *Hello) parsePayload(p []byte) error {
	var ok bool
	if h.Pair, p, ok = cutString(p, MaxName); !ok {
		return fmt.Errorf("%w: hello: pair name", ErrMalformed)
	}
	if h.Node, p, ok = cutString(p, MaxName); !ok {
		return fmt.Errorf("%w: hello: node name", ErrMalformed)
	}
	if len(p) < 8+1+16+1 {
		return fmt.Errorf("%w: hello cut short", ErrMalformed)
	}
	h.Epoch = binary.BigEndian.Uint64(p)
	h.Flags = p[8]
	copy(h.Generation[:], p[9:])
	nmac := int(p[25])
	p = p[26:]
	if nmac > MaxMACs || len(p) < 6*nmac+2 {
		return fmt.Errorf("%w: hello: MAC addresses", ErrMalformed)
	}
	h.MACs = make([][6]byte, nmac)
	for i := range h.MACs {
		copy(h.MACs[i][:], p[6*i:])
	}
	p = p[6*nmac:]
	count := int(binary.BigEndian.Uint16(p))
	if count > MaxVolumes {
		return fmt.Errorf("%w: %d volumes", ErrMalformed, count)
	}
	p = p[2:]
	h.Volumes = make([]VolumeInfo, 0, count)
	for i := 0; i < count; i++ {
		if len(p) < 12 {
			return fmt.Errorf("%w: volume %d cut short", ErrMalformed, i)
		}
		v := VolumeInfo{Shelf: binary.BigEndian.Uint16(p), Slot: p[2], Sectors: binary.BigEndian.Uint64(p[3:])}
		sl := int(p[11])
		if sl > MaxSerial || len(p) < 12+sl {
			return fmt.Errorf("%w: volume %d serial", ErrMalformed, i)
		}
		v.Serial = string(p[12 : 12+sl])
		h.Volumes = append(h.Volumes, v)
		p = p[12+sl:]
	}
	if len(p) != 0 {
		return fmt.Errorf("%w: %d bytes after the volumes", ErrMalformed, len(p))
	}
	return nil
}

func (w *Write) appendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, w.Epoch)
	b = binary.BigEndian.AppendUint64(b, w.Seq)
	b = binary.BigEndian.AppendUint16(b, w.Shelf)
	b = append(b, w.Slot, w.Flags)
	b = binary.BigEndian.AppendUint64(b, w.LBA)
	b = binary.BigEndian.AppendUint64(b, w.Seen)
	if w.Flags&FlagIdentified != 0 {
		b = append(b, w.Initiator[:]...)
		b = binary.BigEndian.AppendUint32(b, w.Tag)
	}
	return append(b, w.Data...)
}

func (w *Write) parsePayload(p []byte) error {
	fixed := 8 + 8 + 2 + 1 + 1 + 8 + 8
	if len(p) >= 20 && p[19]&FlagIdentified != 0 {
		fixed += 6 + 4
	}
	if len(p) < fixed {
		return fmt.Errorf("%w: write of %d bytes", ErrMalformed, len(p))
	}
	w.Epoch = binary.BigEndian.Uint64(p)
	w.Seq = binary.BigEndian.Uint64(p[8:])
	w.Shelf = binary.BigEndian.Uint16(p[16:])
	w.Slot, w.Flags = p[18], p[19]
	w.LBA = binary.BigEndian.Uint64(p[20:])
	w.Seen = binary.BigEndian.Uint64(p[28:])
	if w.Flags&FlagIdentified != 0 {
		w.Initiator = [6]byte(p[36:42])
		w.Tag = binary.BigEndian.Uint32(p[42:])
	}
	w.Data = p[fixed:]
	return w.check()
}

func (a *Ack) appendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, a.Epoch)
	b = binary.BigEndian.AppendUint64(b, a.Seq)
	return append(b, byte(a.Status))
}

func (a *Ack) parsePayload(p []byte) error {
	if len(p) != 17 {
		return fmt.Errorf("%w: ack of %d bytes", ErrMalformed, len(p))
	}
	a.Epoch, a.Seq, a.Status = binary.BigEndian.Uint64(p), binary.BigEndian.Uint64(p[8:]), Status(p[16])
	return a.check()
}

func (p *Ping) appendPayload(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, p.Epoch)
	b = binary.BigEndian.AppendUint32(b, p.ReadLeaseMS)
	return binary.BigEndian.AppendUint64(b, p.Applied)
}

func (p *Ping) parsePayload(b []byte) error {
	if len(b) != 20 {
		return fmt.Errorf("%w: ping of %d bytes", ErrMalformed, len(b))
	}
	p.Epoch, p.ReadLeaseMS, p.Applied = binary.BigEndian.Uint64(b), binary.BigEndian.Uint32(b[8:]), binary.BigEndian.Uint64(b[12:])
	return nil
}
