package controller

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fabric-project/fabric/aoe/wire"
	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/controller/store"
	"github.com/fabric-project/fabric/storagenode"
)

// Volumes is where the controller's volumes live: image templates,
// instance disks and hardware nodes' roots, all on the storage nodes that
// report to the controller (the one beside it on a one-machine install
// too: LocalStorage), driven through their desired state. The controller
// keeps a catalog of which volume it wants on which storage node
// (bucketVolumes) and waits for the storage node's report wherever
// correctness depends on it: a clone is there before a guest is started
// on it, an allow list is applied before the next step relies on it.
// Images stay with the controller (STATE/images) and are copied to a
// storage node on first use. The controller never opens a pool itself.
type Volumes interface {
	// ImportImage stores size bytes that fill writes as image name,
	// padded to whole sectors; it returns the volume and its size.
	ImportImage(name string, size int64, fill func(*os.File) error) (string, int64, error)
	DeleteImage(name string) error
	// Clone makes volume name, a copy of image's, exported at addr to
	// macs, on storage on (a pair or storage node; "": the storage with
	// the most free space); it returns where and how.
	Clone(image, name, addr string, macs []string, on string) (string, error)
	// Export exports an existing volume at addr to macs
	// (ErrNotFound: no such volume).
	Export(name, addr string, macs []string) error
	// Allow sets a volume's allow list, and returns once it is applied.
	Allow(name string, macs []string) error
	// Limit sets a volume's I/O caps (0: none), in force when it returns.
	Limit(name string, iops, bps int64) error
	// Resize grows a volume to size bytes (never shrinks it), on every
	// copy, and returns once each live storage node holds it grown.
	Resize(name string, size int64) error
	Delete(name string) error
}

// Volumes returns where the controller's volumes live.
func (c *Controller) Volumes() Volumes { return c.vols }

// bucketVolumes is the remote catalog: "NODE/VOLUME" -> StorageVolumeSpec.
const bucketVolumes = "volumes"

// remoteVolumes drives the storage nodes that report to c.
type remoteVolumes struct {
	c *Controller
	// timeout bounds the waits for a storage node (a clone may need an
	// image fetched first).
	timeout time.Duration
}

func (rv remoteVolumes) imagePath(name string) string {
	return filepath.Join(rv.c.cfg.StateDir, "images", name+".img")
}

func (rv remoteVolumes) ImportImage(name string, size int64, fill func(*os.File) error) (string, int64, error) {
	dir := filepath.Join(rv.c.cfg.StateDir, "images")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", 0, err
	}
	tmp, err := os.CreateTemp(dir, name+".*.part")
	if err != nil {
		return "", 0, err
	}
	size = (size + wire.SectorSize - 1) / wire.SectorSize * wire.SectorSize
	defer os.Remove(tmp.Name())
	if err := tmp.Truncate(size); err == nil {
		err = fill(tmp)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", 0, err
	}
	if _, err := os.Stat(rv.imagePath(name)); err == nil {
		return "", 0, errorf(ErrConflict, "image file %s exists", rv.imagePath(name))
	}
	return imageVolume(name), size, os.Rename(tmp.Name(), rv.imagePath(name))
}

func (rv remoteVolumes) DeleteImage(name string) error {
	if err := rv.Delete(imageVolume(name)); err != nil {
		return err
	}
	if err := os.Remove(rv.imagePath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// specs returns the catalog entries for volume name, by storage node.
func (rv remoteVolumes) specs(tx store.Tx, name string) (map[string]controllerapi.StorageVolumeSpec, error) {
	out := map[string]controllerapi.StorageVolumeSpec{}
	err := tx.ForEach(bucketVolumes, "", func(k string, v []byte) error {
		node, vol, ok := strings.Cut(k, "/")
		if !ok || vol != name {
			return nil
		}
		var s controllerapi.StorageVolumeSpec
		if err := json.Unmarshal(v, &s); err != nil {
			return err
		}
		out[node] = s
		return nil
	})
	return out, err
}

// put records specs (by storage node) and bumps the storage generation.
func (rv remoteVolumes) put(specs map[string]controllerapi.StorageVolumeSpec, del ...string) error {
	return rv.c.reg.update(func(tx store.Tx) error {
		for node, s := range specs {
			if err := putJSON(tx, bucketVolumes, node+"/"+s.Name, s); err != nil {
				return err
			}
		}
		for _, k := range del {
			if err := tx.Delete(bucketVolumes, k); err != nil {
				return err
			}
		}
		_, err := bumpFenceGen(tx)
		return err
	})
}

// pick chooses where a new volume of size bytes goes: the pair with the
// most free space (both nodes hold it), or, with no pair that has room,
// the standalone storage node with the most. A pair with one node down
// still takes volumes: the node that comes back makes them before it
// rejoins (the pair's resync copies what was written meanwhile).
func (rv remoteVolumes) pick(size int64, on string) (nodes []string, where string, err error) {
	sns, err := rv.c.StorageNodes()
	if err != nil {
		return nil, "", err
	}
	var recs []pairRecord
	if err := rv.c.st.View(func(tx store.Tx) (err error) {
		recs, err = rv.c.pairList(tx)
		return err
	}); err != nil {
		return nil, "", err
	}
	if on != "" {
		return rv.pickNamed(size, on, sns, recs)
	}
	paired := map[string]bool{}
	var best []string
	bestFree, most, flagPairs := int64(-1), int64(-1), 0
	now := time.Now()
	for _, p := range recs {
		paired[p.Nodes[0]], paired[p.Nodes[1]] = true, true
		info := rv.c.pairInfo(p, now)
		if info.Owner == "" {
			continue // down, or not formed: nothing could be served from it
		}
		most = max(most, info.FreeBytes)
		if info.FreeBytes >= size && info.FreeBytes > bestFree {
			best, bestFree, where = p.Nodes[:], info.FreeBytes, fmt.Sprintf("on pair %s (%s, %s)", p.Name, p.Nodes[0], p.Nodes[1])
		}
	}
	if best != nil {
		return best, where, nil
	}
	for _, sn := range sns {
		if !sn.Alive || sn.Report == nil || paired[sn.Name] {
			continue
		}
		if sn.Report.Pair != nil {
			// Paired by its own flags: a volume on one node of such a
			// pair and not the other would break the pair.
			flagPairs++
			continue
		}
		free := sn.Report.Capacity.FreeBytes
		most = max(most, free)
		if free >= size && free > bestFree {
			best, bestFree, where = []string{sn.Name}, free, "on storage node "+sn.Name
		}
	}
	switch {
	case best != nil:
		return best, where, nil
	case most >= 0:
		return nil, "", errorf(ErrUnplaceable, "no storage has room for %s: the most free on a live pair or storage node is %s (see `fabric storage list`)",
			storagenode.FormatSize(size), storagenode.FormatSize(most))
	case flagPairs > 0:
		return nil, "", errorf(ErrUnplaceable, "only storage nodes paired by their own --pair flags report to the controller, and it places volumes only on pairs it made: run the nodes with --replication-listen instead and `fabric storage pair create`")
	}
	return nil, "", errorf(ErrUnplaceable, "no storage node reports to the controller to hold the volume (start one with `fabricd storage --controller ...`; see `fabric storage list`)")
}

func (rv remoteVolumes) Clone(image, name, addr string, macs []string, on string) (string, error) {
	nodes, where, err := rv.place(image, on)
	if err != nil {
		return "", err
	}
	return where, rv.cloneOn(nodes, image, name, addr, macs)
}

// image is the volume spec of image name, stored with the controller.
func (rv remoteVolumes) image(name string) (controllerapi.StorageVolumeSpec, error) {
	st, err := os.Stat(rv.imagePath(name))
	if err != nil {
		return controllerapi.StorageVolumeSpec{}, errorf(ErrNotFound, "image %q is not stored with the controller (fabric image import %s FILE)", name, name)
	}
	return controllerapi.StorageVolumeSpec{Name: imageVolume(name), Size: st.Size(), Image: name}, nil
}

// place chooses the storage nodes for a clone of image (see pick), and
// says where that is.
func (rv remoteVolumes) place(image, on string) (nodes []string, where string, err error) {
	img, err := rv.image(image)
	if err != nil {
		return nil, "", err
	}
	return rv.pick(img.Size, on)
}

// cloneOn makes volume name, a clone of image, on storage nodes nodes
// (chosen by place), and waits until each live one holds it.
func (rv remoteVolumes) cloneOn(nodes []string, image, name, addr string, macs []string) error {
	img, err := rv.image(image)
	if err != nil {
		return err
	}
	vol := controllerapi.StorageVolumeSpec{Name: name, Size: img.Size, Clone: img.Name, Addr: addr, MACs: macs}
	// One change: the clone here (and nowhere else: a leftover of a
	// failed create goes), and the image it needs, which travels once per
	// storage node and stays for later clones. A pair's two nodes each
	// clone the same image, so the copies start equal; nothing writes to
	// them before both report the clone (or one is down: then the pair's
	// resync brings it what was written meanwhile).
	if err := rv.c.reg.update(func(tx store.Tx) error {
		old, err := rv.specs(tx, name)
		if err != nil {
			return err
		}
		for n := range old {
			if err := tx.Delete(bucketVolumes, n+"/"+name); err != nil {
				return err
			}
		}
		for _, node := range nodes {
			if _, err := tx.Get(bucketVolumes, node+"/"+img.Name); err != nil {
				if err := putJSON(tx, bucketVolumes, node+"/"+img.Name, img); err != nil {
					return err
				}
			}
			if err := putJSON(tx, bucketVolumes, node+"/"+name, vol); err != nil {
				return err
			}
		}
		_, err = bumpFenceGen(tx)
		return err
	}); err != nil {
		return err
	}
	for _, node := range nodes {
		if err := rv.wait(node, vol); err != nil {
			return err
		}
	}
	return nil
}

// pickNamed places a volume of size bytes on the pair or standalone
// storage node named on, or says why not.
func (rv remoteVolumes) pickNamed(size int64, on string, sns []controllerapi.StorageNode, recs []pairRecord) ([]string, string, error) {
	for _, p := range recs {
		if p.Name != on {
			continue
		}
		info := rv.c.pairInfo(p, time.Now())
		switch {
		case info.Owner == "":
			return nil, "", errorf(ErrUnplaceable, "pair %s serves nothing now (%s)", on, info.State)
		case info.FreeBytes < size:
			return nil, "", errorf(ErrUnplaceable, "pair %s has %s free, the volume needs %s", on, storagenode.FormatSize(info.FreeBytes), storagenode.FormatSize(size))
		}
		return p.Nodes[:], fmt.Sprintf("on pair %s (%s, %s), as asked", p.Name, p.Nodes[0], p.Nodes[1]), nil
	}
	for _, sn := range sns {
		if sn.Name != on {
			continue
		}
		for _, p := range recs {
			if slices.Contains(p.Nodes[:], on) {
				return nil, "", errorf(ErrUnplaceable, "storage node %s is one of pair %s: name the pair", on, p.Name)
			}
		}
		switch {
		case !sn.Alive || sn.Report == nil:
			return nil, "", errorf(ErrUnplaceable, "storage node %s does not report to the controller", on)
		case sn.Report.Pair != nil:
			return nil, "", errorf(ErrUnplaceable, "storage node %s is paired by its own --pair flags; the controller places volumes only on pairs it made", on)
		case sn.Report.Capacity.FreeBytes < size:
			return nil, "", errorf(ErrUnplaceable, "storage node %s has %s free, the volume needs %s", on, storagenode.FormatSize(sn.Report.Capacity.FreeBytes), storagenode.FormatSize(size))
		}
		return []string{on}, "on storage node " + on + ", as asked", nil
	}
	return nil, "", errorf(ErrNotFound, "no storage pair or storage node named %q; see `fabric storage pair list` and `fabric storage list`", on)
}

func (rv remoteVolumes) Export(name, addr string, macs []string) error {
	return rv.change(name, func(s *controllerapi.StorageVolumeSpec) { s.Addr, s.MACs = addr, macs })
}

func (rv remoteVolumes) Allow(name string, macs []string) error {
	return rv.change(name, func(s *controllerapi.StorageVolumeSpec) { s.MACs = macs })
}

func (rv remoteVolumes) Limit(name string, iops, bps int64) error {
	return rv.change(name, func(s *controllerapi.StorageVolumeSpec) { s.IOPS, s.BPS = iops, bps })
}

func (rv remoteVolumes) Resize(name string, size int64) error {
	size = (size + wire.SectorSize - 1) / wire.SectorSize * wire.SectorSize
	specs, err := rv.load(name)
	if err != nil {
		return err
	}
	now := time.Now()
	for node, s := range specs {
		switch {
		case s.Image != "":
			return errorf(ErrInvalid, "%s is an image template; import a new image instead", name)
		case size < s.Size:
			return errorf(ErrInvalid, "volume %s is %s; shrinking it to %s would cut off data, and is refused", name, storagenode.FormatSize(s.Size), storagenode.FormatSize(size))
		}
		if n, err := rv.c.reg.Node(node); err == nil {
			if sn := rv.c.storageNode(n, now); sn.Alive && sn.Report != nil && sn.Report.Capacity.FreeBytes < size-s.Size {
				return errorf(ErrUnplaceable, "storage node %s has %s free; growing %s by %s needs more", node,
					storagenode.FormatSize(sn.Report.Capacity.FreeBytes), name, storagenode.FormatSize(size-s.Size))
			}
		}
	}
	return rv.change(name, func(s *controllerapi.StorageVolumeSpec) { s.Size = size })
}

// load reads volume name's catalog entries, by storage node; a volume
// the catalog does not hold is ErrNotFound.
func (rv remoteVolumes) load(name string) (map[string]controllerapi.StorageVolumeSpec, error) {
	var specs map[string]controllerapi.StorageVolumeSpec
	if err := rv.c.st.View(func(tx store.Tx) (err error) {
		specs, err = rv.specs(tx, name)
		return err
	}); err != nil {
		return nil, err
	}
	if len(specs) == 0 {
		return nil, errorf(ErrNotFound, "no volume %q; see `fabric volume list`", name)
	}
	return specs, nil
}

// change edits volume name's catalog entries and waits until every live
// storage node holding it applied the edit.
func (rv remoteVolumes) change(name string, edit func(*controllerapi.StorageVolumeSpec)) error {
	specs, err := rv.load(name)
	if err != nil {
		return err
	}
	for node, s := range specs {
		edit(&s)
		specs[node] = s
	}
	if err := rv.put(specs); err != nil {
		return err
	}
	for node, s := range specs {
		if err := rv.wait(node, s); err != nil {
			return err
		}
	}
	return nil
}

func (rv remoteVolumes) Delete(name string) error {
	var del []string
	if err := rv.c.st.View(func(tx store.Tx) error {
		specs, err := rv.specs(tx, name)
		for node := range specs {
			del = append(del, node+"/"+name)
		}
		return err
	}); err != nil || len(del) == 0 {
		return err
	}
	return rv.put(nil, del...)
}

// wait waits until storage node node reports volume s as the catalog
// says (exported at its address to exactly its MACs). A change made
// meanwhile by another call (two allow-list changes of one volume, say)
// supersedes s: the wait is for what the catalog holds now, and a volume
// deleted meanwhile is not waited for. A node that is not alive is not
// waited for either: it applies its desired state when it reports again,
// before it serves anything.
func (rv remoteVolumes) wait(node string, s controllerapi.StorageVolumeSpec) error {
	deadline := time.Now().Add(rv.timeout)
	var why string
	for {
		var deleted bool
		if err := rv.c.st.View(func(tx store.Tx) (err error) {
			s, err = getJSON[controllerapi.StorageVolumeSpec](tx, bucketVolumes, node+"/"+s.Name, func() error { deleted = true; return nil })
			return err
		}); err != nil {
			return err
		}
		if deleted {
			return nil
		}
		n, err := rv.c.reg.Node(node)
		if err != nil {
			return err
		}
		sn := rv.c.storageNode(n, time.Now())
		if !sn.Alive || sn.Report == nil {
			return nil
		}
		why = "it does not report the volume yet"
		for _, p := range sn.Report.Pending {
			if p.Name == s.Name {
				why = p.Why
				if p.Percent > 0 {
					why += fmt.Sprintf(" (%.0f%%)", p.Percent)
				}
			}
		}
		for _, v := range sn.Report.Volumes {
			if v.Name == s.Name && asSpecified(v, s) {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return errorf(ErrNodeFailed, "storage node %s has not applied volume %s within %v: %s", node, s.Name, rv.timeout, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// asSpecified says whether a storage node serves v as spec s says: its
// address, exactly its allow list, its I/O caps.
func asSpecified(v controllerapi.StorageVolume, s controllerapi.StorageVolumeSpec) bool {
	norm := func(macs []string) []string {
		out := make([]string, len(macs))
		for i, m := range macs {
			out[i] = strings.ToLower(m)
		}
		slices.Sort(out)
		return out
	}
	return wire.CanonAddr(v.Addr) == wire.CanonAddr(s.Addr) && slices.Equal(norm(v.MACs), norm(s.MACs)) && v.IOPS == s.IOPS && v.BPS == s.BPS &&
		v.Size >= s.Size
}

// storageVolumes lists what the controller wants storage node node to
// hold (remote volumes only).
func (c *Controller) storageVolumes(tx store.Tx, node string) ([]controllerapi.StorageVolumeSpec, error) {
	out := []controllerapi.StorageVolumeSpec{}
	err := tx.ForEach(bucketVolumes, node+"/", func(k string, v []byte) error {
		if !strings.HasPrefix(k, node+"/") {
			return store.ErrStop
		}
		var s controllerapi.StorageVolumeSpec
		if err := json.Unmarshal(v, &s); err != nil {
			return err
		}
		out = append(out, s)
		return nil
	})
	return out, err
}

// storageImage serves an image's content to a storage node
// (GET /v1/storage/images/{name}, the node's certificate).
func (c *Controller) storageImage(w http.ResponseWriter, r *http.Request) {
	if _, _, err := c.agentAuth(r, controllerapi.RoleStorage); err != nil {
		c.fail(w, err)
		return
	}
	name := r.PathValue("name")
	if checkName("image", name) != nil {
		c.fail(w, errorf(ErrNotFound, "no image %q stored with the controller", name))
		return
	}
	f, err := os.Open(c.vols.imagePath(name))
	if err != nil {
		c.fail(w, errorf(ErrNotFound, "no image %q stored with the controller", name))
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		c.fail(w, err)
		return
	}
	http.ServeContent(w, r, name+".img", st.ModTime(), f)
}

func volumeKind(name string) string {
	switch {
	case strings.HasPrefix(name, "img-"):
		return "image"
	case strings.HasPrefix(name, "inst-"):
		return "instance"
	case strings.HasPrefix(name, "root-"):
		return "root"
	}
	return "other"
}

// VolumeList lists the controller's volumes: where each lives and whether
// its storage node serves it as the controller wants.
func (c *Controller) VolumeList() ([]controllerapi.Volume, error) {
	out := []controllerapi.Volume{}
	sns, err := c.StorageNodes()
	if err != nil {
		return nil, err
	}
	reports := map[string]*controllerapi.StorageReport{}
	for _, sn := range sns {
		if sn.Alive {
			reports[sn.Name] = sn.Report
		}
	}
	err = c.st.View(func(tx store.Tx) error {
		return tx.ForEach(bucketVolumes, "", func(k string, b []byte) error {
			node, _, _ := strings.Cut(k, "/")
			var s controllerapi.StorageVolumeSpec
			if err := json.Unmarshal(b, &s); err != nil {
				return err
			}
			v := controllerapi.Volume{Name: s.Name, Kind: volumeKind(s.Name), Storage: node, Addr: s.Addr, Size: s.Size, MACs: s.MACs,
				State: "storage node down"}
			v.State, _ = volumeState(s, reports[node])
			out = append(out, v)
			return nil
		})
	})
	return out, err
}

// volumeState says how storage node r (nil: down) holds volume s, and
// returns what it reports of it.
func volumeState(s controllerapi.StorageVolumeSpec, r *controllerapi.StorageReport) (string, *controllerapi.StorageVolume) {
	if r == nil {
		return "storage node down", nil
	}
	for i, got := range r.Volumes {
		if got.Name != s.Name {
			continue
		}
		if !asSpecified(got, s) {
			return "address, allow list or caps not applied yet", &r.Volumes[i]
		}
		return "served", &r.Volumes[i]
	}
	for _, p := range r.Pending {
		if p.Name == s.Name {
			return "not there yet: " + p.Why, nil
		}
	}
	return "not there yet", nil
}

// VolumeShow is one volume with each of its copies.
func (c *Controller) VolumeShow(name string) (controllerapi.VolumeDetail, error) {
	d := controllerapi.VolumeDetail{Name: name, Kind: volumeKind(name), Copies: []controllerapi.VolumeCopy{}}
	var specs map[string]controllerapi.StorageVolumeSpec
	var pr pairRecord
	var paired bool
	if err := c.st.View(func(tx store.Tx) (err error) {
		if specs, err = c.vols.specs(tx, name); err != nil {
			return err
		}
		for node := range specs {
			if pr, paired, err = c.pairOf(tx, node); err != nil || paired {
				return err
			}
		}
		return nil
	}); err != nil {
		return d, err
	}
	if len(specs) == 0 {
		return d, errorf(ErrNotFound, "no volume %q; see `fabric volume list`", name)
	}
	if paired {
		d.Pair = pr.Name
	}
	nodes := slices.Sorted(maps.Keys(specs))
	now := time.Now()
	for _, node := range nodes {
		s := specs[node]
		d.Addr, d.Size, d.MACs, d.IOPS, d.BPS = s.Addr, s.Size, s.MACs, s.IOPS, s.BPS
		cp := controllerapi.VolumeCopy{Storage: node}
		var r *controllerapi.StorageReport
		if n, err := c.reg.Node(node); err == nil {
			if sn := c.storageNode(n, now); sn.Alive {
				r = sn.Report
			}
		}
		var got *controllerapi.StorageVolume
		cp.State, got = volumeState(s, r)
		if got != nil {
			cp.DirtyBytes, cp.ResyncPercent = got.DirtyBytes, got.ResyncPercent
		}
		if r != nil && cp.State == "served" {
			serving := r.Pair == nil || r.Pair.Serving
			if r.Pair != nil {
				cp.Role, cp.Sync = r.Pair.Role, r.Pair.State
			}
			if serving {
				for _, ifc := range r.Interfaces {
					cp.Paths = append(cp.Paths, ifc.MAC)
				}
				if r.Pair != nil {
					cp.Paths = append(cp.Paths, r.Pair.TakenOver...)
				}
			} else {
				cp.State = "held, not serving (" + r.Pair.State + ")"
			}
		}
		d.Copies = append(d.Copies, cp)
	}
	return d, nil
}

func (c *Controller) resizeVolume(w http.ResponseWriter, r *http.Request) {
	var req controllerapi.ResizeRequest
	if !decode(w, r, &req) {
		return
	}
	name := r.PathValue("name")
	if err := c.vols.Resize(name, req.Size); err != nil {
		c.fail(w, err)
		return
	}
	_ = c.reg.Record(controllerapi.Event{Type: controllerapi.EventVolumeResized, Actor: actorOf(r),
		Message: fmt.Sprintf("volume %s grown to %s", name, storagenode.FormatSize(req.Size))})
	c.showVolume(w, r)
}

func (c *Controller) showVolume(w http.ResponseWriter, r *http.Request) {
	d, err := c.VolumeShow(r.PathValue("name"))
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (c *Controller) listVolumes(w http.ResponseWriter, r *http.Request) {
	out, err := c.VolumeList()
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}
