package controllerapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// StorageReport is what a storage node tells the controller every few
// seconds (POST /v1/storage/report, with its node certificate): its
// capacity, its volumes and, in a pair, the pair's state.
type StorageReport struct {
	Node string `json:"node,omitempty"` // must be the certificate's
	// Generation is the desired-state generation the node has applied
	// (and made durable).
	Generation uint64 `json:"generation"`
	// Fenced is the fence the node applies now.
	Fenced []string `json:"fenced"`
	// Initiators maps each initiator MAC that sent an ATA command in the
	// last minute to when it last did: the storage plane's witness that a
	// hardware node is alive.
	Initiators map[string]time.Time `json:"initiators"`
	// Heard maps each initiator MAC that sent any AoE request (discovery
	// included) in the last minute to when it last did: the hardware
	// nodes that reach this storage node, for placement.
	Heard      map[string]time.Time `json:"heard,omitempty"`
	Capacity   StorageCapacity      `json:"capacity"`
	Interfaces []StorageIface       `json:"interfaces"`
	Volumes    []StorageVolume      `json:"volumes"`
	// Pending lists the volumes the controller asked for that are not
	// there yet, and why.
	Pending []StoragePending `json:"pending,omitempty"`
	Pair    *StoragePair     `json:"pair,omitempty"`
	// Drained: the node has left its pair on the controller's word.
	Drained bool `json:"drained,omitempty"`
	// Replication is the address the node takes a pair peer's
	// replication connection on (--replication-listen); "": it cannot be
	// paired by the controller.
	Replication string `json:"replication,omitempty"`
}

// StorageDesired is the controller's answer to a report: what the node
// must apply.
type StorageDesired struct {
	Generation uint64 `json:"generation"`
	// Fence lists initiator MACs whose frames the node must ignore on
	// every volume: failed hardware nodes. The controller restarts a
	// failed node's instances only once every live storage node reports
	// this generation applied.
	Fence []string `json:"fence"`
	// ManagesVolumes: the controller decides which volumes this node
	// holds. Volumes lists them; one the node made for the controller
	// and no longer listed is deleted. Volumes made by hand on the node
	// are left alone.
	ManagesVolumes bool                `json:"manages_volumes,omitempty"`
	Volumes        []StorageVolumeSpec `json:"volumes,omitempty"`
	// Drain: leave the pair in a planned way (hand write ownership to
	// the peer, stop serving) and stay out until the controller says
	// otherwise; then come back through a resync.
	Drain bool `json:"drain,omitempty"`
	// Shutdown, with Drain: once it has left its pair, the node's daemon
	// exits (fabric storage shutdown). An identifier: a node obeys each
	// one once, so it can be started again.
	Shutdown string `json:"shutdown,omitempty"`
	// Pair makes the node one of a storage pair (fabric storage pair
	// create): every volume it exports is replicated to the peer, and the
	// controller is the pair's witness. A pair, once made, stays.
	Pair *StoragePairSpec `json:"pair,omitempty"`
}

// StoragePairSpec is a storage node's pair, as the controller made it.
type StoragePairSpec struct {
	Name     string `json:"name"`
	Peer     string `json:"peer"`      // the other node's registered name
	PeerAddr string `json:"peer_addr"` // its replication address, host:port
}

// StorageVolumeSpec is a volume the controller wants a storage node to
// hold, exported at Addr to the MACs listed.
type StorageVolumeSpec struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
	// Image: the volume holds image Image, fetched from the controller
	// (GET /v1/storage/images/NAME) before anything uses it.
	Image string `json:"image,omitempty"`
	// Clone: the volume starts as a copy of volume Clone of the same
	// node (made once that one is there).
	Clone string   `json:"clone,omitempty"`
	Addr  string   `json:"addr,omitempty"` // e<shelf>.<slot>; "" = not exported
	MACs  []string `json:"macs,omitempty"` // allow list
	// IOPS and BPS cap the volume at the target (0: no cap).
	IOPS int64 `json:"iops_limit,omitempty"`
	BPS  int64 `json:"bytes_per_second_limit,omitempty"`
}

// StoragePending is a volume the controller listed that the node does not
// hold yet: an image being fetched, a clone waiting for its source, or a
// step that failed (retried at the next report).
type StoragePending struct {
	Name    string  `json:"name"`
	Percent float64 `json:"percent,omitempty"` // of an image fetch
	Why     string  `json:"why"`
}

// StorageCapacity is the pool's file system.
type StorageCapacity struct {
	TotalBytes int64 `json:"total_bytes"`
	FreeBytes  int64 `json:"free_bytes"`
}

// StorageIface is an interface the node serves AoE on.
type StorageIface struct {
	Name string `json:"name"`
	MAC  string `json:"mac"`
}

// StorageVolume is one volume of a storage node's pool.
type StorageVolume struct {
	Name     string   `json:"name"`
	Addr     string   `json:"addr,omitempty"` // e<shelf>.<slot>; empty: not exported
	Size     int64    `json:"size"`
	ReadOnly bool     `json:"read_only,omitempty"`
	Sync     bool     `json:"sync,omitempty"`
	MACs     []string `json:"macs,omitempty"` // allow list
	IOPS     int64    `json:"iops_limit,omitempty"`
	BPS      int64    `json:"bytes_per_second_limit,omitempty"`
	// Problem says why the node does not serve an exported volume.
	Problem string `json:"problem,omitempty"`
	// In a pair: dirty bytes the peer lacks, and resync progress.
	DirtyBytes    int64    `json:"dirty_bytes,omitempty"`
	ResyncPercent *float64 `json:"resync_percent,omitempty"`
}

// StoragePair is a pair node's state.
type StoragePair struct {
	Pair          string   `json:"pair"`
	Peer          string   `json:"peer"`
	Role          string   `json:"role"` // owner, follower, none
	Epoch         uint64   `json:"epoch"`
	PeerConnected bool     `json:"peer_connected"`
	State         string   `json:"state"` // in sync, resyncing, alone, silent...
	Serving       bool     `json:"serving"`
	TakenOver     []string `json:"taken_over_macs,omitempty"`
	Waiting       string   `json:"waiting,omitempty"`
	LastEvent     string   `json:"last_event,omitempty"`
}

// StorageNode is a registered storage node and what it last reported,
// for `fabric storage list/show`.
type StorageNode struct {
	Name     string         `json:"name"`
	MAC      string         `json:"mac"`
	IP       string         `json:"ip"`
	Alive    bool           `json:"alive"`
	LastSeen time.Time      `json:"last_seen,omitzero"`
	Report   *StorageReport `json:"report,omitempty"`
}

// StorageReport sends a storage node's report (agent client) and
// returns what the node must apply.
// With wait > 0 the controller holds the answer up to wait until the
// node's desired state differs from r.Generation.
func (c *Client) StorageReport(ctx context.Context, r StorageReport, wait time.Duration) (StorageDesired, error) {
	var d StorageDesired
	p := "/v1/storage/report"
	if wait > 0 {
		p += "?wait=" + url.QueryEscape(wait.String())
	}
	err := c.do(ctx, http.MethodPost, p, r, &d)
	return d, err
}

// StorageImage fetches image name's content for a storage node (its
// certificate authorises it); the caller closes the body.
func (c *Client) StorageImage(ctx context.Context, name string) (io.ReadCloser, int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+"/v1/storage/images/"+url.PathEscape(name), nil)
	if err != nil {
		return nil, 0, err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("cannot reach the controller at %s: %w", c.BaseURL, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, 0, respError(resp)
	}
	return resp.Body, resp.ContentLength, nil
}

// StorageNodes lists the storage nodes.
func (c *Client) StorageNodes(ctx context.Context) ([]StorageNode, error) {
	var out []StorageNode
	err := c.do(ctx, http.MethodGet, "/v1/storage", nil, &out)
	return out, err
}

// StorageNode returns one storage node.
func (c *Client) StorageNode(ctx context.Context, name string) (StorageNode, error) {
	var out StorageNode
	err := c.do(ctx, http.MethodGet, "/v1/storage/"+url.PathEscape(name), nil, &out)
	return out, err
}

// Volume is one of the controller's volumes: where it lives and its state.
type Volume struct {
	Name string `json:"name"`
	// Kind: image (a template), instance (a guest's disk) or root (a
	// hardware node's root).
	Kind    string   `json:"kind"`
	Storage string   `json:"storage"` // the storage node holding it ("local pool": beside the controller)
	Addr    string   `json:"addr,omitempty"`
	Size    int64    `json:"size"`
	MACs    []string `json:"macs,omitempty"` // allow list
	// State: "served", "not there yet: WHY", "storage node down", or
	// "address, allow list or caps not applied yet".
	State string `json:"state"`
}

// Volumes lists the controller's volumes.
func (c *Client) Volumes(ctx context.Context) ([]Volume, error) {
	var out []Volume
	err := c.do(ctx, http.MethodGet, "/v1/volumes", nil, &out)
	return out, err
}

// DrainStorage hands a pair node's write ownership to its peer and has it
// stop serving; it returns once the peer serves alone.
func (c *Client) DrainStorage(ctx context.Context, name string) (StorageNode, error) {
	var n StorageNode
	err := c.do(ctx, http.MethodPost, "/v1/storage/"+url.PathEscape(name)+"/drain", nil, &n)
	return n, err
}

// ShutdownStorage drains a pair node and has its daemon exit.
func (c *Client) ShutdownStorage(ctx context.Context, name string) (StorageNode, error) {
	var n StorageNode
	err := c.do(ctx, http.MethodPost, "/v1/storage/"+url.PathEscape(name)+"/shutdown", nil, &n)
	return n, err
}

// UndrainStorage brings a drained pair node back; with wait > 0 the
// controller answers once the pair is in sync again (or wait has passed).
func (c *Client) UndrainStorage(ctx context.Context, name string, wait time.Duration) (StorageNode, error) {
	var n StorageNode
	p := "/v1/storage/" + url.PathEscape(name) + "/undrain"
	if wait > 0 {
		p += "?wait=" + url.QueryEscape(wait.String())
	}
	err := c.do(ctx, http.MethodPost, p, nil, &n)
	return n, err
}

// PairRequest asks the controller to make two storage nodes a pair
// (POST /v1/storage/pairs).
type PairRequest struct {
	Name  string   `json:"name,omitempty"` // default: NODE1-NODE2
	Nodes []string `json:"nodes"`          // exactly two storage nodes
}

// StoragePairInfo is a pair the controller made, with its state from the
// two nodes' reports.
type StoragePairInfo struct {
	Name    string    `json:"name"`
	Nodes   []string  `json:"nodes"`
	Created time.Time `json:"created"`
	// Owner is the node that owns writes ("" while none does).
	Owner string `json:"owner"`
	// State is "in sync", "degraded: NODE is down", "resyncing NODE (...)",
	// "degraded: NODE does not serve (...)", "no owner yet" or "down".
	State string `json:"state"`
	// Members is each node's view, by name ("down" when it does not report).
	Members map[string]string `json:"members"`
	// FreeBytes is what a new volume may use: the smaller free space of
	// its live nodes.
	FreeBytes int64 `json:"free_bytes"`
}

// CreatePair makes two storage nodes a pair; the controller answers once
// the pair has formed (one owner, the other in sync).
func (c *Client) CreatePair(ctx context.Context, req PairRequest) (StoragePairInfo, error) {
	var p StoragePairInfo
	err := c.do(ctx, http.MethodPost, "/v1/storage/pairs", req, &p)
	return p, err
}

// Pairs lists the pairs the controller made.
func (c *Client) Pairs(ctx context.Context) ([]StoragePairInfo, error) {
	var ps []StoragePairInfo
	err := c.do(ctx, http.MethodGet, "/v1/storage/pairs", nil, &ps)
	return ps, err
}

// VolumeDetail is one controller volume with each of its copies, for
// `fabric volume show`.
type VolumeDetail struct {
	Name string   `json:"name"`
	Kind string   `json:"kind"`
	Addr string   `json:"addr,omitempty"`
	Size int64    `json:"size"`
	MACs []string `json:"macs,omitempty"` // allow list
	IOPS int64    `json:"iops_limit,omitempty"`
	BPS  int64    `json:"bytes_per_second_limit,omitempty"`
	// Pair is the storage pair holding it ("" on a standalone node).
	Pair   string       `json:"pair,omitempty"`
	Copies []VolumeCopy `json:"copies"`
}

// VolumeCopy is a volume on one storage node.
type VolumeCopy struct {
	Storage string `json:"storage"`
	// Paths are the MACs initiators reach this copy through (the node's
	// AoE ports, and in a pair any peer MAC it answers for now).
	Paths []string `json:"paths,omitempty"`
	// State: served, not there yet, storage node down, ...
	State string `json:"state"`
	// In a pair: the node's role and sync state, and what its peer lacks.
	Role          string   `json:"role,omitempty"`
	Sync          string   `json:"sync,omitempty"`
	DirtyBytes    int64    `json:"dirty_bytes,omitempty"`
	ResyncPercent *float64 `json:"resync_percent,omitempty"`
}

// Volume shows one volume.
func (c *Client) Volume(ctx context.Context, name string) (VolumeDetail, error) {
	var v VolumeDetail
	err := c.do(ctx, http.MethodGet, "/v1/volumes/"+url.PathEscape(name), nil, &v)
	return v, err
}

// ResizeRequest grows a volume (POST /v1/volumes/{name}/resize).
type ResizeRequest struct {
	Size int64 `json:"size"` // bytes; never less than now
}

// ResizeVolume grows a volume on every copy; the answer is the volume
// once every live storage node holds it grown.
func (c *Client) ResizeVolume(ctx context.Context, name string, size int64) (VolumeDetail, error) {
	var v VolumeDetail
	err := c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(name)+"/resize", ResizeRequest{Size: size}, &v)
	return v, err
}
