package controller

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/controller/scheduler"
	"github.com/fabric-project/fabric/controller/store"
)

// Buckets of images and instances.
const (
	bucketImages    = "images"    // name -> Image JSON
	bucketInstances = "instances" // name -> Instance JSON
)

// instanceKey marks an address or AoE index entry that belongs to an
// instance rather than a node.
func instanceKey(name string) []byte { return []byte("instance/" + name) }

func imageVolume(name string) string    { return "img-" + name }
func instanceVolume(name string) string { return "inst-" + name }

func getInstance(tx store.Tx, name string) (controllerapi.Instance, error) {
	return getJSON[controllerapi.Instance](tx, bucketInstances, name, func() error {
		return errorf(ErrNotFound, "no instance named %q; see `fabric instance list`", name)
	})
}

// Images lists the images.
func (c *Controller) Images() ([]controllerapi.Image, error) {
	return listJSON[controllerapi.Image](c.st, bucketImages)
}

// Instances lists the instances, each with the state its node reports.
func (c *Controller) Instances() ([]controllerapi.Instance, error) {
	ins, err := listJSON[controllerapi.Instance](c.st, bucketInstances)
	for i := range ins {
		c.fillState(&ins[i])
	}
	return ins, err
}

// Instance returns one instance with its reported state.
func (c *Controller) Instance(name string) (controllerapi.Instance, error) {
	var in controllerapi.Instance
	err := c.st.View(func(tx store.Tx) (err error) {
		in, err = getInstance(tx, name)
		return err
	})
	if err == nil {
		c.fillState(&in)
	}
	return in, err
}

func (c *Controller) fillState(in *controllerapi.Instance) {
	if in.Migrate != nil {
		in.State = controllerapi.StateMigrating
		return
	}
	if _, _, alive := c.agents.get(in.Node, time.Now()); !alive {
		in.State = "unknown (node " + in.Node + " not reporting)"
		return
	}
	if s, ok := c.agents.instance(in.Node, in.Name); ok {
		in.State, in.Error = s.State, s.Error
	} else {
		in.State = "pending"
	}
}

// ImportImage stores size bytes read by fill as a new image's template
// volume.
func (c *Controller) ImportImage(name string, size int64, fill func(*os.File) error) (controllerapi.Image, error) {
	var im controllerapi.Image
	if err := checkName("image", name); err != nil {
		return im, err
	}
	if size <= 0 {
		return im, errorf(ErrInvalid, "image %s: empty upload (send the image file as the request body with its Content-Length)", name)
	}
	if err := c.st.View(func(tx store.Tx) error {
		if _, err := tx.Get(bucketImages, name); err == nil {
			return errorf(ErrConflict, "an image named %q exists; delete it first or choose another name", name)
		}
		return nil
	}); err != nil {
		return im, err
	}
	vol, padded, err := c.vols.ImportImage(name, size, fill)
	if err != nil {
		return im, fmt.Errorf("image %s: %w", name, err)
	}
	im = controllerapi.Image{Name: name, Volume: vol, Size: padded, Created: time.Now().UTC()}
	err = c.reg.update(func(tx store.Tx) error {
		if _, err := tx.Get(bucketImages, name); err == nil {
			return errorf(ErrConflict, "an image named %q exists", name)
		}
		if err := putJSON(tx, bucketImages, name, im); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: im.Created, Type: controllerapi.EventImageImported,
			Message: imageMessage(name, size, padded, vol)})
	})
	if err != nil {
		_ = c.vols.DeleteImage(name)
	}
	return im, err
}

// DeleteImage removes an image that no instance uses.
func (c *Controller) DeleteImage(name string) error {
	err := c.reg.update(func(tx store.Tx) error {
		if _, err := tx.Get(bucketImages, name); err != nil {
			return errorf(ErrNotFound, "no image named %q", name)
		}
		return tx.Delete(bucketImages, name)
	})
	if err != nil {
		return err
	}
	return c.vols.DeleteImage(name)
}

func migTarget(in controllerapi.Instance) string {
	if in.Migrate == nil {
		return ""
	}
	return in.Migrate.To
}

func (cfg Config) vcpuRatio() int {
	if cfg.VCPUOvercommit <= 0 {
		return 4
	}
	return cfg.VCPUOvercommit
}

// fits says why in does not fit on node, or "" when it does: the node is
// not a hardware node, is fenced, dead, drained or without libvirtd, has
// too little room, or reaches none of the storage holding the disk.
func (c *Controller) fits(v view, node string, in scheduler.Instance) (string, error) {
	n, err := c.reg.Node(node)
	if err != nil {
		return "", err
	}
	if n.Role != controllerapi.RoleHWNode {
		return fmt.Sprintf("%s is a %s node, not a hardware node", node, n.Role), nil
	}
	if f, ok := c.fenced(node); ok {
		return fmt.Sprintf("%s is fenced since %s (%s); `fabric node unfence %s` once it is repaired", node, f.At.Local().Format(time.DateTime), f.Reason, node), nil
	}
	hb, seen, alive := c.agents.get(node, time.Now())
	if !alive {
		if seen.IsZero() {
			return fmt.Sprintf("%s has no agent reporting (never heard from since the controller started)", node), nil
		}
		return fmt.Sprintf("%s is not alive: last heartbeat %s ago", node, time.Since(seen).Round(100*time.Millisecond)), nil
	}
	if hb.LibvirtError != "" {
		return fmt.Sprintf("%s's libvirtd does not answer its agent (%s)", node, hb.LibvirtError), nil
	}
	if c.drained(node) {
		return fmt.Sprintf("%s is drained (`fabric node undrain %s` to use it again)", node, node), nil
	}
	var nr *scheduler.ErrNoRoom
	switch err := scheduler.Check(v.snap, in, node); {
	case err == nil:
		return "", nil
	case errors.As(err, &nr) && nr.Unreachable:
		return fmt.Sprintf("%s's AoE frames reach none of the storage nodes holding the disk (%s): no storage node heard it for %v", node, strings.Join(in.Storage, ", "), ReachWindow), nil
	case errors.As(err, &nr) && len(nr.Why) > 0:
		vcpus, mem := scheduler.Free(v.snap, node)
		if mem < in.MemoryMiB {
			return fmt.Sprintf("%s has %d MiB of memory free, the instance needs %d", node, max(mem, 0), in.MemoryMiB), nil
		}
		return fmt.Sprintf("%s has %d vCPUs free (overcommit %dx), the instance needs %d", node, max(vcpus, 0), c.cfg.vcpuRatio(), in.VCPUs), nil
	default:
		return fmt.Sprintf("%s takes no instances now", node), nil
	}
}

// view is the scheduler's snapshot with what the controller needs beside
// it: the instances by name, and which storage nodes hold each volume.
type view struct {
	snap    scheduler.Snapshot
	ins     map[string]controllerapi.Instance
	holders map[string][]string // volume name -> live storage nodes holding it
}

// ReachWindow is how recently a storage node must have heard a hardware
// node's AoE frames (its initiator asks every second) for the hardware
// node to count as reaching it.
const ReachWindow = 5 * time.Second

// snapshot is the scheduler's view of the fabric (taken under placeMu):
// every hardware node with what it offers, whether it takes instances
// (alive, not drained, not fenced) and which storage nodes hear its AoE
// frames; every instance with its size, its node (and its migration's
// destination, whose room it holds), group, HA and priority, and the
// storage nodes holding its disk.
func (c *Controller) snapshot() (view, error) {
	v := view{ins: map[string]controllerapi.Instance{}, holders: map[string][]string{}}
	nodes, err := c.reg.Nodes()
	if err != nil {
		return v, err
	}
	ins, err := listJSON[controllerapi.Instance](c.st, bucketInstances)
	if err != nil {
		return v, err
	}
	sns, err := c.StorageNodes()
	if err != nil {
		return v, err
	}
	var live []controllerapi.StorageNode
	told := true // every live storage node says whom it hears
	for _, sn := range sns {
		if !sn.Alive || sn.Report == nil {
			continue
		}
		live = append(live, sn)
		told = told && sn.Report.Heard != nil
		for _, vol := range sn.Report.Volumes {
			v.holders[vol.Name] = append(v.holders[vol.Name], sn.Name)
		}
	}
	now := time.Now()
	for _, n := range nodes {
		if n.Role != controllerapi.RoleHWNode {
			continue
		}
		hb, _, alive := c.agents.get(n.Name, now)
		_, fenced := c.fenced(n.Name)
		sn := scheduler.Node{Name: n.Name, Usable: alive && !fenced && !c.drained(n.Name),
			VCPUs: hb.Capacity.VCPUs * c.cfg.vcpuRatio(), MemoryMiB: hb.Capacity.MemoryMiB}
		// Our initiator asks the storage every second; the kernel's aoe
		// driver does not, so its nodes' reach is not known.
		if hb.Capacity.Disk == "nbd" && len(live) > 0 && told {
			sn.StorageKnown = true
			mac := strings.ToLower(n.MAC)
			if hb.Capacity.AoEMAC != "" {
				mac = strings.ToLower(hb.Capacity.AoEMAC)
			}
			for _, st := range live {
				if at, ok := st.Report.Heard[mac]; ok && now.Sub(at) < ReachWindow {
					sn.Storage = append(sn.Storage, st.Name)
				}
			}
		}
		v.snap.Nodes = append(v.snap.Nodes, sn)
	}
	for _, in := range ins {
		v.ins[in.Name] = in
		v.snap.Instances = append(v.snap.Instances, v.instance(in))
	}
	return v, nil
}

// instance is in as the scheduler sees it.
func (v view) instance(in controllerapi.Instance) scheduler.Instance {
	return scheduler.Instance{Name: in.Name, Node: in.Node, Also: migTarget(in), VCPUs: in.VCPUs, MemoryMiB: in.MemoryMiB,
		Group: in.Group, HA: !in.NoHA && in.Want == controllerapi.StateRunning, Priority: in.Priority,
		Storage: v.holders[instanceVolume(in.Name)]}
}

// place picks the live hardware node with the most free memory that fits
// in, spreading its group, among those reaching its storage
// (controller/scheduler); never exclude.
func (c *Controller) place(v view, in scheduler.Instance, exclude string) (string, error) {
	to, err := scheduler.Place(v.snap, in, exclude)
	var nr *scheduler.ErrNoRoom
	switch {
	case errors.As(err, &nr) && len(nr.Why) == 0:
		return "", errorf(ErrUnplaceable, "no live hardware node to place %d vCPUs and %d MiB on (start `fabricd hwnode` on one, see `fabric node list`)", in.VCPUs, in.MemoryMiB)
	case errors.As(err, &nr):
		return "", errorf(ErrUnplaceable, "no hardware node has room for %d vCPUs and %d MiB (%s)", in.VCPUs, in.MemoryMiB, strings.Join(nr.Why, "; "))
	}
	return to, err
}

// aoeMAC is the address a hardware node's AoE traffic comes from: what its
// agent reports, else its registered MAC.
func (c *Controller) aoeMAC(node string) (string, error) {
	if hb, _, _ := c.agents.get(node, time.Now()); hb.Capacity.AoEMAC != "" {
		return hb.Capacity.AoEMAC, nil
	}
	n, err := c.reg.Node(node)
	if err != nil {
		return "", err
	}
	return n.MAC, nil
}

// allow sets a volume's allow list to the given nodes: no other initiator
// sees it.
func (c *Controller) allow(vol string, nodes ...string) error {
	macs := []string{}
	for _, n := range nodes {
		m, err := c.aoeMAC(n)
		if err != nil {
			return err
		}
		macs = append(macs, m)
	}
	if err := c.vols.Allow(vol, macs); err != nil {
		return fmt.Errorf("allow list of volume %s: %w", vol, err)
	}
	return nil
}

// ErrUnplaceable is a request no node can take.
var ErrUnplaceable = errors.New("unplaceable")

// ErrNodeFailed is an operation a node tried and failed.
var ErrNodeFailed = errors.New("node failed")

func randomMAC() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", b[0], b[1], b[2])
}

func randomUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func imageMessage(name string, uploaded, size int64, vol string) string {
	if uploaded == size {
		return fmt.Sprintf("image %s imported (%d bytes, volume %s)", name, size, vol)
	}
	return fmt.Sprintf("image %s imported (%d bytes uploaded, padded with zeros to %d, a whole number of sectors; volume %s)", name, uploaded, size, vol)
}

// CreateInstance places an instance, clones its disk from the image and
// records it.
func (c *Controller) CreateInstance(req controllerapi.CreateInstanceRequest) (controllerapi.Instance, error) {
	var in controllerapi.Instance
	if err := checkName("instance", req.Name); err != nil {
		return in, err
	}
	if req.Group != "" {
		if err := checkName("group", req.Group); err != nil {
			return in, err
		}
	}
	if req.VCPUs < 1 || req.VCPUs > 64 {
		return in, errorf(ErrInvalid, "vcpus must be between 1 and 64, not %d", req.VCPUs)
	}
	if req.MemoryMiB < 32 || req.MemoryMiB > 1<<20 {
		return in, errorf(ErrInvalid, "memory must be between 32 MiB and 1 TiB, not %d MiB", req.MemoryMiB)
	}
	if err := checkLimits(req.IOPS, req.BPS); err != nil {
		return in, err
	}
	c.placeMu.Lock()
	defer c.placeMu.Unlock()
	if err := c.st.View(func(tx store.Tx) error {
		if _, err := tx.Get(bucketInstances, req.Name); err == nil {
			return errorf(ErrConflict, "an instance named %q exists", req.Name)
		}
		if _, err := tx.Get(bucketImages, req.Image); err != nil {
			return errorf(ErrNotFound, "no image named %q; see `fabric image list`", req.Image)
		}
		return nil
	}); err != nil {
		return in, err
	}
	v, err := c.snapshot()
	if err != nil {
		return in, err
	}
	// The disk's storage first: the instance goes to a hardware node that
	// reaches it.
	stor, where, err := c.vols.place(req.Image, req.Storage)
	if err != nil {
		return in, fmt.Errorf("cloning image %s for %s: %w", req.Image, req.Name, err)
	}
	want := scheduler.Instance{Name: req.Name, VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB, Group: req.Group, Storage: stor}
	node := req.Node
	if node != "" {
		why, err := c.fits(v, node, want)
		if err != nil {
			return in, err
		}
		if why != "" {
			return in, errorf(ErrUnplaceable, "cannot place %s on %s: %s", req.Name, node, why)
		}
	} else if node, err = c.place(v, want, ""); err != nil {
		return in, err
	}
	now := time.Now().UTC()
	in = controllerapi.Instance{Name: req.Name, UUID: randomUUID(), Image: req.Image, VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB,
		MAC: randomMAC(), Node: node, Want: controllerapi.StateStopped, Created: now, Updated: now,
		Group: req.Group, Priority: req.Priority, NoHA: req.NoHA, IOPS: req.IOPS, BPS: req.BPS}
	if req.Start {
		in.Want = controllerapi.StateRunning
	}
	// Reserve the address and the AoE address first, then clone, then
	// publish the instance: an agent never sees an instance without its
	// disk.
	err = c.st.Update(func(tx store.Tx) error {
		ip, err := c.reg.allocate(tx)
		if err != nil {
			return err
		}
		vol, err := c.reg.allocateRoot(tx)
		if err != nil {
			return err
		}
		in.IP = netip.PrefixFrom(ip, c.cfg.BootSubnet.Bits()).String()
		in.Volume = vol
		sh, sl, _ := ParseAoE(vol)
		if err := tx.Put(bucketIPs, ipKey(ip), instanceKey(in.Name)); err != nil {
			return err
		}
		return tx.Put(bucketAoE, aoeKey(sh, sl), instanceKey(in.Name))
	})
	if err != nil {
		return in, err
	}
	release := func() {
		_ = c.st.Update(func(tx store.Tx) error { return c.reg.releaseInstance(tx, in) })
	}
	mac, err := c.aoeMAC(node)
	if err != nil {
		release()
		return in, err
	}
	// Only the node the instance runs on sees its disk.
	if err := c.vols.cloneOn(stor, req.Image, instanceVolume(in.Name), in.Volume, []string{mac}); err != nil {
		release()
		return in, fmt.Errorf("cloning image %s for %s: %w", req.Image, in.Name, err)
	}
	c.log.Info("instance disk cloned", "instance", in.Name, "volume", in.Volume, "where", where)
	if in.IOPS > 0 || in.BPS > 0 {
		if err := c.vols.Limit(instanceVolume(in.Name), in.IOPS, in.BPS); err != nil {
			release()
			_ = c.vols.Delete(instanceVolume(in.Name))
			return in, fmt.Errorf("I/O caps of %s's disk: %w", in.Name, err)
		}
	}
	err = c.reg.update(func(tx store.Tx) error {
		if err := putJSON(tx, bucketInstances, in.Name, in); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: now, Type: controllerapi.EventInstanceCreated, Node: node,
			Message: fmt.Sprintf("instance %s created on %s (%d vCPUs, %d MiB, disk %s, address %s)", in.Name, node, in.VCPUs, in.MemoryMiB, in.Volume, in.IP)})
	})
	if err != nil {
		release()
		_ = c.vols.Delete(instanceVolume(in.Name))
	}
	return in, err
}

func checkLimits(iops, bps int64) error {
	if iops < 0 || bps < 0 {
		return errorf(ErrInvalid, "I/O caps cannot be negative (0 removes one)")
	}
	if bps > 0 && bps < 64<<10 {
		return errorf(ErrInvalid, "a bandwidth cap of %d bytes/s is below 64 KiB/s, less than two 32 KiB requests a second", bps)
	}
	return nil
}

// LimitInstance sets the I/O caps of an instance's disk at the storage
// node (0 removes one); they are in force when it returns, whether the
// instance runs or not.
func (c *Controller) LimitInstance(name string, iops, bps int64) (controllerapi.Instance, error) {
	if err := checkLimits(iops, bps); err != nil {
		return controllerapi.Instance{}, err
	}
	in, err := c.Instance(name)
	if err != nil {
		return in, err
	}
	if err := c.vols.Limit(instanceVolume(name), iops, bps); err != nil {
		return in, fmt.Errorf("I/O caps of %s's disk: %w", name, err)
	}
	err = c.reg.update(func(tx store.Tx) error {
		cur, err := getInstance(tx, name)
		if err != nil {
			return err
		}
		cur.IOPS, cur.BPS, cur.Updated = iops, bps, time.Now().UTC()
		if err := putJSON(tx, bucketInstances, name, cur); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: cur.Updated, Type: controllerapi.EventInstanceLimited, Node: cur.Node,
			Message: fmt.Sprintf("instance %s's disk caps set: %d IOPS, %d bytes/s (0: no cap)", name, iops, bps)})
	})
	if err != nil {
		return in, err
	}
	return c.Instance(name)
}

// releaseInstance frees an instance's address and AoE address in tx.
func (r *Registry) releaseInstance(tx store.Tx, in controllerapi.Instance) error {
	if p, err := netip.ParsePrefix(in.IP); err == nil {
		if err := r.freeIP(tx, p.Addr()); err != nil {
			return err
		}
	}
	if sh, sl, err := ParseAoE(in.Volume); err == nil {
		if err := r.freeAoE(tx, sh, sl); err != nil {
			return err
		}
	}
	return nil
}

// SetWant starts or stops an instance.
func (c *Controller) SetWant(name, want string) (controllerapi.Instance, error) {
	var in controllerapi.Instance
	err := c.reg.update(func(tx store.Tx) error {
		var err error
		if in, err = getInstance(tx, name); err != nil {
			return err
		}
		if in.Want == want {
			return nil
		}
		in.Want, in.Updated = want, time.Now().UTC()
		if err := putJSON(tx, bucketInstances, name, in); err != nil {
			return err
		}
		typ := controllerapi.EventInstanceStarted
		if want == controllerapi.StateStopped {
			typ = controllerapi.EventInstanceStopped
		}
		return appendEvent(tx, controllerapi.Event{Time: in.Updated, Type: typ, Node: in.Node,
			Message: fmt.Sprintf("instance %s: %s asked on %s", name, map[string]string{controllerapi.StateRunning: "start", controllerapi.StateStopped: "stop"}[want], in.Node)})
	})
	return in, err
}

// WaitState waits until the instance's node reports state, up to timeout.
func (c *Controller) WaitState(name, state string, timeout time.Duration) (controllerapi.Instance, bool) {
	var in controllerapi.Instance
	var failing time.Time // since when the node has reported an error for it
	gaveUp := false
	ok := c.waitAgents(timeout, func() bool {
		var err error
		in, err = c.Instance(name)
		if err != nil {
			return false
		}
		if in.State == state {
			return true
		}
		// The agent retries a failing step with backoff; an error that
		// lasts is not worth the rest of the caller's wait.
		switch {
		case in.Error == "":
			failing = time.Time{}
		case failing.IsZero():
			failing = time.Now()
		case time.Since(failing) > errorPatience:
			gaveUp = true
			return true
		}
		return false
	})
	return in, ok && !gaveUp
}

// errorPatience is how long WaitState waits on while the node reports an
// error for the instance.
var errorPatience = 15 * time.Second

// DeleteInstance removes an instance: its node destroys the guest, then
// the disk and addresses are freed.
func (c *Controller) DeleteInstance(name string) (controllerapi.Instance, error) {
	var in controllerapi.Instance
	err := c.reg.update(func(tx store.Tx) error {
		var err error
		if in, err = getInstance(tx, name); err != nil {
			return err
		}
		if in.Migrate != nil {
			return errorf(ErrConflict, "instance %s is migrating to %s; delete it when the migration ends", name, in.Migrate.To)
		}
		if err := tx.Delete(bucketInstances, name); err != nil {
			return err
		}
		if err := c.reg.releaseInstance(tx, in); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: time.Now().UTC(), Type: controllerapi.EventInstanceDeleted, Node: in.Node,
			Message: fmt.Sprintf("instance %s deleted from %s", name, in.Node)})
	})
	if err != nil {
		return in, err
	}
	// Wait for the node to drop the guest before the disk goes away.
	c.waitAgents(30*time.Second, func() bool {
		_, _, alive := c.agents.get(in.Node, time.Now())
		_, present := c.agents.instance(in.Node, name)
		return !alive || !present
	})
	if err := c.vols.Delete(instanceVolume(name)); err != nil {
		return in, fmt.Errorf("instance %s deleted, but its volume stays: %w", name, err)
	}
	return in, nil
}

// desired is the state a node's agent should reach.
func (c *Controller) desired(node string) (controllerapi.DesiredState, error) {
	ds := controllerapi.DesiredState{Instances: []controllerapi.InstanceSpec{}}
	ins, err := listJSON[controllerapi.Instance](c.st, bucketInstances)
	if err != nil {
		return ds, err
	}
	gw := ""
	if c.cfg.BootRouter.IsValid() {
		gw = c.cfg.BootRouter.String()
	}
	for _, in := range ins {
		spec := controllerapi.InstanceSpec{Name: in.Name, UUID: in.UUID, VCPUs: in.VCPUs, MemoryMiB: in.MemoryMiB,
			MAC: in.MAC, IP: in.IP, Gateway: gw, Volume: in.Volume, Running: in.Want == controllerapi.StateRunning}
		switch {
		case in.Node == node:
			if in.Migrate != nil && in.Migrate.Phase == controllerapi.PhaseRun {
				m := *in.Migrate
				spec.Migrate = &m
			}
			ds.Instances = append(ds.Instances, spec)
		case in.Migrate != nil && in.Migrate.To == node:
			spec.Incoming = true
			ds.Instances = append(ds.Instances, spec)
		}
	}
	ds.Consoles = c.consoles.pending(node, time.Now())
	return ds, nil
}

// setMigration records (or with m nil clears) an instance's migration.
func (c *Controller) setMigration(name string, m *controllerapi.Migration, node string) error {
	return c.reg.update(func(tx store.Tx) error {
		in, err := getInstance(tx, name)
		if err != nil {
			return err
		}
		in.Migrate = m
		if node != "" {
			in.Node = node
		}
		in.Updated = time.Now().UTC()
		return putJSON(tx, bucketInstances, name, in)
	})
}

// Migrate live-migrates an instance to node to (or to a node the scheduler
// picks). It checks the destination, has the destination attach the disk,
// has the source's libvirtd migrate peer-to-peer, and records the move.
// On failure the instance keeps running where it was.
func (c *Controller) Migrate(name, to string) (controllerapi.MigrateResult, error) {
	var res controllerapi.MigrateResult
	in, m, err := c.decideMigration(name, to)
	if err != nil {
		return res, err
	}
	defer c.migrationDone(name)
	from, to := in.Node, m.To
	t0 := time.Now()
	vol := instanceVolume(name)
	abort := func(err error) (controllerapi.MigrateResult, error) {
		if cerr := c.setMigration(name, nil, ""); cerr != nil {
			err = errors.Join(err, cerr)
		}
		if cerr := c.allow(vol, from); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return res, c.migrationFailed(in, to, err)
	}
	// 1. Both nodes may see the volume; the destination attaches it.
	if err := c.allow(vol, from, to); err != nil {
		return abort(err)
	}
	var st controllerapi.InstanceStatus
	var lvErr string
	ok := c.waitAgents(c.cfg.prepareTimeout(), func() bool {
		var seen bool
		st, seen = c.agents.instance(to, name)
		hb, _, _ := c.agents.get(to, time.Now())
		lvErr = hb.LibvirtError
		return seen && st.Disk != "" || lvErr != ""
	})
	switch {
	case lvErr != "":
		return abort(errorf(ErrUnplaceable, "cannot migrate %s to %s: %s's libvirtd does not answer its agent (%s)", name, to, to, lvErr))
	case !ok:
		why := "it did not attach it within " + c.cfg.prepareTimeout().String()
		if st.Error != "" {
			why = st.Error
		}
		return abort(errorf(ErrUnplaceable, "cannot migrate %s to %s: volume %s is not reachable there: %s", name, to, in.Volume, why))
	}
	// 2. The source migrates.
	m.Phase = controllerapi.PhaseRun
	if err := c.setMigration(name, m, ""); err != nil {
		return abort(err)
	}
	var rep controllerapi.MigrationReport
	ok = c.waitAgents(c.cfg.migrateTimeout(), func() bool {
		var have bool
		rep, have = c.agents.report(m.ID)
		return have
	})
	if !ok {
		// The source may still finish; leave the record so that nothing
		// starts a second copy, and say so.
		return res, c.migrationFailed(in, to, errorf(ErrNodeFailed, "migration of %s to %s: no result from %s within %s; the migration record stays until it reports (see `fabric instance show %s`)", name, to, from, c.cfg.migrateTimeout(), name))
	}
	if !rep.OK {
		return abort(errorf(ErrNodeFailed, "migration of %s from %s to %s failed, the instance stays on %s: %s", name, from, to, from, rep.Error))
	}
	// 3. Record the move; only the destination sees the volume now.
	if err := c.setMigration(name, nil, to); err != nil {
		return res, err
	}
	if err := c.allow(vol, to); err != nil {
		c.log.Error("revoking the source's access to the volume", "instance", name, "err", err)
	}
	res = controllerapi.MigrateResult{Instance: name, From: from, To: to, WallMS: float64(time.Since(t0).Microseconds()) / 1000, DowntimeMS: rep.DowntimeMS}
	_ = c.reg.Record(controllerapi.Event{Type: controllerapi.EventInstanceMigrated, Node: to,
		Message: fmt.Sprintf("instance %s migrated live from %s to %s in %.0f ms (libvirt: %.0f ms migrating, %.0f ms downtime)", name, from, to, res.WallMS, rep.WallMS, rep.DowntimeMS)})
	// 4. Verify it runs at the destination.
	if _, ok := c.WaitState(name, "running", 15*time.Second); !ok {
		return res, errorf(ErrNodeFailed, "migration of %s to %s reported done, but %s does not report it running", name, to, to)
	}
	return res, nil
}

// decideMigration decides a migration over one snapshot, under the
// placement lock: the instance runs and is not migrating already; the
// destination (given, or the scheduler's pick) fits it and runs the same
// hypervisor. Recording the migration holds its room there; the instance
// is marked in flight (Migrate clears it).
func (c *Controller) decideMigration(name, to string) (controllerapi.Instance, *controllerapi.Migration, error) {
	c.placeMu.Lock()
	defer c.placeMu.Unlock()
	in, err := c.Instance(name)
	if err != nil {
		return in, nil, err
	}
	if in.Migrate != nil {
		return in, nil, errorf(ErrConflict, "instance %s is already migrating to %s", name, in.Migrate.To)
	}
	if c.inflight[name] {
		return in, nil, errorf(ErrConflict, "instance %s is being moved (a migration is finishing); try again in a moment", name)
	}
	from := in.Node
	if in.State != "running" {
		return in, nil, errorf(ErrConflict, "instance %s is %s on %s; only a running instance migrates live", name, in.State, from)
	}
	v, err := c.snapshot()
	if err != nil {
		return in, nil, err
	}
	want := v.instance(in)
	if to == "" {
		if to, err = c.place(v, want, from); err != nil {
			return in, nil, err
		}
	}
	if to == from {
		return in, nil, errorf(ErrInvalid, "instance %s already runs on %s", name, to)
	}
	why, err := c.fits(v, to, want)
	if err != nil {
		return in, nil, err
	}
	if why != "" {
		return in, nil, c.migrationFailed(in, to, errorf(ErrUnplaceable, "cannot migrate %s to %s: %s", name, to, why))
	}
	src, _, _ := c.agents.get(from, time.Now())
	dst, _, _ := c.agents.get(to, time.Now())
	if src.Capacity.Hypervisor != dst.Capacity.Hypervisor {
		return in, nil, c.migrationFailed(in, to, errorf(ErrUnplaceable, "cannot migrate %s to %s: %s runs %s guests, %s runs %s", name, to, from, src.Capacity.Hypervisor, to, dst.Capacity.Hypervisor))
	}
	c.migSeq++
	m := &controllerapi.Migration{ID: uint64(time.Now().UnixNano()) + c.migSeq, To: to, ToURI: dst.Capacity.MigrationURI,
		Phase: controllerapi.PhasePrepare, Started: time.Now().UTC()}
	if err := c.setMigration(name, m, ""); err != nil {
		return in, nil, err
	}
	c.inflight[name] = true
	return in, m, nil
}

// claim marks the instance in flight unless a Migrate call or a settling
// pass already works on it.
func (c *Controller) claim(name string) bool {
	c.placeMu.Lock()
	defer c.placeMu.Unlock()
	if c.inflight[name] {
		return false
	}
	c.inflight[name] = true
	return true
}

// migrationDone ends what decideMigration started.
func (c *Controller) migrationDone(name string) {
	c.placeMu.Lock()
	defer c.placeMu.Unlock()
	delete(c.inflight, name)
}

func (c *Controller) migrationFailed(in controllerapi.Instance, to string, err error) error {
	_ = c.reg.Record(controllerapi.Event{Type: controllerapi.EventMigrationFailed, Node: in.Node, Message: err.Error()})
	c.log.Warn("migration failed", "instance", in.Name, "from", in.Node, "to", to, "err", err)
	return err
}

func (cfg Config) prepareTimeout() time.Duration {
	if cfg.PrepareTimeout > 0 {
		return cfg.PrepareTimeout
	}
	return 20 * time.Second
}

func (cfg Config) migrateTimeout() time.Duration {
	if cfg.MigrateTimeout > 0 {
		return cfg.MigrateTimeout
	}
	return 3 * time.Minute
}

// ensureRootVolume gives a newly registered hardware node its root volume:
// a clone of the configured root image, exported at the node's root volume
// address. A volume left from an earlier registration of the same name is
// exported again instead.
func (c *Controller) ensureRootVolume(n controllerapi.Node) error {
	if n.Role != controllerapi.RoleHWNode || c.cfg.HWNodeRootImage == "" || n.RootVolume == "" {
		return nil
	}
	name := c.rootVolume(n.Name)
	how := "re-exported"
	// Only the node itself sees its root.
	macs := []string{n.MAC}
	if err := c.vols.Export(name, n.RootVolume, macs); errors.Is(err, ErrNotFound) {
		how, err = c.vols.Clone(c.cfg.HWNodeRootImage, name, n.RootVolume, macs, "")
		if errors.Is(err, ErrNotFound) {
			err = fmt.Errorf("root image %q not imported (fabric image import %s FILE): %w", c.cfg.HWNodeRootImage, c.cfg.HWNodeRootImage, err)
		}
		if err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	c.log.Info("root volume ready", "node", n.Name, "volume", name, "addr", n.RootVolume, "how", how)
	return c.reg.Record(controllerapi.Event{Type: controllerapi.EventNodeUpdated, Node: n.Name, MAC: n.MAC,
		Message: fmt.Sprintf("root volume %s of %s ready at %s (%s from image %s)", name, n.Name, n.RootVolume, how, c.cfg.HWNodeRootImage)})
}

// bucketDrained holds the hardware nodes that take no new instances.
const bucketDrained = "drained"

func (c *Controller) drained(node string) bool {
	err := c.st.View(func(tx store.Tx) error {
		_, err := tx.Get(bucketDrained, node)
		return err
	})
	return err == nil
}

// Drain marks a hardware node as taking no new instances and moves every
// instance off it: running ones live-migrate to nodes the scheduler picks,
// stopped ones are reassigned. It goes on after a failure and reports each
// instance.
func (c *Controller) Drain(node string) ([]controllerapi.DrainResult, error) {
	n, err := c.reg.Node(node)
	if err != nil {
		return nil, err
	}
	if n.Role != controllerapi.RoleHWNode {
		return nil, errorf(ErrInvalid, "%s is a %s node; only hardware nodes run instances", node, n.Role)
	}
	plan, err := c.drainPlan(n.Name)
	if err != nil {
		return nil, err
	}
	if err := c.reg.update(func(tx store.Tx) error {
		if err := tx.Put(bucketDrained, n.Name, []byte(time.Now().UTC().Format(time.RFC3339))); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: time.Now().UTC(), Type: controllerapi.EventNodeUpdated, Node: n.Name, MAC: n.MAC,
			Message: fmt.Sprintf("%s drained: no new instances; moving its instances away", n.Name)})
	}); err != nil {
		return nil, err
	}
	// The plan's moves, each to the node the plan chose; each is checked
	// again when it runs (the fabric may have changed meanwhile).
	res := []controllerapi.DrainResult{}
	for _, mv := range plan.Moves {
		r := controllerapi.DrainResult{Instance: mv.Instance}
		in, err := c.Instance(mv.Instance)
		switch {
		case err != nil:
			r.Error = err.Error()
		case in.Node != n.Name:
			r.Error = fmt.Sprintf("instance %s moved to %s meanwhile", in.Name, in.Node)
		case in.State == "running":
			m, err := c.Migrate(in.Name, mv.To)
			r.To, r.Live, r.DowntimeMS = m.To, true, m.DowntimeMS
			if err != nil {
				r.Error = err.Error()
			}
		default:
			r.To, err = c.reassign(in, mv.To)
			if err != nil {
				r.Error = err.Error()
			}
		}
		res = append(res, r)
	}
	return res, nil
}

// mayStillRun says why an instance assigned to node may be running there
// without anyone knowing (its agent is silent and the node is not fenced),
// or "": a second copy must not start elsewhere until then.
func (c *Controller) mayStillRun(in controllerapi.Instance) string {
	if in.Node == "" {
		return ""
	}
	if _, fenced := c.fenced(in.Node); fenced {
		return ""
	}
	_, seen, alive := c.agents.get(in.Node, time.Now())
	if alive {
		return ""
	}
	since := "it has not reported since the controller started"
	if !seen.IsZero() {
		since = fmt.Sprintf("its agent is silent for %s", time.Since(seen).Round(time.Second))
	}
	return fmt.Sprintf("instance %s may still be running on %s (%s, so nobody has seen it stop): fence %s first (`fabric node fence %s`, which cuts it off from its disks and restarts its instances elsewhere), or bring its agent back",
		in.Name, in.Node, since, in.Node, in.Node)
}

// drainPlan is the scheduler's plan for moving every instance off node,
// decided over one snapshot; a drain that cannot fit is refused before
// anything moves, with the numbers.
func (c *Controller) drainPlan(node string) (scheduler.Plan, error) {
	c.placeMu.Lock()
	defer c.placeMu.Unlock()
	v, err := c.snapshot()
	if err != nil {
		return scheduler.Plan{}, err
	}
	p, err := scheduler.Drain(v.snap, node)
	if err != nil {
		return p, errorf(ErrUnplaceable, "%v: nothing was moved (add a node, or stop or delete instances first)", err)
	}
	return p, nil
}

// reassign moves a stopped instance to node to, which must fit it.
func (c *Controller) reassign(in controllerapi.Instance, to string) (string, error) {
	if why := c.mayStillRun(in); why != "" {
		return "", errorf(ErrConflict, "%s", why)
	}
	c.placeMu.Lock()
	defer c.placeMu.Unlock()
	v, err := c.snapshot()
	if err != nil {
		return "", err
	}
	why, err := c.fits(v, to, v.instance(in))
	if err != nil {
		return "", err
	}
	if why != "" {
		return "", errorf(ErrUnplaceable, "cannot move %s to %s: %s", in.Name, to, why)
	}
	if err := c.allow(instanceVolume(in.Name), to); err != nil {
		return "", err
	}
	err = c.reg.update(func(tx store.Tx) error {
		cur, err := getInstance(tx, in.Name)
		if err != nil {
			return err
		}
		if cur.Node != in.Node || cur.Migrate != nil || cur.Want == controllerapi.StateRunning {
			return errorf(ErrConflict, "instance %s changed meanwhile; drain again", in.Name)
		}
		cur.Node, cur.Updated = to, time.Now().UTC()
		if err := putJSON(tx, bucketInstances, in.Name, cur); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: cur.Updated, Type: controllerapi.EventInstanceMigrated, Node: to,
			Message: fmt.Sprintf("stopped instance %s reassigned from %s to %s", in.Name, in.Node, to)})
	})
	if err != nil {
		if aerr := c.allow(instanceVolume(in.Name), in.Node); aerr != nil {
			err = errors.Join(err, aerr)
		}
	}
	return to, err
}

// Undrain lets a node take instances again.
func (c *Controller) Undrain(node string) error {
	n, err := c.reg.Node(node)
	if err != nil {
		return err
	}
	return c.reg.update(func(tx store.Tx) error {
		if err := tx.Delete(bucketDrained, n.Name); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: time.Now().UTC(), Type: controllerapi.EventNodeUpdated, Node: n.Name, MAC: n.MAC,
			Message: fmt.Sprintf("%s takes instances again", n.Name)})
	})
}

// settleOrphans finishes migrations no Migrate call is waiting for (the
// controller restarted while one ran): a report from the source settles
// it either way; without one, an instance the destination runs and the
// source does not is recorded there.
func (c *Controller) settleOrphans() {
	ins, err := listJSON[controllerapi.Instance](c.st, bucketInstances)
	if err != nil {
		return
	}
	for _, in := range ins {
		m := in.Migrate
		if m == nil {
			continue
		}
		vol := instanceVolume(in.Name)
		rep, reported := c.agents.report(m.ID)
		dst, onDst := c.agents.instance(m.To, in.Name)
		src, onSrc := c.agents.instance(in.Node, in.Name)
		var to, msg string
		switch {
		case reported && rep.OK, !reported && onDst && dst.State == "running" && !onSrc:
			to, msg = m.To, fmt.Sprintf("migration of %s from %s to %s finished while no request waited for it (controller restart); recorded", in.Name, in.Node, m.To)
		case reported && !rep.OK, !reported && m.Phase == controllerapi.PhasePrepare && onSrc && src.State == "running",
			!reported && time.Since(m.Started) > c.cfg.migrateTimeout() && onSrc && src.State == "running":
			to, msg = in.Node, fmt.Sprintf("migration of %s from %s to %s was abandoned (controller restart); it stays on %s", in.Name, in.Node, m.To, in.Node)
		default:
			continue
		}
		c.settle(in.Name, m.ID, to, vol, msg)
	}
}

// settle records an orphaned migration's outcome and gives the volume to
// the node that runs the instance, unless a Migrate call works on the
// instance or the record changed since settleOrphans read it. The list
// settleOrphans works from may be old by the time it gets here: CI saw a
// pass that read migration 8's record settle it after migration 9 had
// begun, clear 9's record and take the volume from its destination (the
// guest lost its disk once it got there).
func (c *Controller) settle(name string, id uint64, to, vol, msg string) {
	if !c.claim(name) {
		return
	}
	defer c.migrationDone(name)
	c.settleClaimed(name, id, to, vol, msg)
}

// settleClaimed is settle on an instance claimed for it.
func (c *Controller) settleClaimed(name string, id uint64, to, vol, msg string) {
	settled := false
	err := c.reg.update(func(tx store.Tx) error {
		in, err := getInstance(tx, name)
		if err != nil {
			return err
		}
		if in.Migrate == nil || in.Migrate.ID != id {
			return nil
		}
		in.Migrate, in.Node, in.Updated = nil, to, time.Now().UTC()
		settled = true
		return putJSON(tx, bucketInstances, name, in)
	})
	if err != nil {
		c.log.Error("settling a migration", "instance", name, "err", err)
		return
	}
	if !settled {
		return
	}
	if err := c.allow(vol, to); err != nil {
		c.log.Error("settling a migration", "instance", name, "err", err)
	}
	c.log.Warn(msg)
	_ = c.reg.Record(controllerapi.Event{Type: controllerapi.EventInstanceMigrated, Node: to, Message: msg})
}
