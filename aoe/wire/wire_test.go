package wire

import (
	"bytes"
	"net"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/aoe"
)

var (
	macA = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}
	macB = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 2}
)

func TestATARoundTripWithCodec(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags uint8
		lba   uint64
		want  [6]uint8
	}{
		{"lba48", AFlagExtended | AFlagWrite, 0x0000_1234_5678_9abc, [6]uint8{0xbc, 0x9a, 0x78, 0x56, 0x34, 0x12}},
		{"lba28", 0, 0x0abc_def1, [6]uint8{0xf1, 0xde, 0xbc, 0xea, 0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := make([]byte, ATALen+1024)
			PutHeader(f, macA, macB, 0, 0, 7, 3, aoe.CommandIssueATACommand, 0xdeadbeef)
			PutATA(f, tc.flags, 0, 2, CmdWriteSectorsExt, tc.lba)
			copy(f[ATALen:], bytes.Repeat([]byte{0xa5}, 1024))
			var h aoe.Header
			if err := h.UnmarshalBinary(f[EthLen:]); err != nil {
				t.Fatal(err)
			}
			a := h.Arg.(*aoe.ATAArg)
			if h.Major != 7 || h.Minor != 3 || h.Tag != [4]byte{0xde, 0xad, 0xbe, 0xef} || a.SectorCount != 2 ||
				a.CmdStatus != CmdWriteSectorsExt || a.LBA != tc.want || a.FlagLBA48Extended != (tc.flags&AFlagExtended != 0) {
				t.Errorf("codec read %+v %+v", h, a)
			}
			fr := Frame(f)
			want := tc.lba
			if tc.flags&AFlagExtended == 0 {
				want &= 0x0fff_ffff
			}
			if fr.LBA() != want {
				t.Errorf("LBA() = %#x, want %#x", fr.LBA(), tc.lba)
			}
		})
	}
}

func TestMaxSectors(t *testing.T) {
	for mtu, want := range map[int]int{1500: 2, 9000: 17, 576: 1, 1 << 20: 255} {
		if got := MaxSectors(mtu); got != want {
			t.Errorf("MaxSectors(%d) = %d, want %d", mtu, got, want)
		}
	}
}

func TestIdentifyRoundTrip(t *testing.T) {
	for _, id := range []Identity{
		{Model: "Fabric AoE volume", Serial: "e1.0", Firmware: "fab0001", Sectors: 131072},
		{Model: strings.Repeat("m", 40), Serial: strings.Repeat("s", 20), Firmware: "12345678", Sectors: 1 << 40},
	} {
		p := make([]byte, 512)
		PutIdentify(p, id)
		got, err := ParseIdentify(p)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(id, got); diff != "" {
			t.Errorf("identify round trip (-want +got):\n%s", diff)
		}
		// LBA28 words saturate; Linux reads LBA48 because word 83 says so.
		if w := uint32(p[120]) | uint32(p[121])<<8 | uint32(p[122])<<16 | uint32(p[123])<<24; uint64(w) != min(id.Sectors, 0x0fffffff) {
			t.Errorf("LBA28 capacity %d", w)
		}
	}
	if _, err := ParseIdentify(make([]byte, 100)); err == nil {
		t.Error("short identify page accepted")
	}
}

// FuzzFrame checks our in-place ATA decoding against mdlayher/aoe on any
// input: where the codec accepts an ATA frame, every field agrees.
func FuzzFrame(f *testing.F) {
	seed := make([]byte, ATALen+512)
	PutHeader(seed, macA, macB, 0, 0, 1, 0, aoe.CommandIssueATACommand, 1)
	PutATA(seed, AFlagExtended, 0, 1, CmdReadSectorsExt, 99)
	f.Add(seed[EthLen:])
	f.Add([]byte{0x10, 0, 0, 1, 0, 0, 0, 0, 0, 1})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, payload []byte) {
		fr := Frame(append(make([]byte, EthLen), payload...))
		fr[12], fr[13] = 0x88, 0xa2
		err := fr.Check()
		var h aoe.Header
		cerr := h.UnmarshalBinary(payload)
		if cerr == nil && err != nil {
			t.Fatalf("codec accepts, Check says %v", err)
		}
		if cerr != nil || h.Command != aoe.CommandIssueATACommand {
			return
		}
		a := h.Arg.(*aoe.ATAArg)
		if fr.Shelf() != h.Major || fr.Slot() != h.Minor || fr.Tag() != uint32(h.Tag[0])<<24|uint32(h.Tag[1])<<16|uint32(h.Tag[2])<<8|uint32(h.Tag[3]) ||
			fr.Count() != a.SectorCount || fr.CmdStatus() != uint8(a.CmdStatus) || fr.Response() != h.FlagResponse ||
			(fr.AFlags()&AFlagWrite != 0) != a.FlagWrite || (fr.AFlags()&AFlagExtended != 0) != a.FlagLBA48Extended ||
			!bytes.Equal(fr.Data(), a.Data) {
			t.Fatalf("disagree with codec: %+v %+v", h, a)
		}
		var lba uint64
		for i := 5; i >= 0; i-- {
			lba = lba<<8 | uint64(a.LBA[i])
		}
		if !a.FlagLBA48Extended {
			lba &= 0x0fff_ffff
		}
		if fr.LBA() != lba {
			t.Fatalf("LBA %#x, codec %#x", fr.LBA(), lba)
		}
	})
}

// FuzzParseIdentify: any page parses without panic, and what PutIdentify
// writes from the parsed identity parses back the same.
func FuzzParseIdentify(f *testing.F) {
	p := make([]byte, 512)
	PutIdentify(p, Identity{Model: "m", Serial: "s", Firmware: "f", Sectors: 12345})
	f.Add(p)
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := ParseIdentify(b)
		if err != nil {
			return
		}
		q := make([]byte, 512)
		PutIdentify(q, id)
		id2, err := ParseIdentify(q)
		if err != nil {
			t.Fatal(err)
		}
		id.Model, id.Serial, id.Firmware = trim(id.Model), trim(id.Serial), trim(id.Firmware)
		if diff := cmp.Diff(id, id2); diff != "" {
			t.Fatalf("(-first +second):\n%s", diff)
		}
	})
}

func trim(s string) string { return strings.TrimRight(s, " \x00") }

func TestParseAddr(t *testing.T) {
	for in, want := range map[string]string{"e1.0": "e1.0", "1.0": "e1.0", "e65534.254": "e65534.254"} {
		sh, sl, err := ParseAddr(in)
		if err != nil || Addr(sh, sl) != want {
			t.Errorf("ParseAddr(%q) = %d, %d, %v; want %s", in, sh, sl, err, want)
		}
	}
	for _, in := range []string{"", "e1", "e1.", "e-1.0", "e65535.0", "e1.255", "e01.0", "e1.0x", "x1.0", "e1.0.0"} {
		if _, _, err := ParseAddr(in); err == nil {
			t.Errorf("ParseAddr(%q) accepted", in)
		}
	}
}

// FuzzParseAddr: whatever parses formats back to the same address.
func FuzzParseAddr(f *testing.F) {
	f.Add("e1.0")
	f.Add("65534.254")
	f.Fuzz(func(t *testing.T, s string) {
		sh, sl, err := ParseAddr(s)
		if err != nil {
			return
		}
		if a := Addr(sh, sl); a != s && a != "e"+s {
			t.Fatalf("ParseAddr(%q) -> %s", s, a)
		}
	})
}

func TestCanonAddr(t *testing.T) {
	for in, want := range map[string]string{"1.0": "e1.0", "e7.12": "e7.12", "": "", "e65535.0": "e65535.0", "bogus": "bogus"} {
		if got := CanonAddr(in); got != want {
			t.Errorf("CanonAddr(%q) = %q, want %q", in, got, want)
		}
	}
}
