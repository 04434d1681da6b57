// Package nbd is a Network Block Device server (fixed newstyle handshake,
// simple replies) that presents block devices, such as AoE volumes opened
// by the agent's own initiator, to QEMU. The hardware node agent serves it
// on its loopback so that every hardware node offers the same URL for a
// volume and libvirt treats the disk as shared storage during migration.
//
// Protocol: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md
package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
)

// Backend is a block device. Offsets and lengths handed to it are multiples
// of BlockSize.
type Backend interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Flush() error
	Size() int64
}

// BlockSize is the smallest I/O the server passes to a backend; it is
// advertised to clients as the minimum block size.
const BlockSize = 512

// MaxRequest is the largest read or write accepted (QEMU sends at most 32 MiB).
const MaxRequest = 32 << 20

// Wire constants.
const (
	magicNBD        = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt        = 0x49484156454f5054 // "IHAVEOPT"
	magicOptReply   = 0x3e889045565a9
	magicRequest    = 0x25609513
	magicReply      = 0x67446698
	flagFixed       = 1 << 0
	flagNoZeroes    = 1 << 1
	optExportName   = 1
	optAbort        = 2
	optList         = 3
	optInfo         = 6
	optGo           = 7
	repAck          = 1
	repServer       = 2
	repInfo         = 3
	repErrUnsup     = 1<<31 + 1
	repErrInvalid   = 1<<31 + 3
	repErrUnknown   = 1<<31 + 6
	infoExport      = 0
	infoBlockSize   = 3
	tflagHasFlags   = 1 << 0
	tflagReadOnly   = 1 << 1
	tflagFlush      = 1 << 2
	tflagFUA        = 1 << 3
	tflagMultiConn  = 1 << 8
	cmdRead         = 0
	cmdWrite        = 1
	cmdDisc         = 2
	cmdFlush        = 3
	cmdFlagFUA      = 1 << 0
	errPerm         = 1
	errIO           = 5
	errInval        = 22
	errNoSpc        = 28
	errNotSup       = 95
	maxOptionLength = 4096
)

// Export is a named device.
type Export struct {
	Name     string
	Backend  Backend
	ReadOnly bool
}

// Server serves exports, which can be added and removed while it runs.
type Server struct {
	Log *slog.Logger

	mu      sync.Mutex
	exports map[string]*Export
	conns   map[net.Conn]string // open connections and their export
}

// NewServer returns a server with no exports.
func NewServer(log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{Log: log, exports: map[string]*Export{}, conns: map[net.Conn]string{}}
}

// Add adds or replaces an export.
func (s *Server) Add(e *Export) {
	s.mu.Lock()
	s.exports[e.Name] = e
	s.mu.Unlock()
}

// Remove removes an export and closes its connections.
func (s *Server) Remove(name string) {
	s.mu.Lock()
	delete(s.exports, name)
	for c, n := range s.conns {
		if n == name {
			c.Close()
		}
	}
	s.mu.Unlock()
}

// Clients returns the number of open connections to an export.
func (s *Server) Clients(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, e := range s.conns {
		if e == name {
			n++
		}
	}
	return n
}

func (s *Server) lookup(name string) *Export {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exports[name]
}

// Serve accepts connections on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	go func() {
		<-ctx.Done()
		ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			if err := s.ServeConn(c); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				s.Log.Warn("nbd client", "remote", c.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

// ProtocolError is a client that broke the protocol; the connection is
// closed.
type ProtocolError struct{ msg string }

func (e *ProtocolError) Error() string { return "nbd: " + e.msg }

func protoErr(format string, a ...any) error { return &ProtocolError{fmt.Sprintf(format, a...)} }

// ServeConn runs the handshake and then the transmission phase on c, and
// closes c.
func (s *Server) ServeConn(c net.Conn) error {
	defer c.Close()
	s.mu.Lock()
	s.conns[c] = ""
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	r := bufio.NewReaderSize(c, 128<<10)
	e, err := s.handshake(r, c)
	if err != nil || e == nil {
		return err
	}
	s.mu.Lock()
	if s.exports[e.Name] != e { // removed during the handshake
		s.mu.Unlock()
		return nil
	}
	s.conns[c] = e.Name
	s.mu.Unlock()
	return transmit(r, c, e)
}

// handshake negotiates an export; a nil export and nil error mean the
// client ended the session.
func (s *Server) handshake(r io.Reader, w io.Writer) (*Export, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicNBD)
	binary.BigEndian.PutUint64(hello[8:], magicOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixed|flagNoZeroes)
	if _, err := w.Write(hello[:]); err != nil {
		return nil, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(r, cf[:]); err != nil {
		return nil, err
	}
	clientFlags := binary.BigEndian.Uint32(cf[:])
	if clientFlags&flagFixed == 0 {
		return nil, protoErr("client does not speak the fixed newstyle handshake")
	}
	if clientFlags&^uint32(flagFixed|flagNoZeroes) != 0 {
		return nil, protoErr("unknown client flags %#x", clientFlags)
	}
	noZeroes := clientFlags&flagNoZeroes != 0
	for {
		opt, data, err := readOption(r)
		if err != nil {
			return nil, err
		}
		switch opt {
		case optExportName:
			e := s.lookup(string(data))
			if e == nil {
				return nil, protoErr("client asked for unknown export %q", data)
			}
			b := make([]byte, 10, 10+124)
			binary.BigEndian.PutUint64(b, uint64(e.Backend.Size()))
			binary.BigEndian.PutUint16(b[8:], transmissionFlags(e))
			if !noZeroes {
				b = b[:10+124]
			}
			_, err := w.Write(b)
			return e, err
		case optAbort:
			_ = optReply(w, opt, repAck, nil)
			return nil, nil
		case optList:
			if len(data) != 0 {
				err = optReply(w, opt, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
				break
			}
			s.mu.Lock()
			var names []string
			for n := range s.exports {
				names = append(names, n)
			}
			s.mu.Unlock()
			for _, n := range names {
				b := binary.BigEndian.AppendUint32(nil, uint32(len(n)))
				if err = optReply(w, opt, repServer, append(b, n...)); err != nil {
					return nil, err
				}
			}
			err = optReply(w, opt, repAck, nil)
		case optInfo, optGo:
			name, _, perr := ParseInfoRequest(data)
			if perr != nil {
				err = optReply(w, opt, repErrInvalid, []byte(perr.Error()))
				break
			}
			e := s.lookup(name)
			if e == nil {
				err = optReply(w, opt, repErrUnknown, []byte("no export named "+name))
				break
			}
			info := binary.BigEndian.AppendUint16(nil, infoExport)
			info = binary.BigEndian.AppendUint64(info, uint64(e.Backend.Size()))
			info = binary.BigEndian.AppendUint16(info, transmissionFlags(e))
			if err = optReply(w, opt, repInfo, info); err != nil {
				return nil, err
			}
			bs := binary.BigEndian.AppendUint16(nil, infoBlockSize)
			bs = binary.BigEndian.AppendUint32(bs, BlockSize)
			bs = binary.BigEndian.AppendUint32(bs, 4096)
			bs = binary.BigEndian.AppendUint32(bs, MaxRequest)
			if err = optReply(w, opt, repInfo, bs); err != nil {
				return nil, err
			}
			if err = optReply(w, opt, repAck, nil); err != nil {
				return nil, err
			}
			if opt == optGo {
				return e, nil
			}
		default:
			// Structured replies, meta contexts, TLS: not offered. QEMU
			// falls back to simple replies.
			err = optReply(w, opt, repErrUnsup, nil)
		}
		if err != nil {
			return nil, err
		}
	}
}

func transmissionFlags(e *Export) uint16 {
	f := uint16(tflagHasFlags | tflagFlush | tflagFUA | tflagMultiConn)
	if e.ReadOnly {
		f |= tflagReadOnly
	}
	return f
}

// readOption reads one option request of the handshake.
func readOption(r io.Reader) (opt uint32, data []byte, err error) {
	var h [16]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	if m := binary.BigEndian.Uint64(h[:]); m != magicOpt {
		return 0, nil, protoErr("bad option magic %#x", m)
	}
	opt = binary.BigEndian.Uint32(h[8:])
	n := binary.BigEndian.Uint32(h[12:])
	if n > maxOptionLength {
		return 0, nil, protoErr("option %d carries %d bytes (limit %d)", opt, n, maxOptionLength)
	}
	data = make([]byte, n)
	_, err = io.ReadFull(r, data)
	return opt, data, err
}

// ParseInfoRequest decodes the data of NBD_OPT_INFO and NBD_OPT_GO: the
// export name and the information types asked for.
func ParseInfoRequest(data []byte) (name string, infos []uint16, err error) {
	if len(data) < 4 {
		return "", nil, errors.New("NBD_OPT_GO data shorter than its name length")
	}
	n := binary.BigEndian.Uint32(data)
	if uint64(n)+6 > uint64(len(data)) {
		return "", nil, fmt.Errorf("NBD_OPT_GO name length %d exceeds the option", n)
	}
	name = string(data[4 : 4+n])
	rest := data[4+n:]
	k := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*k {
		return "", nil, fmt.Errorf("NBD_OPT_GO announces %d information requests but carries %d bytes", k, len(rest))
	}
	for i := 0; i < k; i++ {
		infos = append(infos, binary.BigEndian.Uint16(rest[2*i:]))
	}
	return name, infos, nil
}

func optReply(w io.Writer, opt, typ uint32, data []byte) error {
	b := make([]byte, 20, 20+len(data))
	binary.BigEndian.PutUint64(b, magicOptReply)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], typ)
	binary.BigEndian.PutUint32(b[16:], uint32(len(data)))
	_, err := w.Write(append(b, data...))
	return err
}

// Request is one transmission-phase request header.
type Request struct {
	Flags  uint16
	Type   uint16
	Handle uint64
	Offset uint64
	Length uint32
}

// RequestSize is the size of a request header on the wire.
const RequestSize = 28

// ParseRequest decodes a request header.
func ParseRequest(b []byte) (Request, error) {
	if len(b) < RequestSize {
		return Request{}, protoErr("request header of %d bytes", len(b))
	}
	if m := binary.BigEndian.Uint32(b); m != magicRequest {
		return Request{}, protoErr("bad request magic %#x", m)
	}
	return Request{
		Flags:  binary.BigEndian.Uint16(b[4:]),
		Type:   binary.BigEndian.Uint16(b[6:]),
		Handle: binary.BigEndian.Uint64(b[8:]),
		Offset: binary.BigEndian.Uint64(b[16:]),
		Length: binary.BigEndian.Uint32(b[24:]),
	}, nil
}

// check validates a request against the export; it returns an NBD error
// number, 0 when the request can run.
func check(q Request, e *Export) uint32 {
	switch q.Type {
	case cmdRead, cmdWrite:
		if q.Length > MaxRequest {
			return errInval
		}
		if q.Offset%BlockSize != 0 || q.Length%BlockSize != 0 {
			return errInval
		}
		if q.Offset+uint64(q.Length) > uint64(e.Backend.Size()) || q.Offset+uint64(q.Length) < q.Offset {
			if q.Type == cmdWrite {
				return errNoSpc
			}
			return errInval
		}
		if q.Type == cmdWrite && e.ReadOnly {
			return errPerm
		}
	case cmdFlush, cmdDisc:
	default:
		return errNotSup
	}
	return 0
}

// transmit serves requests until the client disconnects. Requests run
// concurrently (QEMU keeps several in flight); replies are written whole
// under a lock.
func transmit(r *bufio.Reader, c net.Conn, e *Export) error {
	var (
		wmu  sync.Mutex
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 16)
		hdr  [RequestSize]byte
		werr error
	)
	defer wg.Wait()
	reply := func(handle uint64, errno uint32, data []byte) {
		var h [16]byte
		binary.BigEndian.PutUint32(h[0:], magicReply)
		binary.BigEndian.PutUint32(h[4:], errno)
		binary.BigEndian.PutUint64(h[8:], handle)
		wmu.Lock()
		defer wmu.Unlock()
		if werr != nil {
			return
		}
		if _, werr = c.Write(h[:]); werr == nil && errno == 0 && len(data) > 0 {
			_, werr = c.Write(data)
		}
		if werr != nil {
			c.Close()
		}
	}
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return err
		}
		q, err := ParseRequest(hdr[:])
		if err != nil {
			return err
		}
		errno := check(q, e)
		var payload []byte
		if q.Type == cmdWrite {
			if q.Length > MaxRequest {
				return protoErr("write of %d bytes (limit %d)", q.Length, MaxRequest)
			}
			payload = make([]byte, q.Length)
			if _, err := io.ReadFull(r, payload); err != nil {
				return err
			}
		}
		if q.Type == cmdDisc {
			wg.Wait()
			if e.ReadOnly {
				return nil
			}
			return e.Backend.Flush()
		}
		if errno != 0 {
			reply(q.Handle, errno, nil)
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			reply(do(q, e, payload))
		}()
	}
}

// do runs one checked request and returns the reply's error number and
// data.
func do(q Request, e *Export, payload []byte) (uint64, uint32, []byte) {
	switch q.Type {
	case cmdRead:
		buf := make([]byte, q.Length)
		if _, err := e.Backend.ReadAt(buf, int64(q.Offset)); err != nil {
			return q.Handle, errIO, nil
		}
		return q.Handle, 0, buf
	case cmdWrite:
		if _, err := e.Backend.WriteAt(payload, int64(q.Offset)); err != nil {
			return q.Handle, errIO, nil
		}
		if q.Flags&cmdFlagFUA != 0 {
			if err := e.Backend.Flush(); err != nil {
				return q.Handle, errIO, nil
			}
		}
	case cmdFlush:
		if err := e.Backend.Flush(); err != nil {
			return q.Handle, errIO, nil
		}
	}
	return q.Handle, 0, nil
}
