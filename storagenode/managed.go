package storagenode

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/fabric-project/fabric/aoe/wire"
	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/internal/atomicfile"
)

// Volumes the controller manages. When the controller's desired state
// says it manages this node's volumes, the node holds exactly the volumes
// it lists among those it made for the controller (managedFile names them):
// images fetched from the controller, clones made from them, blank
// volumes; each exported at the address and to the MACs listed. Volumes
// made by hand on the node are never touched.

// managedFile lists, in the pool, the volumes made for the controller.
const managedFile = "managed.json"

// fetchDir holds images being fetched, in the pool's file system.
const fetchDir = "fetch"

type managed struct {
	pool *Pool
	log  *slog.Logger
	api  interface {
		StorageImage(ctx context.Context, name string) (io.ReadCloser, int64, error)
	}

	mu      sync.Mutex
	pending map[string]controllerapi.StoragePending // by volume
	fetches map[string]*fetch                       // by volume
}

type fetch struct {
	done, total int64 // bytes; under managed.mu
	err         error
	finished    bool
}

func newManaged(pool *Pool, log *slog.Logger, api interface {
	StorageImage(ctx context.Context, name string) (io.ReadCloser, int64, error)
}) *managed {
	return &managed{pool: pool, log: log, api: api, pending: map[string]controllerapi.StoragePending{}, fetches: map[string]*fetch{}}
}

func (m *managed) load() (map[string]bool, error) {
	b, err := os.ReadFile(filepath.Join(m.pool.Dir(), managedFile))
	if errors.Is(err, os.ErrNotExist) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	if err := json.Unmarshal(b, &names); err != nil {
		return nil, fmt.Errorf("storagenode: %s: %w", managedFile, err)
	}
	out := map[string]bool{}
	for _, n := range names {
		out[n] = true
	}
	return out, nil
}

func (m *managed) save(set map[string]bool) error {
	names := make([]string, 0, len(set))
	for n := range set {
		names = append(names, n)
	}
	slices.Sort(names)
	b, _ := json.Marshal(names)
	return atomicfile.Write(filepath.Join(m.pool.Dir(), managedFile), b, 0o644)
}

// apply brings the pool to the specs: deletes what the controller no
// longer lists, makes what is missing (fetches in the background; clones
// once their source is whole), and sets every export. Steps that cannot
// be done yet are pending (Pending says why) and are tried again at the
// next call.
func (m *managed) apply(ctx context.Context, specs []controllerapi.StorageVolumeSpec) error {
	set, err := m.load()
	if err != nil {
		return err
	}
	vols, err := m.pool.List()
	if err != nil {
		return err
	}
	have := map[string]Volume{}
	for _, v := range vols {
		have[v.Name] = v
	}
	want := map[string]bool{}
	for _, s := range specs {
		want[s.Name] = true
	}
	pending := map[string]controllerapi.StoragePending{}
	var errs []error
	// Deletes first: an address a deleted volume held may be reused.
	for name := range set {
		if want[name] {
			continue
		}
		if _, ok := have[name]; ok {
			if err := m.pool.Delete(name); err != nil {
				errs = append(errs, err)
				continue
			}
			m.log.Info("volume deleted: the controller no longer wants it", "volume", name)
		}
		delete(set, name)
	}
	// Images, then everything else: clones need their source.
	ordered := slices.Clone(specs)
	slices.SortStableFunc(ordered, func(a, b controllerapi.StorageVolumeSpec) int {
		ai, bi := a.Image != "", b.Image != ""
		switch {
		case ai && !bi:
			return -1
		case bi && !ai:
			return 1
		}
		return 0
	})
	for _, s := range ordered {
		v, ok := have[s.Name]
		if ok && !set[s.Name] {
			pending[s.Name] = controllerapi.StoragePending{Name: s.Name, Why: "a volume of that name was made on this node by hand; the controller's is not made over it"}
			continue
		}
		if !ok {
			set[s.Name] = true // before making it: a crash half-way leaves it to this list
			if err := m.save(set); err != nil {
				return err
			}
			p, err := m.make(ctx, s, have)
			if err != nil {
				pending[s.Name] = controllerapi.StoragePending{Name: s.Name, Why: err.Error()}
				continue
			}
			if p != nil {
				pending[s.Name] = *p
				continue
			}
			if v, err = m.volume(s.Name); err != nil {
				errs = append(errs, err)
				continue
			}
			have[s.Name] = v
		}
		if s.Size > v.Size && s.Image == "" {
			// Grown by the controller (never shrunk: that loses data).
			if v, err = m.pool.Resize(s.Name, s.Size, false); err != nil {
				pending[s.Name] = controllerapi.StoragePending{Name: s.Name, Why: "growing it: " + err.Error()}
				continue
			}
			m.log.Info("volume grown on the controller's word", "volume", s.Name, "size", v.Size)
		}
		if err := m.export(v, s); err != nil {
			pending[s.Name] = controllerapi.StoragePending{Name: s.Name, Why: err.Error()}
		}
	}
	if err := m.save(set); err != nil {
		errs = append(errs, err)
	}
	m.mu.Lock()
	m.pending = pending
	m.mu.Unlock()
	return errors.Join(errs...)
}

func (m *managed) volume(name string) (Volume, error) {
	vols, err := m.pool.List()
	if err != nil {
		return Volume{}, err
	}
	for _, v := range vols {
		if v.Name == name {
			return v, nil
		}
	}
	return Volume{}, fmt.Errorf("storagenode: volume %q: %w", name, ErrNotFound)
}

// make makes a missing volume, or says why it is pending.
func (m *managed) make(ctx context.Context, s controllerapi.StorageVolumeSpec, have map[string]Volume) (*controllerapi.StoragePending, error) {
	o := VolumeOptions{Addr: s.Addr, MACs: s.MACs}
	switch {
	case s.Image != "":
		return m.fetch(ctx, s), nil
	case s.Clone != "":
		if _, ok := have[s.Clone]; !ok {
			return &controllerapi.StoragePending{Name: s.Name, Why: "waiting for " + s.Clone + ", which it is cloned from"}, nil
		}
		return m.clone(s, o), nil
	default:
		_, err := m.pool.Create(s.Name, s.Size, o)
		if err == nil {
			m.log.Info("volume created for the controller", "volume", s.Name, "bytes", s.Size, "addr", s.Addr)
		}
		return nil, err
	}
}

// fetch starts (or follows) the background fetch of an image volume; nil
// once the volume is in the pool.
func (m *managed) fetch(ctx context.Context, s controllerapi.StorageVolumeSpec) *controllerapi.StoragePending {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.fetches[s.Name]
	if f != nil && f.finished {
		delete(m.fetches, s.Name)
		if f.err == nil {
			return nil
		}
		return &controllerapi.StoragePending{Name: s.Name, Why: fmt.Sprintf("fetching image %s: %v (retrying)", s.Image, f.err)}
	}
	if f == nil {
		f = &fetch{total: s.Size}
		m.fetches[s.Name] = f
		go m.run(ctx, s, f)
	}
	p := &controllerapi.StoragePending{Name: s.Name, Why: "fetching image " + s.Image + " from the controller"}
	if f.total > 0 {
		p.Percent = 100 * float64(f.done) / float64(f.total)
	}
	return p
}

// clone starts (or follows) the background copy of a clone: a copy of a
// big image takes seconds, and the node keeps reporting meanwhile (the
// controller would find it silent). Nil never: the volume in the pool is
// how the next apply sees it done.
func (m *managed) clone(s controllerapi.StorageVolumeSpec, o VolumeOptions) *controllerapi.StoragePending {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.fetches[s.Name]
	if f != nil && f.finished {
		delete(m.fetches, s.Name)
		return &controllerapi.StoragePending{Name: s.Name, Why: fmt.Sprintf("cloning %s: %v (retrying)", s.Clone, f.err)}
	}
	if f == nil {
		f = &fetch{}
		m.fetches[s.Name] = f
		go func() {
			t0 := time.Now()
			_, how, err := m.pool.Clone(s.Clone, s.Name, o)
			m.mu.Lock()
			defer m.mu.Unlock()
			if err != nil {
				m.log.Warn("cloning a volume for the controller failed; retried at the next report", "volume", s.Name, "from", s.Clone, "err", err)
				f.err, f.finished = err, true
				return
			}
			m.log.Info("volume cloned for the controller", "volume", s.Name, "from", s.Clone, "how", how, "addr", s.Addr, "seconds", time.Since(t0).Seconds())
			delete(m.fetches, s.Name)
		}()
	}
	return &controllerapi.StoragePending{Name: s.Name, Why: "cloning " + s.Clone}
}

func (m *managed) run(ctx context.Context, s controllerapi.StorageVolumeSpec, f *fetch) {
	t0 := time.Now()
	err := m.download(ctx, s, f)
	if err != nil {
		m.log.Warn("fetching an image from the controller failed; retried at the next report", "volume", s.Name, "image", s.Image, "err", err)
	} else {
		m.log.Info("volume imported", "volume", s.Name, "image", s.Image, "bytes", s.Size, "seconds", time.Since(t0).Seconds())
	}
	m.mu.Lock()
	f.err, f.finished = err, true
	m.mu.Unlock()
}

func (m *managed) download(ctx context.Context, s controllerapi.StorageVolumeSpec, f *fetch) error {
	dir := filepath.Join(m.pool.Dir(), fetchDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	body, size, err := m.api.StorageImage(ctx, s.Image)
	if err != nil {
		return err
	}
	defer body.Close()
	if size != s.Size {
		return fmt.Errorf("the controller sends %d bytes, the volume is %d", size, s.Size)
	}
	tmp := filepath.Join(dir, s.Name+".part")
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(tmp) // gone once imported; a leftover on failure
	n, err := io.Copy(out, &progress{r: body, m: m, f: f})
	if err == nil && n != size {
		err = fmt.Errorf("got %d of %d bytes", n, size)
	}
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	_, err = m.pool.Import(s.Name, tmp, VolumeOptions{Addr: s.Addr, MACs: s.MACs})
	return err
}

type progress struct {
	r io.Reader
	m *managed
	f *fetch
}

func (p *progress) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.m.mu.Lock()
	p.f.done += int64(n)
	p.m.mu.Unlock()
	return n, err
}

// export sets a volume's address, allow list and I/O caps to the spec's.
func (m *managed) export(v Volume, s controllerapi.StorageVolumeSpec) error {
	var cur Limit
	if v.Limit != nil {
		cur = *v.Limit
	}
	if want := (Limit{IOPS: s.IOPS, BytesPerSecond: s.BPS}); cur != want {
		if _, err := m.pool.SetLimit(v.Name, want); err != nil {
			return err
		}
	}
	macs := slices.Clone(s.MACs)
	slices.Sort(macs)
	have := slices.Clone(v.MACs)
	slices.Sort(have)
	if v.Addr() == wire.CanonAddr(s.Addr) && slices.Equal(have, macs) {
		return nil
	}
	if macs == nil {
		macs = []string{}
	}
	_, err := m.pool.SetExport(v.Name, s.Addr, macs, s.Addr == "")
	return err
}

// Pending lists the volumes not there yet, and why.
func (m *managed) Pending() []controllerapi.StoragePending {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]controllerapi.StoragePending, 0, len(m.pending))
	for _, p := range m.pending {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b controllerapi.StoragePending) int { return cmp.Compare(a.Name, b.Name) })
	return out
}
