// Package rawsock moves batches of raw Ethernet frames through an AF_PACKET
// socket (packet(7)) with recvmmsg(2) and sendmmsg(2): one system call for
// up to a batch of frames instead of one per frame. Sockets can join a
// PACKET_FANOUT group so several queues, each on its own goroutine, share
// one interface's traffic.
//
// The socket itself comes from github.com/mdlayher/packet and stays on Go's
// network poller: a read with nothing to read parks the goroutine, Close
// wakes it.
package rawsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// Config tunes a socket. The zero value is a plain socket.
type Config struct {
	// FanoutGroup, when non-zero, joins the socket to that PACKET_FANOUT
	// group. All queues of one server share a group id; ids are per
	// network namespace. The group spreads frames by their source address
	// (bySource): every frame from one sender goes to the same socket, so
	// one queue handles them in the order they arrived.
	FanoutGroup uint16
	// Buffer sets SO_RCVBUF and SO_SNDBUF (forced past the sysctl limits
	// when running as root). 0 keeps the defaults.
	Buffer int
}

// bySource is the fanout group's program (PACKET_FANOUT_CBPF): it picks
// a frame's socket from the last four bytes of its source address, folded
// to one byte; the kernel takes the result modulo the group's size.
// Round-robin (PACKET_FANOUT_LB) would spread one sender's frames over
// every queue, where they run side by side: an initiator's retransmitted
// write could then land after the write that followed it, and put the
// older data back. The kernel's flow hash (PACKET_FANOUT_HASH) sees
// nothing of a non-IP frame and sends them all to one socket.
var bySource = func() *unix.SockFprog {
	// Loads at llOff+k read the link-layer header (SKF_LL_OFF = -0x200000
	// as an unsigned offset), wherever the packet's data starts.
	const llOff = 0xffe00000
	f := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: llOff + 8}, // A = source address bytes 2-5
		{Code: unix.BPF_MISC | unix.BPF_TAX},                          // X = A
		{Code: unix.BPF_ALU | unix.BPF_RSH | unix.BPF_K, K: 16},       // A >>= 16
		{Code: unix.BPF_ALU | unix.BPF_XOR | unix.BPF_X},              // A ^= X
		{Code: unix.BPF_MISC | unix.BPF_TAX},                          // X = A
		{Code: unix.BPF_ALU | unix.BPF_RSH | unix.BPF_K, K: 8},        // A >>= 8
		{Code: unix.BPF_ALU | unix.BPF_XOR | unix.BPF_X},              // A ^= X
		{Code: unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, K: 0xff},     // A &= 0xff
		{Code: unix.BPF_RET | unix.BPF_A},
	}
	return &unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]}
}()

// Conn is an AF_PACKET socket bound to one interface and one EtherType.
type Conn struct {
	pc  *packet.Conn
	rc  syscall.RawConn
	ifi *net.Interface
	// closed is set by Close: the poller reports a closed file with an
	// error of its own, which ReadBatch turns into net.ErrClosed.
	closed atomic.Bool
}

// Listen opens a raw socket on ifi for frames of the given EtherType.
func Listen(ifi *net.Interface, etherType uint16, cfg Config) (*Conn, error) {
	pc, err := packet.Listen(ifi, packet.Raw, int(etherType), nil)
	if err != nil {
		return nil, fmt.Errorf("rawsock: listen on %s: %w", ifi.Name, err)
	}
	rc, err := pc.SyscallConn()
	if err != nil {
		pc.Close()
		return nil, err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		s := int(fd)
		if cfg.Buffer > 0 {
			if unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, cfg.Buffer) != nil {
				_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUF, cfg.Buffer)
			}
			if unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, cfg.Buffer) != nil {
				_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUF, cfg.Buffer)
			}
		}
		// Frames we send do not come back to us, and skip the qdisc layer:
		// AoE has its own flow control (the initiator's window).
		_ = unix.SetsockoptInt(s, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
		_ = unix.SetsockoptInt(s, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1)
		if cfg.FanoutGroup != 0 {
			v := int(cfg.FanoutGroup) | unix.PACKET_FANOUT_CBPF<<16
			if err := unix.SetsockoptInt(s, unix.SOL_PACKET, unix.PACKET_FANOUT, v); err != nil {
				serr = fmt.Errorf("rawsock: join fanout group %d on %s: %w", cfg.FanoutGroup, ifi.Name, err)
			} else if err := unix.SetsockoptSockFprog(s, unix.SOL_PACKET, unix.PACKET_FANOUT_DATA, bySource); err != nil {
				serr = fmt.Errorf("rawsock: fanout program of group %d on %s: %w", cfg.FanoutGroup, ifi.Name, err)
			}
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		pc.Close()
		return nil, err
	}
	return &Conn{pc: pc, rc: rc, ifi: ifi}, nil
}

// Interface is the interface the socket is bound to.
func (c *Conn) Interface() *net.Interface { return c.ifi }

// MTU is the interface's MTU now, asked through the socket (SIOCGIFMTU),
// so in the network namespace the socket lives in, from any thread.
func (c *Conn) MTU() (int, error) {
	ifr, err := unix.NewIfreq(c.ifi.Name)
	if err != nil {
		return 0, err
	}
	var ioErr error
	if err := c.rc.Control(func(fd uintptr) {
		ioErr = unix.IoctlIfreq(int(fd), unix.SIOCGIFMTU, ifr)
	}); err != nil {
		return 0, err
	}
	if ioErr != nil {
		return 0, fmt.Errorf("rawsock: MTU of %s: %w", c.ifi.Name, ioErr)
	}
	return int(ifr.Uint32()), nil
}

// Close closes the socket; a blocked ReadBatch returns net.ErrClosed.
func (c *Conn) Close() error {
	c.closed.Store(true)
	return c.pc.Close()
}

// mmsghdr is struct mmsghdr from <sys/socket.h>.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// Batch is a set of frame buffers with the kernel descriptors that point at
// them. Reusing one Batch per goroutine keeps the hot path allocation free.
type Batch struct {
	Bufs [][]byte // each of the frame size given to NewBatch
	Lens []int    // lengths of received frames, or of frames to send
	hdrs []mmsghdr
	iovs []unix.Iovec // one per frame: Bufs[i]
}

// NewBatch allocates n buffers of size bytes.
func NewBatch(n, size int) *Batch {
	b := &Batch{
		Bufs: make([][]byte, n),
		Lens: make([]int, n),
		hdrs: make([]mmsghdr, n),
		iovs: make([]unix.Iovec, n),
	}
	mem := make([]byte, n*size)
	for i := range b.Bufs {
		b.Bufs[i] = mem[i*size : (i+1)*size : (i+1)*size]
		b.iovs[i].Base = &b.Bufs[i][0]
		b.hdrs[i].hdr.Iov = &b.iovs[i]
		b.hdrs[i].hdr.SetIovlen(1)
	}
	return b
}

// ReadBatch waits for at least one frame and returns how many (up to
// len(b.Bufs)) it received; b.Lens holds their lengths.
func (c *Conn) ReadBatch(b *Batch) (int, error) {
	for i := range b.hdrs {
		b.iovs[i].SetLen(len(b.Bufs[i]))
		b.hdrs[i].hdr.SetIovlen(1)
		b.hdrs[i].hdr.Flags = 0
	}
	var n int
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		// Raw: with MSG_DONTWAIT it never blocks, and a system call Go's
		// scheduler sees wakes the runtime's monitor thread when every P
		// was idle, as they are between two frames that come one at a
		// time (a thread wake-up per frame; docs/benchmarks.md).
		r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[0])),
			uintptr(len(b.hdrs)), unix.MSG_DONTWAIT, 0, 0)
		if e == unix.EAGAIN || e == unix.EINTR {
			return false
		}
		n, errno = int(r), e
		return true
	})
	if err != nil {
		return 0, c.closedErr(err)
	}
	if errno != 0 {
		return 0, fmt.Errorf("rawsock: recvmmsg: %w", errno)
	}
	for i := 0; i < n; i++ {
		b.Lens[i] = int(b.hdrs[i].len)
	}
	return n, nil
}

// WriteBatch sends frames 0..n-1 of b (lengths from b.Lens), waiting for
// socket space as needed.
func (c *Conn) WriteBatch(b *Batch, n int) error {
	for i := range n {
		b.iovs[i].SetLen(b.Lens[i])
	}
	return c.writeHdrs(b.hdrs, n)
}

func (c *Conn) writeHdrs(hdrs []mmsghdr, n int) error {
	sent := 0
	for sent < n {
		var errno syscall.Errno
		var r uintptr
		err := c.rc.Write(func(fd uintptr) bool {
			// Raw, as in ReadBatch: MSG_DONTWAIT never blocks.
			r, _, errno = unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&hdrs[sent])),
				uintptr(n-sent), unix.MSG_DONTWAIT, 0, 0)
			return errno != unix.EAGAIN && errno != unix.EINTR
		})
		if err != nil {
			return c.closedErr(err)
		}
		switch {
		case errno == unix.ENOBUFS:
			// Transient: the device queue is full. The frame is lost like
			// any other on Ethernet; AoE retransmits.
			sent++
		case errno != 0:
			return fmt.Errorf("rawsock: sendmmsg: %w", errno)
		default:
			sent += int(r)
		}
	}
	return nil
}

// WriteFrame sends one frame.
func (c *Conn) WriteFrame(f []byte) error {
	_, err := c.pc.WriteTo(f, &packet.Addr{HardwareAddr: net.HardwareAddr(f[0:6])})
	return c.closedErr(err)
}

// closedErr is net.ErrClosed for an error after Close (the poller and
// mdlayher/packet each report a closed descriptor their own way), else
// err.
func (c *Conn) closedErr(err error) error {
	if err != nil && c.closed.Load() {
		return net.ErrClosed
	}
	return err
}

// IsClosed reports whether err means the socket was closed.
func IsClosed(err error) bool { return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) }

// Sender sends scattered frames with one sendmmsg; reuse one per goroutine.
type Sender struct {
	hdrs []mmsghdr
	iovs []unix.Iovec
}

// SendFrames sends every frame in fs, batched.
func (c *Conn) SendFrames(s *Sender, fs [][]byte) error {
	if len(s.hdrs) < len(fs) {
		s.hdrs = make([]mmsghdr, len(fs))
		s.iovs = make([]unix.Iovec, len(fs))
	}
	for i, f := range fs {
		s.iovs[i].Base = &f[0]
		s.iovs[i].SetLen(len(f))
		s.hdrs[i].hdr.Iov = &s.iovs[i]
		s.hdrs[i].hdr.SetIovlen(1)
	}
	return c.writeHdrs(s.hdrs, len(fs))
}
