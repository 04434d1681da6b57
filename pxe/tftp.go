package pxe

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path"
	"strings"
	"time"

	"github.com/pin/tftp/v3"
)

// ErrPathEscape is returned for a TFTP or HTTP file name that would leave
// the boot directory.
var ErrPathEscape = errors.New("path escapes the boot directory")

// cleanName validates a requested file name: relative, no "..", no NUL.
func cleanName(name string) (string, error) {
	if name == "" || strings.ContainsRune(name, 0) || strings.Contains(name, "\\") {
		return "", fmt.Errorf("%q: %w", name, ErrPathEscape)
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%q is absolute: %w", name, ErrPathEscape)
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return "", fmt.Errorf("%q: %w", name, ErrPathEscape)
		}
	}
	return path.Clean(name), nil
}

// TFTPServer serves the boot directory read-only over TFTP (RFC 1350 with
// the blksize and tsize options of RFC 2348 and 2349). Files are opened
// through an os.Root, so neither ".." nor a symlink can leave the directory.
type TFTPServer struct {
	Root   *os.Root
	Logger *slog.Logger
	// SinglePort serves every transfer from the listening socket (see
	// Config.TFTPSinglePort).
	SinglePort bool
}

func (t *TFTPServer) read(name string, rf io.ReaderFrom) error {
	log := t.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	raddr := ""
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		a := ot.RemoteAddr()
		raddr = a.String()
	}
	clean, err := cleanName(name)
	if err != nil {
		log.Warn("tftp: refused", "file", name, "remote", raddr, "err", err)
		return err
	}
	f, err := t.Root.Open(clean)
	if err != nil {
		log.Info("tftp: cannot serve", "file", name, "remote", raddr, "err", err)
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: file not found", clean)
		}
		return fmt.Errorf("%s: %w", clean, ErrPathEscape)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", clean)
	}
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		ot.SetSize(fi.Size())
	}
	start := time.Now()
	// pin/tftp reads a block at a time: through a buffer, a read system
	// call brings 44 blocks of 1468 bytes instead of one.
	n, err := rf.ReadFrom(bufio.NewReaderSize(f, 64<<10))
	if err != nil {
		log.Warn("tftp: transfer failed", "file", clean, "remote", raddr, "bytes", n, "err", err)
		return err
	}
	log.Debug("tftp: sent", "file", clean, "remote", raddr, "bytes", n, "seconds", time.Since(start).Seconds())
	return nil
}

// Serve serves TFTP on conn until ctx ends. Write requests are refused with
// a TFTP error.
func (t *TFTPServer) Serve(ctx context.Context, conn net.PacketConn) error {
	s := tftp.NewServer(t.read, nil)
	if t.SinglePort {
		s.EnableSinglePort()
	}
	// Largest block for a 9000-byte MTU; the library also caps it at the
	// interface MTU less 28.
	s.SetBlockSize(8972)
	s.SetTimeout(2 * time.Second)
	s.SetRetries(5)
	// Shutdown leaves the socket open (in single-port mode): close it so
	// the serving loop wakes up and sees the cancellation.
	stop := context.AfterFunc(ctx, func() {
		s.Shutdown()
		conn.Close()
	})
	defer stop()
	err := s.Serve(conn)
	if ctx.Err() != nil {
		return nil
	}
	return err
}
