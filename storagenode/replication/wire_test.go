package replication

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func samples() []Message {
	data := bytes.Repeat([]byte{0xa5, 0x5a}, 1024) // 4 sectors
	return []Message{
		&Hello{Pair: "p1", Node: "sn1", Epoch: 7, Flags: HelloOwner, Generation: [16]byte{3}, MACs: [][6]byte{{2, 0, 0, 0, 0, 1}},
			Volumes: []VolumeInfo{{Shelf: 1, Slot: 0, Sectors: 1 << 21, Serial: "root-hn1"}, {Shelf: 2, Slot: 254, Sectors: 8, Serial: ""}}},
		&Hello{MACs: [][6]byte{}, Volumes: []VolumeInfo{}},
		&Write{Epoch: 7, Seq: 42, Shelf: 1, Slot: 3, Flags: FlagForward | FlagSync, LBA: 123456, Seen: 41, Data: data},
		&Write{Epoch: 7, Seq: 43, Shelf: 1, Slot: 3, Flags: FlagForward | FlagIdentified, LBA: 8, Seen: 42,
			Initiator: [6]byte{0x52, 0x54, 0, 1, 2, 3}, Tag: 0x1234abcd, Data: data},
		&Ack{Epoch: 8, Seq: 42, Status: StatusStaleEpoch},
		&Ping{Epoch: 8, ReadLeaseMS: 1000, Applied: 99},
		&Refuse{Reason: "volume e1.0: 2048 sectors here, 4096 there"},
		&InSync{Epoch: 9, Generation: [16]byte{4, 5}},
		&Leave{Epoch: 10},
		&Leave{Epoch: 10, NewEpoch: 11, LeaseMS: 1480},
	}
}

func TestRoundTrip(t *testing.T) {
	var stream []byte
	for _, m := range samples() {
		b, err := Append(nil, m)
		if err != nil {
			t.Fatalf("%T: %v", m, err)
		}
		got, n, err := Parse(b)
		if err != nil || n != len(b) {
			t.Fatalf("%T: parse: %v (%d of %d bytes)", m, err, n, len(b))
		}
		if d := cmp.Diff(m, got); d != "" {
			t.Errorf("%T round trip (-want +got):\n%s", m, d)
		}
		stream, _ = Append(stream, m)
	}
	// The same over a stream, one Read at a time.
	r := bytes.NewReader(stream)
	var buf []byte
	for i, want := range samples() {
		var got Message
		var err error
		got, buf, err = Read(r, buf)
		if err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("read %d (-want +got):\n%s", i, d)
		}
	}
	if _, _, err := Read(r, buf); !errors.Is(err, io.EOF) {
		t.Errorf("after the last message: %v; want EOF", err)
	}
}

func TestBadInput(t *testing.T) {
	good, _ := Append(nil, samples()[2])
	// Every truncation is refused as truncated, by Parse and by Read.
	for i := 0; i < len(good); i++ {
		if _, _, err := Parse(good[:i]); !errors.Is(err, ErrTruncated) {
			t.Fatalf("Parse of %d of %d bytes: %v", i, len(good), err)
		}
		if _, _, err := Read(bytes.NewReader(good[:i]), nil); i > 0 && !errors.Is(err, ErrTruncated) {
			t.Fatalf("Read of %d of %d bytes: %v", i, len(good), err)
		}
	}
	// Any flipped byte is refused.
	for i := range good {
		b := bytes.Clone(good)
		b[i] ^= 0x01
		if _, _, err := Parse(b); err == nil {
			t.Fatalf("byte %d flipped: accepted", i)
		}
	}
	for name, tc := range map[string]struct {
		m    Message
		want error
	}{
		"half a sector":   {&Write{Data: make([]byte, 256)}, ErrMalformed},
		"no data":         {&Write{}, ErrMalformed},
		"unknown flag":    {&Write{Data: make([]byte, 512), Flags: 0x80}, ErrMalformed},
		"long serial":     {&Hello{Volumes: []VolumeInfo{{Serial: "012345678901234567890"}}}, ErrMalformed},
		"unknown status":  {&Ack{Status: 99}, ErrMalformed},
		"handover back":   {&Leave{Epoch: 10, NewEpoch: 9, LeaseMS: 100}, ErrMalformed},
		"no lease":        {&Leave{Epoch: 10, NewEpoch: 11}, ErrMalformed},
		"over a megabyte": {&Write{Data: make([]byte, MaxPayload)}, ErrTooLarge},
	} {
		if _, err := Append(nil, tc.m); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v; want %v", name, err, tc.want)
		}
	}
	other := bytes.Clone(good)
	other[3] = 99 // an unknown type with a valid checksum
	fixCRC(other)
	if _, _, err := Parse(other); !errors.Is(err, ErrUnknownType) {
		t.Errorf("unknown type: %v", err)
	}
	other = bytes.Clone(good)
	other[2] = 2
	if _, _, err := Parse(other); !errors.Is(err, ErrVersion) {
		t.Errorf("version 2: %v", err)
	}
}

func fixCRC(b []byte) {
	crc := crcOf(b)
	b[8], b[9], b[10], b[11] = byte(crc>>24), byte(crc>>16), byte(crc>>8), byte(crc)
}

// FuzzParse: no input makes the decoder panic or over-read, and whatever
// it accepts encodes back to the very same bytes.
func FuzzParse(f *testing.F) {
	for _, m := range samples() {
		b, _ := Append(nil, m)
		f.Add(b)
	}
	f.Add([]byte{0xfa, 0x1b, 1, 1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, n, err := Parse(b)
		if err != nil {
			return
		}
		again, err := Append(nil, m)
		if err != nil {
			t.Fatalf("accepted %T does not encode: %v", m, err)
		}
		if !bytes.Equal(again, b[:n]) {
			t.Fatalf("%T re-encodes differently:\n%x\n%x", m, b[:n], again)
		}
	})
}

// TestWriteLayouts: a forward that does not name its initiator keeps the
// layout nodes without FlagIdentified read (36 bytes before the data), so
// a node can be paired with one of the release before.
func TestWriteLayouts(t *testing.T) {
	data := make([]byte, 512)
	for _, tc := range []struct {
		w     *Write
		fixed int
	}{
		{&Write{Flags: FlagForward, Data: data}, 36},
		{&Write{Flags: FlagForward | FlagIdentified, Initiator: [6]byte{1, 2, 3, 4, 5, 6}, Tag: 7, Data: data}, 46},
	} {
		b, err := Append(nil, tc.w)
		if err != nil {
			t.Fatal(err)
		}
		if got := len(b) - HeaderLen - len(data); got != tc.fixed {
			t.Errorf("flags %#x: %d bytes before the data, want %d", tc.w.Flags, got, tc.fixed)
		}
	}
}
