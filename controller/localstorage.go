package controller

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/fabric-project/fabric/controller/ca"
	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/storagenode"
)

// LocalStorage is a storage node run inside the controller's process: a
// one-machine install comes up with one command. It is a member like any
// other. It is registered (role storage, the MAC of its first interface),
// enrolls over the API with a token the controller mints for it, reports,
// and takes its volumes from its desired state; it can be drained, and
// paired with a storage node elsewhere (ReplicationListen). The
// controller's own code never opens its pool.
type LocalStorage struct {
	Name       string   // registered name; default DefaultLocalStorageName
	DataDir    string   // the volume pool
	Interfaces []string // serve AoE on these
	// ReplicationListen: where it takes a pair peer's replication
	// connection (fabric storage pair create); "": it cannot be paired.
	ReplicationListen string
}

// DefaultLocalStorageName is the name of the storage node run inside the
// controller's process when none is given.
const DefaultLocalStorageName = "sn0"

// runLocalStorage registers the storage node beside the controller if it
// is not yet, and serves it until ctx ends; it reports to the controller
// at api.
func (c *Controller) runLocalStorage(ctx context.Context, api string) error {
	ls := *c.cfg.LocalStorage
	if ls.Name == "" {
		ls.Name = DefaultLocalStorageName
	}
	if len(ls.Interfaces) == 0 || ls.DataDir == "" {
		return errors.New("controller: the storage node beside the controller needs an AoE interface and a data directory (--storage-iface, --storage-dir)")
	}
	ifc, err := net.InterfaceByName(ls.Interfaces[0])
	if err != nil {
		return fmt.Errorf("controller: storage interface: %w", err)
	}
	switch n, err := c.reg.Node(ls.Name); {
	case errors.Is(err, ErrNotFound):
		if _, err := c.reg.RegisterAs(controllerapi.RegisterRequest{Name: ls.Name, MAC: ifc.HardwareAddr.String(), Role: controllerapi.RoleStorage},
			"controller", "the storage node beside the controller (--storage-dir)"); err != nil {
			return fmt.Errorf("controller: registering the storage node beside it as %s: %w", ls.Name, err)
		}
	case err != nil:
		return err
	case n.Role != controllerapi.RoleStorage:
		return fmt.Errorf("controller: %s, the name of the storage node beside the controller (--storage-name), is registered as a %s", ls.Name, n.Role)
	}
	pool, err := storagenode.OpenPool(ls.DataDir)
	if err != nil {
		return err
	}
	var tok string
	id, err := controllerapi.LoadIdentity(filepath.Join(pool.Dir(), storagenode.IdentityFile))
	if err != nil {
		return err
	}
	if !id.Enrolled() || time.Now().After(id.Leaf().NotAfter) {
		if tok, err = c.reg.IssueToken(ls.Name, "controller", 10*time.Minute); err != nil {
			return err
		}
	}
	err = storagenode.Run(ctx, storagenode.Config{
		Interfaces: ls.Interfaces,
		DataDir:    ls.DataDir,
		Logger:     c.log.With("part", "storage", "node", ls.Name),
		Member: &storagenode.MemberConfig{Controller: api, CAFile: filepath.Join(c.cfg.StateDir, CADir, ca.CertFile),
			Node: ls.Name, Token: tok, ReplicationListen: ls.ReplicationListen},
	})
	if err != nil {
		return fmt.Errorf("controller: the storage node beside it: %w", err)
	}
	return nil
}
