// Package wire holds the zero-copy parts of the ATA over Ethernet protocol
// (AoEr11, http://www.thebrantleycoilecompany.com/AoEr11.pdf) that the
// storage node's hot path and the initiator share: fixed offsets into a raw
// Ethernet frame, the ATA command codes of Section 3.1, and the IDENTIFY
// DEVICE page.
//
// The control commands (Query Config, MAC Mask List, Reserve/Release) are
// decoded with github.com/mdlayher/aoe. ATA READ and WRITE frames, which carry
// the data, are read and written in place here because that codec copies the
// payload on every frame. FuzzParse checks that both agree.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/mdlayher/aoe"
)

// Frame layout. Offsets are from the start of the Ethernet frame.
const (
	EtherType = 0x88a2

	EthLen     = 14             // destination, source, EtherType
	HeaderLen  = EthLen + 10    // + AoE common header (Section 2)
	ATALen     = HeaderLen + 12 // + ATA argument (Section 3.1); data follows
	SectorSize = 512

	offVerFlags = EthLen + 0
	offError    = EthLen + 1
	offMajor    = EthLen + 2
	offMinor    = EthLen + 4
	offCommand  = EthLen + 5
	offTag      = EthLen + 6

	offAFlags  = HeaderLen + 0
	offErrFeat = HeaderLen + 1
	offCount   = HeaderLen + 2
	offCmdStat = HeaderLen + 3
	offLBA     = HeaderLen + 4
	offRes     = HeaderLen + 10

	// MinFrame is the shortest Ethernet frame without FCS; shorter replies
	// are padded by the kernel, but we never emit them.
	MinFrame = 60
)

// Header flags, Section 2.
const (
	FlagResponse = 0x08
	FlagError    = 0x04
	Version      = 1
)

// ATA argument flags, Section 3.1.
const (
	AFlagExtended = 0x40 // E: LBA48
	AFlagDevice   = 0x10 // D
	AFlagAsync    = 0x02 // A
	AFlagWrite    = 0x01 // W
)

// ATA commands the target implements (ATA/ATAPI-6).
const (
	CmdReadSectors     = 0x20
	CmdReadSectorsExt  = 0x24
	CmdReadDMA         = 0xC8
	CmdReadDMAExt      = 0x25
	CmdWriteSectors    = 0x30
	CmdWriteSectorsExt = 0x34
	CmdWriteDMA        = 0xCA
	CmdWriteDMAExt     = 0x35
	CmdCheckPowerMode  = 0xE5
	CmdFlushCache      = 0xE7
	CmdFlushCacheExt   = 0xEA
	CmdIdentify        = 0xEC
)

// ATA status and error register bits.
const (
	StatusERR  = 0x01
	StatusDRDY = 0x40
	ErrABRT    = 0x04
	ErrIDNF    = 0x10
)

// Broadcast addresses, Section 2.
const (
	BroadcastShelf = 0xffff
	BroadcastSlot  = 0xff
)

// ErrShort is returned for a frame too short to hold the header it claims.
var ErrShort = errors.New("aoe: frame too short")

// Frame is a view of a raw Ethernet frame carrying AoE. It never copies.
type Frame []byte

// Dst, Src and the other accessors assume the frame is at least HeaderLen
// long (ATA fields: ATALen); Check verifies that.
func (f Frame) Dst() net.HardwareAddr { return net.HardwareAddr(f[0:6]) }
func (f Frame) Src() net.HardwareAddr { return net.HardwareAddr(f[6:12]) }
func (f Frame) EtherType() uint16     { return binary.BigEndian.Uint16(f[12:14]) }
func (f Frame) Version() uint8        { return f[offVerFlags] >> 4 }
func (f Frame) Response() bool        { return f[offVerFlags]&FlagResponse != 0 }
func (f Frame) Error() aoe.Error      { return aoe.Error(f[offError]) }
func (f Frame) IsError() bool         { return f[offVerFlags]&FlagError != 0 }
func (f Frame) Shelf() uint16         { return binary.BigEndian.Uint16(f[offMajor:]) }
func (f Frame) Slot() uint8           { return f[offMinor] }
func (f Frame) Command() aoe.Command  { return aoe.Command(f[offCommand]) }
func (f Frame) Tag() uint32           { return binary.BigEndian.Uint32(f[offTag:]) }

// ATA argument accessors.
func (f Frame) AFlags() uint8     { return f[offAFlags] }
func (f Frame) ErrFeature() uint8 { return f[offErrFeat] }
func (f Frame) Count() uint8      { return f[offCount] }
func (f Frame) CmdStatus() uint8  { return f[offCmdStat] }
func (f Frame) Data() []byte      { return f[ATALen:] }

// Control is the AoE part of a control frame, for aoe.Header.UnmarshalBinary.
// Reserve/Release is cut to its declared length: the codec wants it exact
// and Ethernet pads short frames.
func (f Frame) Control() []byte {
	p := f[EthLen:]
	if f.Command() == aoe.CommandReserveRelease && len(p) >= 12 {
		if n := 12 + 6*int(p[11]); len(p) > n {
			p = p[:n]
		}
	}
	return p
}

// LBA decodes the address: 48 bits with the E flag, else 28 bits (the top
// nibble of byte 3 holds device/head flags).
func (f Frame) LBA() uint64 {
	b := f[offLBA : offLBA+6]
	if f[offAFlags]&AFlagExtended != 0 {
		return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
			uint64(b[4])<<32 | uint64(b[5])<<40
	}
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3]&0x0f)<<24
}

// Check reports whether f is an AoE frame this package can read: long enough
// for its header (and the ATA argument for ATA commands), version 1.
func (f Frame) Check() error {
	if len(f) < HeaderLen {
		return ErrShort
	}
	if f.Version() != Version {
		return aoe.ErrorUnsupportedVersion
	}
	if f.Command() == aoe.CommandIssueATACommand && len(f) < ATALen {
		return ErrShort
	}
	return nil
}

// PutHeader writes Ethernet and AoE headers into b for a frame from src to
// dst. flags are FlagResponse/FlagError.
func PutHeader(b []byte, dst, src net.HardwareAddr, flags uint8, errCode aoe.Error, shelf uint16, slot uint8, cmd aoe.Command, tag uint32) {
	copy(b[0:6], dst)
	copy(b[6:12], src)
	binary.BigEndian.PutUint16(b[12:14], EtherType)
	b[offVerFlags] = Version<<4 | flags
	b[offError] = uint8(errCode)
	binary.BigEndian.PutUint16(b[offMajor:], shelf)
	b[offMinor] = slot
	b[offCommand] = uint8(cmd)
	binary.BigEndian.PutUint32(b[offTag:], tag)
}

// PutATA writes the ATA argument. lba is encoded as 48 bit when ext is set.
func PutATA(b []byte, aflags, errFeat, count, cmdStat uint8, lba uint64) {
	b[offAFlags] = aflags
	b[offErrFeat] = errFeat
	b[offCount] = count
	b[offCmdStat] = cmdStat
	l := b[offLBA : offLBA+6]
	for i := range l {
		l[i] = byte(lba >> (8 * i))
	}
	if aflags&AFlagExtended == 0 {
		l[3] = l[3]&0x0f | 0xe0 // LBA mode, device 0
		l[4], l[5] = 0, 0
	}
	b[offRes], b[offRes+1] = 0, 0
}

// SetATAStatus overwrites the status fields of an ATA frame in place.
func SetATAStatus(b []byte, errFeat, cmdStat uint8) {
	b[offErrFeat] = errFeat
	b[offCmdStat] = cmdStat
}

// MaxSectors is the number of 512-byte sectors one frame carries at mtu
// (AoE header 10 bytes, ATA argument 12): 2 at 1500, 17 at 9000.
func MaxSectors(mtu int) int {
	n := (mtu - 22) / SectorSize
	if n < 1 {
		n = 1
	}
	if n > 255 {
		n = 255
	}
	return n
}

// Identity is what IDENTIFY DEVICE reports.
type Identity struct {
	Model    string // 40 characters
	Serial   string // 20 characters
	Firmware string // 8 characters
	Sectors  uint64 // capacity in 512-byte sectors
}

// PutIdentify fills the 512-byte IDENTIFY DEVICE page (ATA/ATAPI-6, Section
// 8.15) the way Linux's aoe driver and iPXE read it: LBA28 capacity in words
// 60-61, LBA48 in 100-103, LBA48 and FLUSH CACHE (EXT) supported and enabled
// in words 83 and 86.
func PutIdentify(p []byte, id Identity) {
	clear(p[:512])
	w := func(i int, v uint16) { binary.LittleEndian.PutUint16(p[2*i:], v) }
	str := func(i, n int, s string) { // ATA strings: space padded, bytes swapped per word
		for j := 0; j < n; j += 2 {
			c0, c1 := byte(' '), byte(' ')
			if j < len(s) {
				c0 = s[j]
			}
			if j+1 < len(s) {
				c1 = s[j+1]
			}
			p[2*i+j], p[2*i+j+1] = c1, c0
		}
	}
	cyl := id.Sectors / (16 * 63)
	if cyl > 16383 {
		cyl = 16383
	}
	w(0, 0x0040) // fixed device
	w(1, uint16(cyl))
	w(3, 16)
	w(6, 63)
	str(10, 20, id.Serial)
	str(23, 8, id.Firmware)
	str(27, 40, id.Model)
	w(47, 0x8000|1) // READ/WRITE MULTIPLE: 1 sector
	w(49, 1<<9)     // LBA supported
	w(53, 1)        // words 54-58 valid
	w(54, uint16(cyl))
	w(55, 16)
	w(56, 63)
	c := cyl * 16 * 63
	w(57, uint16(c))
	w(58, uint16(c>>16))
	lba28 := id.Sectors
	if lba28 > 0x0fffffff {
		lba28 = 0x0fffffff
	}
	w(60, uint16(lba28))
	w(61, uint16(lba28>>16))
	w(80, 1<<6|1<<5|1<<4) // ATA-4..6
	w(82, 1<<14)          // NOP
	w(83, 1<<14|1<<13|1<<12|1<<10)
	w(84, 1<<14)
	w(85, 1<<14)
	w(86, 1<<13|1<<12|1<<10)
	w(87, 1<<14)
	for i := 0; i < 4; i++ {
		w(100+i, uint16(id.Sectors>>(16*i)))
	}
}

// ParseIdentify reads back what PutIdentify wrote (and what real disks
// report): the LBA48 capacity when word 83 says LBA48, else LBA28.
func ParseIdentify(p []byte) (Identity, error) {
	if len(p) < 512 {
		return Identity{}, fmt.Errorf("aoe: identify page is %d bytes, want 512", len(p))
	}
	r := func(i int) uint16 { return binary.LittleEndian.Uint16(p[2*i:]) }
	str := func(i, n int) string {
		b := make([]byte, n)
		for j := 0; j < n; j += 2 {
			b[j], b[j+1] = p[2*i+j+1], p[2*i+j]
		}
		for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == 0) {
			b = b[:len(b)-1]
		}
		return string(b)
	}
	id := Identity{Serial: str(10, 20), Firmware: str(23, 8), Model: str(27, 40)}
	if (r(83)|r(86))&(1<<10) != 0 {
		for i := 0; i < 4; i++ {
			id.Sectors |= uint64(r(100+i)) << (16 * i)
		}
	} else {
		id.Sectors = uint64(r(60)) | uint64(r(61))<<16
	}
	return id, nil
}

// Addr formats a volume address the way Linux names it: e<shelf>.<slot>.
func Addr(shelf uint16, slot uint8) string { return fmt.Sprintf("e%d.%d", shelf, slot) }

// CanonAddr is s in the form Addr writes ("1.0" -> "e1.0"); "" and
// anything that is not an address come back unchanged.
func CanonAddr(s string) string {
	if sh, sl, err := ParseAddr(s); err == nil {
		return Addr(sh, sl)
	}
	return s
}

// ParseAddr reads a volume address, "e1.0" (or "1.0"), in the canonical
// form Addr writes. The broadcast shelf and slot are refused: no volume
// lives there.
func ParseAddr(s string) (uint16, uint8, error) {
	var sh, sl uint
	t := strings.TrimPrefix(s, "e")
	if _, err := fmt.Sscanf(t, "%d.%d", &sh, &sl); err != nil || sh >= BroadcastShelf || sl >= BroadcastSlot ||
		fmt.Sprintf("%d.%d", sh, sl) != t {
		return 0, 0, fmt.Errorf("aoe: %q is not a volume address e<shelf>.<slot> (shelf below 65535, slot below 255)", s)
	}
	return uint16(sh), uint8(sl), nil
}
