package controller

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/controller/store"
)

// bucketRoots holds, per hardware node, which volume is its root and what
// a reimage left: node name -> rootRecord. A node without a record has
// root-NAME.
const bucketRoots = "roots"

// rootRecord is a hardware node's root volume and its reimages.
type rootRecord struct {
	Volume string `json:"volume"`
	// Kept are earlier roots, kept (not exported) until the sysadmin
	// confirms the reimage.
	Kept []string `json:"kept,omitempty"`
	// Pending: the node gets a fresh clone of the root image when it next
	// fetches its boot script (it is booting, and its old root is not in
	// use).
	Pending bool `json:"pending,omitempty"`
}

func getRoot(tx store.Tx, node string) (rootRecord, error) {
	return getJSON[rootRecord](tx, bucketRoots, node, func() error { return nil })
}

// loadRoot reads a node's root record in a transaction of its own.
func (c *Controller) loadRoot(node string) (rec rootRecord, err error) {
	err = c.st.View(func(tx store.Tx) error {
		rec, err = getRoot(tx, node)
		return err
	})
	return rec, err
}

func (r rootRecord) volume(node string) string {
	if r.Volume == "" {
		return "root-" + node
	}
	return r.Volume
}

// rootVolume is the name of a hardware node's root volume.
func (c *Controller) rootVolume(node string) string {
	rec, _ := c.loadRoot(node)
	return rec.volume(node)
}

// Reimage asks for a fresh clone of the root image for a hardware node at
// its next PXE boot; with confirm, it deletes the roots earlier reimages
// kept instead.
func (c *Controller) Reimage(name string, confirm bool) (controllerapi.ReimageStatus, error) {
	var st controllerapi.ReimageStatus
	n, err := c.reg.Node(name)
	if err != nil {
		return st, err
	}
	if n.Role != controllerapi.RoleHWNode || n.RootVolume == "" {
		return st, errorf(ErrInvalid, "%s is a %s node without a root volume: only PXE-booted hardware nodes are reimaged", n.Name, n.Role)
	}
	if c.cfg.HWNodeRootImage == "" {
		return st, errorf(ErrInvalid, "the controller has no root image to reimage %s from: start it with --hwnode-root-image", n.Name)
	}
	var kept []string
	err = c.reg.update(func(tx store.Tx) error {
		rec, err := getRoot(tx, n.Name)
		if err != nil {
			return err
		}
		msg := ""
		switch {
		case confirm && rec.Pending:
			return errorf(ErrConflict, "%s has not booted since its reimage was asked for: nothing to confirm yet", n.Name)
		case confirm && len(rec.Kept) == 0:
			return errorf(ErrConflict, "%s keeps no earlier root: nothing to confirm", n.Name)
		case confirm:
			kept, rec.Kept = rec.Kept, nil
			msg = fmt.Sprintf("reimage of %s confirmed: earlier roots %s deleted", n.Name, strings.Join(kept, ", "))
		case rec.Pending:
			return errorf(ErrConflict, "%s is already to be reimaged at its next boot", n.Name)
		default:
			rec.Pending = true
			msg = fmt.Sprintf("%s is to be reimaged: at its next PXE boot its root %s is replaced by a fresh clone of image %s and kept until `fabric node reimage --confirm %s`",
				n.Name, rec.volume(n.Name), c.cfg.HWNodeRootImage, n.Name)
		}
		rec.Volume = rec.volume(n.Name)
		st = controllerapi.ReimageStatus{Node: n.Name, Volume: rec.Volume, Pending: rec.Pending, Kept: rec.Kept, Image: c.cfg.HWNodeRootImage}
		if err := putJSON(tx, bucketRoots, n.Name, rec); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: time.Now().UTC(), Type: controllerapi.EventNodeUpdated, Node: n.Name, MAC: n.MAC, Message: msg})
	})
	if err != nil {
		return st, err
	}
	for _, v := range kept {
		if err := c.vols.Delete(v); err != nil {
			c.log.Warn("deleting an earlier root", "node", n.Name, "volume", v, "err", err)
		}
	}
	return st, nil
}

// bootScript is called when a machine fetches its iPXE script: it is
// booting. A hardware node with a reimage pending gets its fresh root now
// (in the background: iPXE is told to wait and ask again).
func (b *bootBackend) BootScript(mac net.HardwareAddr) string {
	c := b.c
	n, ok, err := c.reg.NodeByMAC(mac)
	if err != nil || !ok || n.Role != controllerapi.RoleHWNode {
		return ""
	}
	if rec, err := c.loadRoot(n.Name); err != nil || !rec.Pending {
		return ""
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.reimaging == nil {
		b.reimaging = map[string]string{}
	}
	if why, busy := b.reimaging[n.Name]; busy {
		return why
	}
	why := fmt.Sprintf("reimaging %s: cloning image %s into a fresh root volume", n.Name, c.cfg.HWNodeRootImage)
	b.reimaging[n.Name] = why
	go func() {
		err := c.reimageNow(n)
		b.mu.Lock()
		delete(b.reimaging, n.Name)
		b.mu.Unlock()
		if err != nil {
			c.log.Error("reimage failed", "node", n.Name, "err", err)
			_ = c.reg.Record(controllerapi.Event{Type: controllerapi.EventNodeUpdated, Node: n.Name, MAC: n.MAC,
				Message: fmt.Sprintf("reimage of %s failed (tried again at its next script fetch): %v", n.Name, err)})
		}
	}()
	return why
}

// reimageNow replaces a booting node's root with a fresh clone of the
// root image, at the same AoE address; the old root stops being exported
// and is kept.
func (c *Controller) reimageNow(n controllerapi.Node) error {
	rec, err := c.loadRoot(n.Name)
	if err != nil {
		return err
	}
	old := rec.volume(n.Name)
	// Volume names are lower case (storagenode's rule).
	fresh := fmt.Sprintf("root-%s-%s", n.Name, time.Now().UTC().Format("20060102-150405"))
	t0 := time.Now()
	if err := c.vols.Export(old, "", nil); err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("unexporting the old root %s: %w", old, err)
	}
	how, err := c.vols.Clone(c.cfg.HWNodeRootImage, fresh, n.RootVolume, []string{n.MAC}, "")
	if err != nil {
		// Nothing half made is left for the storage to retry, and the
		// node boots its old root again rather than nothing.
		_ = c.vols.Delete(fresh)
		_ = c.vols.Export(old, n.RootVolume, []string{n.MAC})
		return fmt.Errorf("cloning image %s: %w", c.cfg.HWNodeRootImage, err)
	}
	return c.reg.update(func(tx store.Tx) error {
		rec, err := getRoot(tx, n.Name)
		if err != nil {
			return err
		}
		if !slices.Contains(rec.Kept, old) {
			rec.Kept = append(rec.Kept, old)
		}
		rec.Volume, rec.Pending = fresh, false
		if err := putJSON(tx, bucketRoots, n.Name, rec); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: time.Now().UTC(), Type: controllerapi.EventNodeUpdated, Node: n.Name, MAC: n.MAC,
			Message: fmt.Sprintf("%s reimaged at boot: root %s at %s (%s from image %s in %.1f s); the old root %s is kept until `fabric node reimage --confirm %s`",
				n.Name, fresh, n.RootVolume, how, c.cfg.HWNodeRootImage, time.Since(t0).Seconds(), old, n.Name)})
	})
}
