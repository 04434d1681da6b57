package storagenode

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fabric-project/fabric/aoe/wire"
	"github.com/fabric-project/fabric/internal/atomicfile"
	"golang.org/x/sys/unix"
)

// Volume is a volume in the pool, as stored in DIR/state.json.
type Volume struct {
	Name     string    `json:"name"`
	File     string    `json:"file"` // relative to the data directory
	Size     int64     `json:"size"`
	Shelf    *uint16   `json:"shelf,omitempty"` // exported when set
	Slot     *uint8    `json:"slot,omitempty"`
	ReadOnly bool      `json:"read_only,omitempty"`
	Sync     bool      `json:"sync,omitempty"` // writes acknowledged once stable (O_DSYNC)
	MACs     []string  `json:"macs,omitempty"`
	Origin   string    `json:"origin,omitempty"`   // cloned or snapshotted from
	Snapshot bool      `json:"snapshot,omitempty"` // read-only point-in-time copy
	Limit    *Limit    `json:"limit,omitempty"`    // I/O limit at the target
	Created  time.Time `json:"created"`
}

// Addr is the volume's export address, or "" when not exported.
func (v Volume) Addr() string {
	if v.Shelf == nil || v.Slot == nil {
		return ""
	}
	return wire.Addr(*v.Shelf, *v.Slot)
}

type poolState struct {
	Volumes []Volume          `json:"volumes"`
	Config  map[string]string `json:"config,omitempty"` // Query Config strings by e<shelf>.<slot>
}

// Pool is the set of volume files in a data directory. Every change takes
// an exclusive flock on DIR/.lock, rereads the state and writes it back
// crash-safely (temporary file, fsync, rename), so the daemon and the
// volume commands can work on one directory at once.
type Pool struct {
	dir string
}

// Errors callers can test with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
	ErrInvalid  = errors.New("invalid")
)

// OpenPool opens (creating if needed) the pool in dir.
func OpenPool(dir string) (*Pool, error) {
	if err := os.MkdirAll(filepath.Join(dir, "volumes"), 0o755); err != nil {
		return nil, fmt.Errorf("storagenode: data dir: %w", err)
	}
	return &Pool{dir: dir}, nil
}

// Dir is the data directory.
func (p *Pool) Dir() string { return p.dir }

// Path is the absolute path of a volume's file.
func (p *Pool) Path(v Volume) string { return filepath.Join(p.dir, v.File) }

func (p *Pool) statePath() string { return filepath.Join(p.dir, "state.json") }

func (p *Pool) load() (*poolState, error) {
	b, err := os.ReadFile(p.statePath())
	if errors.Is(err, os.ErrNotExist) {
		return &poolState{Config: map[string]string{}}, nil
	}
	if err != nil {
		return nil, err
	}
	var s poolState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("storagenode: %s: %w", p.statePath(), err)
	}
	if s.Config == nil {
		s.Config = map[string]string{}
	}
	return &s, nil
}

// update runs fn on the state under the lock and saves it if fn succeeds.
func (p *Pool) update(fn func(*poolState) error) error {
	lf, err := os.OpenFile(filepath.Join(p.dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		return err
	}
	s, err := p.load()
	if err != nil {
		return err
	}
	if err := fn(s); err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(p.statePath(), append(b, '\n'), 0o644)
}

// List returns the volumes sorted by name.
func (p *Pool) List() ([]Volume, error) {
	s, err := p.load()
	if err != nil {
		return nil, err
	}
	slices.SortFunc(s.Volumes, func(a, b Volume) int { return strings.Compare(a.Name, b.Name) })
	return s.Volumes, nil
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,62})$`)

// ValidVolumeName reports whether name is a volume name a pool takes:
// lower-case letters, digits, '.', '_' and '-', at most 63.
func ValidVolumeName(name string) bool { return nameRE.MatchString(name) }

// VolumeOptions are set at creation.
type VolumeOptions struct {
	Addr     string // "e1.0" or "1.0"; "" = not exported
	ReadOnly bool
	Sync     bool
	MACs     []string
}

func findVol(s *poolState, name string) int {
	return slices.IndexFunc(s.Volumes, func(v Volume) bool { return v.Name == name })
}

// applyOptions validates and sets address, read-only and MACs on v.
func (p *Pool) applyOptions(s *poolState, v *Volume, o VolumeOptions) error {
	if o.Addr != "" {
		shelf, slot, err := wire.ParseAddr(o.Addr)
		if err != nil {
			return fmt.Errorf("storagenode: %w: %w", err, ErrInvalid)
		}
		for _, w := range s.Volumes {
			if w.Name != v.Name && w.Shelf != nil && *w.Shelf == shelf && *w.Slot == slot {
				return fmt.Errorf("storagenode: e%d.%d is already the address of volume %q: %w", shelf, slot, w.Name, ErrConflict)
			}
		}
		if err := p.checkDaemonExports(wire.Addr(shelf, slot)); err != nil {
			return err
		}
		v.Shelf, v.Slot = &shelf, &slot
	}
	v.ReadOnly = v.ReadOnly || o.ReadOnly
	v.Sync = v.Sync || o.Sync
	for _, m := range o.MACs {
		hw, err := net.ParseMAC(m)
		if err != nil || len(hw) != 6 {
			return fmt.Errorf("storagenode: MAC %q: %w", m, ErrInvalid)
		}
		v.MACs = append(v.MACs, hw.String())
	}
	return nil
}

// Create makes a sparse volume of size bytes (rounded up to a sector).
func (p *Pool) Create(name string, size int64, o VolumeOptions) (Volume, error) {
	if !nameRE.MatchString(name) {
		return Volume{}, fmt.Errorf("storagenode: volume name %q: use lower-case letters, digits, '.', '_' and '-': %w", name, ErrInvalid)
	}
	if size <= 0 {
		return Volume{}, fmt.Errorf("storagenode: volume size %d: %w", size, ErrInvalid)
	}
	size = (size + wire.SectorSize - 1) / wire.SectorSize * wire.SectorSize
	var out Volume
	err := p.update(func(s *poolState) error {
		if findVol(s, name) >= 0 {
			return fmt.Errorf("storagenode: volume %q already exists: %w", name, ErrConflict)
		}
		v := Volume{Name: name, File: filepath.Join("volumes", name+".img"), Size: size, Created: time.Now().UTC()}
		if err := p.applyOptions(s, &v, o); err != nil {
			return err
		}
		// A file without a state entry is left over from a crash between
		// these two steps: overwrite it.
		f, err := os.OpenFile(p.Path(v), os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o600)
		if err != nil {
			return err
		}
		if err := f.Truncate(size); err != nil {
			f.Close()
			return err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
		f.Close()
		s.Volumes = append(s.Volumes, v)
		out = v
		return nil
	})
	return out, err
}

// Import makes the complete file at path (in the data directory's file
// system) volume name, moving it into the pool: how a volume fetched from
// elsewhere arrives whole or not at all. Its size must be whole sectors.
func (p *Pool) Import(name, path string, o VolumeOptions) (Volume, error) {
	if !nameRE.MatchString(name) {
		return Volume{}, fmt.Errorf("storagenode: volume name %q: %w", name, ErrInvalid)
	}
	st, err := os.Stat(path)
	if err != nil {
		return Volume{}, err
	}
	if st.Size() <= 0 || st.Size()%wire.SectorSize != 0 {
		return Volume{}, fmt.Errorf("storagenode: %s: %d bytes, not whole sectors: %w", path, st.Size(), ErrInvalid)
	}
	var out Volume
	err = p.update(func(s *poolState) error {
		if findVol(s, name) >= 0 {
			return fmt.Errorf("storagenode: volume %q already exists: %w", name, ErrConflict)
		}
		v := Volume{Name: name, File: filepath.Join("volumes", name+".img"), Size: st.Size(), Created: time.Now().UTC()}
		if err := p.applyOptions(s, &v, o); err != nil {
			return err
		}
		if err := os.Rename(path, p.Path(v)); err != nil {
			return err
		}
		if d, err := os.Open(filepath.Join(p.dir, "volumes")); err == nil {
			_ = d.Sync()
			d.Close()
		}
		s.Volumes = append(s.Volumes, v)
		out = v
		return nil
	})
	return out, err
}

// Delete removes a volume and its file.
func (p *Pool) Delete(name string) error {
	var file string
	err := p.update(func(s *poolState) error {
		i := findVol(s, name)
		if i < 0 {
			return fmt.Errorf("storagenode: volume %q: %w", name, ErrNotFound)
		}
		file = p.Path(s.Volumes[i])
		if a := s.Volumes[i].Addr(); a != "" {
			delete(s.Config, a)
		}
		s.Volumes = slices.Delete(s.Volumes, i, i+1)
		return nil
	})
	if err != nil {
		return err
	}
	if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Resize changes a volume's size. Shrinking discards data past the new end
// and is refused unless shrink is set.
func (p *Pool) Resize(name string, size int64, shrink bool) (Volume, error) {
	size = (size + wire.SectorSize - 1) / wire.SectorSize * wire.SectorSize
	var out Volume
	err := p.update(func(s *poolState) error {
		i := findVol(s, name)
		if i < 0 {
			return fmt.Errorf("storagenode: volume %q: %w", name, ErrNotFound)
		}
		v := &s.Volumes[i]
		if size <= 0 || (size < v.Size && !shrink) {
			return fmt.Errorf("storagenode: resize %q from %d to %d bytes would discard data (pass --shrink to mean it): %w", name, v.Size, size, ErrInvalid)
		}
		if v.Snapshot {
			return fmt.Errorf("storagenode: %q is a snapshot: %w", name, ErrInvalid)
		}
		if err := os.Truncate(p.Path(*v), size); err != nil {
			return err
		}
		v.Size = size
		out = *v
		return nil
	})
	return out, err
}

// SetExport sets (addr != "") or clears a volume's address and MAC list.
func (p *Pool) SetExport(name, addr string, macs []string, clearAddr bool) (Volume, error) {
	var out Volume
	err := p.update(func(s *poolState) error {
		i := findVol(s, name)
		if i < 0 {
			return fmt.Errorf("storagenode: volume %q: %w", name, ErrNotFound)
		}
		v := &s.Volumes[i]
		if clearAddr {
			v.Shelf, v.Slot = nil, nil
		}
		if macs != nil {
			v.MACs = nil
		}
		if err := p.applyOptions(s, v, VolumeOptions{Addr: addr, MACs: macs}); err != nil {
			return err
		}
		out = *v
		return nil
	})
	return out, err
}

// SetLimit sets (or, with a zero limit, removes) a volume's I/O limit; a
// running daemon applies it within a second, without reopening the volume.
func (p *Pool) SetLimit(name string, l Limit) (Volume, error) {
	if l.IOPS < 0 || l.BytesPerSecond < 0 {
		return Volume{}, fmt.Errorf("storagenode: volume %q: negative limit", name)
	}
	var out Volume
	err := p.update(func(s *poolState) error {
		i := findVol(s, name)
		if i < 0 {
			return fmt.Errorf("storagenode: volume %q: %w", name, ErrNotFound)
		}
		s.Volumes[i].Limit = nil
		if !l.IsZero() {
			s.Volumes[i].Limit = &l
		}
		out = s.Volumes[i]
		return nil
	})
	return out, err
}

// Clone copies src into a new volume: a reflink (FICLONE) where the
// filesystem shares blocks, else a sparse copy that skips holes. It
// returns which one it used.
func (p *Pool) Clone(src, name string, o VolumeOptions) (Volume, string, error) {
	return p.clone(src, name, o, false)
}

// Snapshot is a read-only clone, not exported unless o.Addr says so.
func (p *Pool) Snapshot(src, name string, o VolumeOptions) (Volume, string, error) {
	o.ReadOnly = true
	return p.clone(src, name, o, true)
}

func (p *Pool) clone(src, name string, o VolumeOptions, snap bool) (Volume, string, error) {
	if !nameRE.MatchString(name) {
		return Volume{}, "", fmt.Errorf("storagenode: volume name %q: %w", name, ErrInvalid)
	}
	// Checked under the pool's lock, copied outside it (a copy of a big
	// image takes seconds, and every other change of the pool would wait),
	// checked again and added under it.
	var from, v Volume
	check := func(s *poolState) error {
		i := findVol(s, src)
		if i < 0 {
			return fmt.Errorf("storagenode: volume %q: %w", src, ErrNotFound)
		}
		if findVol(s, name) >= 0 {
			return fmt.Errorf("storagenode: volume %q already exists: %w", name, ErrConflict)
		}
		from = s.Volumes[i]
		v = Volume{Name: name, File: filepath.Join("volumes", name+".img"), Size: from.Size,
			Origin: src, Snapshot: snap, Created: time.Now().UTC()}
		return p.applyOptions(s, &v, o)
	}
	if err := p.update(check); err != nil {
		return Volume{}, "", err
	}
	f, err := os.CreateTemp(filepath.Dir(p.Path(v)), name+".*.part")
	if err != nil {
		return Volume{}, "", err
	}
	tmp := f.Name()
	f.Close()
	defer os.Remove(tmp)
	method, err := CopyFile(p.Path(from), tmp)
	if err != nil {
		return Volume{}, "", err
	}
	err = p.update(func(s *poolState) error {
		if err := check(s); err != nil {
			return err
		}
		if err := os.Rename(tmp, p.Path(v)); err != nil {
			return err
		}
		s.Volumes = append(s.Volumes, v)
		return nil
	})
	return v, method, err
}

// CopyFile copies src to dst (created or truncated), by reflink if the
// filesystem can, else extent by extent with copy_file_range, skipping holes
// (SEEK_DATA/SEEK_HOLE). It returns "reflink" or "sparse-copy". dst is
// fsynced.
func CopyFile(src, dst string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return "", err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return "", err
	}
	defer out.Close()
	method := "reflink"
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		method = "sparse-copy"
		if err := sparseCopy(in, out, fi.Size()); err != nil {
			return "", fmt.Errorf("storagenode: copy %s: %w", src, err)
		}
	}
	if err := out.Sync(); err != nil {
		return "", err
	}
	return method, out.Close()
}

func sparseCopy(in, out *os.File, size int64) error {
	if err := out.Truncate(size); err != nil {
		return err
	}
	ifd, ofd := int(in.Fd()), int(out.Fd())
	var off int64
	for off < size {
		data, err := unix.Seek(ifd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			return err
		}
		hole, err := unix.Seek(ifd, data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		for pos := data; pos < hole; {
			ip, op := pos, pos
			n, err := unix.CopyFileRange(ifd, &ip, ofd, &op, int(min(hole-pos, 1<<30)), 0)
			if err != nil {
				if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) {
					_, err = io.Copy(io.NewOffsetWriter(out, pos), io.NewSectionReader(in, pos, hole-pos))
					if err != nil {
						return err
					}
					break
				}
				return err
			}
			if n == 0 {
				return io.ErrUnexpectedEOF
			}
			pos += int64(n)
		}
		off = hole
	}
	return nil
}

// LoadConfig implements ConfigStore.
func (p *Pool) LoadConfig(shelf uint16, slot uint8) []byte {
	s, err := p.load()
	if err != nil {
		return nil
	}
	if c, ok := s.Config[wire.Addr(shelf, slot)]; ok {
		return []byte(c)
	}
	return nil
}

// SaveConfig implements ConfigStore.
func (p *Pool) SaveConfig(shelf uint16, slot uint8, c []byte) error {
	return p.update(func(s *poolState) error {
		s.Config[wire.Addr(shelf, slot)] = string(c)
		return nil
	})
}

// Exports lists the pool's exported volumes as target exports.
func (p *Pool) Exports() ([]Export, error) {
	vs, err := p.List()
	if err != nil {
		return nil, err
	}
	var out []Export
	for _, v := range vs {
		if v.Shelf == nil || v.Slot == nil {
			continue
		}
		e := Export{Shelf: *v.Shelf, Slot: *v.Slot, Path: p.Path(v), ReadOnly: v.ReadOnly, Sync: v.Sync, Name: v.Name}
		if v.Limit != nil {
			e.Limit = *v.Limit
		}
		for _, m := range v.MACs {
			hw, err := net.ParseMAC(m)
			if err != nil {
				return nil, fmt.Errorf("storagenode: volume %s: %w", v.Name, err)
			}
			e.MACs = append(e.MACs, hw)
		}
		out = append(out, e)
	}
	return out, nil
}

// FormatSize writes n bytes in binary units: "512 B", "1.5 GiB".
func FormatSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if f == float64(int64(f)) {
		return fmt.Sprintf("%d %s", int64(f), units[i])
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

// ParseSize reads a size: a number of bytes or a number with a binary unit
// (K, M, G, T, optionally followed by "iB" or "B"): "64M", "10GiB", "1t".
func ParseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := int64(1)
	if n := len(t); n > 0 {
		if i := strings.IndexByte("KMGTP", t[n-1]); i >= 0 {
			mult = 1 << (10 * (i + 1))
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 || v*float64(mult) > 1<<62 {
		return 0, fmt.Errorf("storagenode: size %q: want a positive number with an optional unit K, M, G, T: %w", s, ErrInvalid)
	}
	return int64(v * float64(mult)), nil
}
