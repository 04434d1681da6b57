package hwnode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fabric-project/fabric/aoe/initiator"
	"github.com/fabric-project/fabric/aoe/wire"
	"github.com/fabric-project/fabric/hwnode/nbd"
)

// Disks presents AoE volumes to QEMU.
type Disks interface {
	// Attach makes a volume available (idempotent) and says where.
	Attach(ctx context.Context, vol string) (Disk, error)
	// Detach withdraws a volume.
	Detach(vol string) error
	// Attached lists the volumes presented now.
	Attached() ([]string, error)
}

// StorageWatcher is a disk path that can tell when a storage node last
// answered it (the isolation check).
type StorageWatcher interface {
	StorageSeen(ctx context.Context) (time.Time, error)
}

// kernelDisks uses the kernel aoe driver's /dev/etherd devices.
type kernelDisks struct{}

func (kernelDisks) Attach(ctx context.Context, vol string) (Disk, error) {
	shelf, slot, err := wire.ParseAddr(vol)
	if err != nil {
		return Disk{}, err
	}
	dev := fmt.Sprintf("/dev/etherd/e%d.%d", shelf, slot)
	for i := 0; i < 50 && !fileExists(dev); i++ {
		_ = os.WriteFile("/dev/etherd/discover", []byte("\n"), 0)
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return Disk{}, ctx.Err()
		}
	}
	if !fileExists(dev) {
		return Disk{}, fmt.Errorf("%s did not appear after AoE discovery: is %s exported to this node?", dev, vol)
	}
	return Disk{Device: dev}, nil
}

func (kernelDisks) Detach(string) error { return nil }

func (kernelDisks) Attached() ([]string, error) { return nil, nil }

// DiskServer serves AoE volumes, opened with the userspace initiator, as
// NBD exports. The agent runs one in-process, or talks to a separate
// `fabricd hwnode-disks` over a unix socket (Serve's control API) so that
// guests keep their disks while the agent restarts.
type DiskServer struct {
	init      *initiator.Initiator
	nbd       *nbd.Server
	host, prt string
	log       *slog.Logger

	mu   sync.Mutex
	devs map[string]*initiator.Device
}

// NewDiskServer opens the initiator on aoeIface; exports will be offered at
// nbdAddr.
func NewDiskServer(aoeIface, nbdAddr string, log *slog.Logger) (*DiskServer, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	host, port, err := net.SplitHostPort(nbdAddr)
	if err != nil {
		return nil, fmt.Errorf("NBD address %q: %w", nbdAddr, err)
	}
	in, err := initiator.New(aoeIface, initiator.Config{Window: 32, Timeout: 50 * time.Millisecond, Retries: 10})
	if err != nil {
		return nil, fmt.Errorf("AoE initiator on %s: %w", aoeIface, err)
	}
	return &DiskServer{init: in, nbd: nbd.NewServer(log), host: host, prt: port, log: log, devs: map[string]*initiator.Device{}}, nil
}

// MAC is the address the server's AoE traffic comes from.
func (d *DiskServer) MAC() string { return d.init.MAC().String() }

// Attach opens a volume and exports it over NBD (idempotent).
func (d *DiskServer) Attach(ctx context.Context, vol string) (Disk, error) {
	disk := Disk{NBDHost: d.host, NBDPort: d.prt, NBDExport: vol}
	d.mu.Lock()
	_, ok := d.devs[vol]
	d.mu.Unlock()
	if ok {
		return disk, nil
	}
	shelf, slot, err := wire.ParseAddr(vol)
	if err != nil {
		return Disk{}, err
	}
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	dev, err := d.init.Open(octx, shelf, slot, 500*time.Millisecond)
	cancel()
	if err != nil {
		return Disk{}, fmt.Errorf("AoE volume %s: %w", vol, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.devs[vol]; ok { // attached meanwhile
		_ = dev.Close()
		return disk, nil
	}
	d.devs[vol] = dev
	d.nbd.Add(&nbd.Export{Name: vol, Backend: dev})
	d.log.Info("volume exported over NBD", "volume", vol, "url", disk.URL())
	return disk, nil
}

// Detach withdraws an export and closes its device.
func (d *DiskServer) Detach(vol string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	dev, ok := d.devs[vol]
	if !ok {
		return nil
	}
	delete(d.devs, vol)
	d.nbd.Remove(vol)
	d.log.Info("volume withdrawn", "volume", vol)
	return dev.Close()
}

// Attached lists the exported volumes.
func (d *DiskServer) Attached() ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]string, 0, len(d.devs))
	for v := range d.devs {
		out = append(out, v)
	}
	slices.Sort(out)
	return out, nil
}

// Serve serves NBD on nbdLn and, if ctl is not nil, the control API on it,
// until ctx ends.
func (d *DiskServer) Serve(ctx context.Context, nbdLn, ctl net.Listener) error {
	defer d.init.Close()
	go func() {
		// Ask every second, so that "a storage node answered lately"
		// holds while no guest does I/O.
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			_ = d.init.Probe()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	errc := make(chan error, 2)
	go func() { errc <- d.nbd.Serve(ctx, nbdLn) }()
	if ctl != nil {
		srv := &http.Server{Handler: d.handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			<-ctx.Done()
			_ = srv.Close()
		}()
		go func() {
			err := srv.Serve(ctl)
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			errc <- err
		}()
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return nil
	}
}

// StorageSeen implements StorageWatcher.
func (d *DiskServer) StorageSeen(context.Context) (time.Time, error) { return d.init.LastReply(), nil }

// diskAnswer is the control API's answer.
type diskAnswer struct {
	Disk    Disk      `json:"disk,omitzero"`
	Volumes []string  `json:"volumes,omitempty"`
	MAC     string    `json:"mac,omitempty"`
	Seen    time.Time `json:"storage_seen,omitzero"` // when a storage node last answered
	Error   string    `json:"error,omitempty"`
}

func (d *DiskServer) handler() http.Handler {
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, a diskAnswer, err error) {
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			a.Error = err.Error()
			w.WriteHeader(http.StatusBadGateway)
		}
		_ = json.NewEncoder(w).Encode(a)
	}
	mux.HandleFunc("PUT /volumes/{vol}", func(w http.ResponseWriter, r *http.Request) {
		disk, err := d.Attach(r.Context(), r.PathValue("vol"))
		reply(w, diskAnswer{Disk: disk}, err)
	})
	mux.HandleFunc("DELETE /volumes/{vol}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, diskAnswer{}, d.Detach(r.PathValue("vol")))
	})
	mux.HandleFunc("GET /volumes", func(w http.ResponseWriter, r *http.Request) {
		vs, err := d.Attached()
		reply(w, diskAnswer{Volumes: vs, MAC: d.MAC(), Seen: d.init.LastReply()}, err)
	})
	return mux
}

// DiskClient drives a DiskServer over its unix control socket.
type DiskClient struct {
	path string
	hc   *http.Client
}

// NewDiskClient returns a client of the disk server at the socket path.
func NewDiskClient(path string) *DiskClient {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dd net.Dialer
		return dd.DialContext(ctx, "unix", path)
	}}
	return &DiskClient{path: path, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

func (c *DiskClient) call(ctx context.Context, method, path string) (diskAnswer, error) {
	var a diskAnswer
	req, err := http.NewRequestWithContext(ctx, method, "http://disks"+path, nil)
	if err != nil {
		return a, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return a, fmt.Errorf("disk server at %s: %w", c.path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err := json.Unmarshal(b, &a); err != nil {
		return a, fmt.Errorf("disk server at %s: HTTP %d: %s", c.path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if a.Error != "" {
		return a, errors.New(a.Error)
	}
	return a, nil
}

// Attach implements Disks.
func (c *DiskClient) Attach(ctx context.Context, vol string) (Disk, error) {
	a, err := c.call(ctx, http.MethodPut, "/volumes/"+url.PathEscape(vol))
	return a.Disk, err
}

// Detach implements Disks.
func (c *DiskClient) Detach(vol string) error {
	_, err := c.call(context.Background(), http.MethodDelete, "/volumes/"+url.PathEscape(vol))
	return err
}

// Attached implements Disks.
func (c *DiskClient) Attached() ([]string, error) {
	a, err := c.call(context.Background(), http.MethodGet, "/volumes")
	return a.Volumes, err
}

// StorageSeen implements StorageWatcher.
func (c *DiskClient) StorageSeen(ctx context.Context) (time.Time, error) {
	a, err := c.call(ctx, http.MethodGet, "/volumes")
	return a.Seen, err
}

// MAC asks the disk server for its AoE source address.
func (c *DiskClient) MAC(ctx context.Context) (string, error) {
	a, err := c.call(ctx, http.MethodGet, "/volumes")
	return a.MAC, err
}
