package controllerapi

import "time"

// Instance states as the controller reports them.
const (
	StateRunning   = "running"
	StateStopped   = "stopped"
	StateMigrating = "migrating"
)

// Image is an instance template: a volume every instance disk is cloned from.
type Image struct {
	Name    string    `json:"name"`
	Volume  string    `json:"volume"` // name in the storage pool
	Size    int64     `json:"size"`
	Created time.Time `json:"created"`
}

// Instance is a guest.
type Instance struct {
	Name      string `json:"name"`
	UUID      string `json:"uuid"`
	Image     string `json:"image"`
	VCPUs     int    `json:"vcpus"`
	MemoryMiB int    `json:"memory_mib"`
	MAC       string `json:"mac"`
	IP        string `json:"ip"`
	// Volume is the AoE address (e<shelf>.<slot>) of the instance's disk.
	Volume string `json:"volume"`
	Node   string `json:"node"`
	// Want is the state asked for: running or stopped.
	Want string `json:"want"`
	// State is what the node last reported (running, shutoff, ...), or
	// "migrating".
	State    string     `json:"state,omitempty"`
	Error    string     `json:"error,omitempty"`
	Migrate  *Migration `json:"migration,omitempty"`
	Group    string     `json:"group,omitempty"`
	Priority int        `json:"priority,omitempty"`
	NoHA     bool       `json:"no_ha,omitempty"`
	// IOPS and BPS cap the disk at the storage node (0: no cap).
	IOPS int64 `json:"iops,omitempty"`
	BPS  int64 `json:"bytes_per_second,omitempty"`
	// Restarts is the instance's restart history: each time its node
	// failed and it was started on another.
	Restarts []Restart `json:"restarts,omitempty"`
	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
}

// Restart is one restart of an instance on another node.
type Restart struct {
	At   time.Time `json:"at"`
	From string    `json:"from"`
	To   string    `json:"to"`
	Why  string    `json:"why"`
}

// Migration is an instance's migration in progress.
type Migration struct {
	ID      uint64    `json:"id"`
	To      string    `json:"to"`
	ToURI   string    `json:"to_uri"`
	Phase   string    `json:"phase"` // prepare, run
	Started time.Time `json:"started"`
}

// Migration phases.
const (
	PhasePrepare = "prepare" // the destination attaches the disk
	PhaseRun     = "run"     // the source migrates
)

// CreateInstanceRequest is the body of POST /v1/instances.
type CreateInstanceRequest struct {
	Name      string `json:"name"`
	Image     string `json:"image"`
	VCPUs     int    `json:"vcpus"`
	MemoryMiB int    `json:"memory_mib"`
	Node      string `json:"node,omitempty"` // empty: the scheduler picks
	// Storage puts the disk on this storage pair or standalone storage
	// node; empty: the pair with the most free space.
	Storage string `json:"storage,omitempty"`
	Start   bool   `json:"start,omitempty"`
	// Group is an anti-affinity group: no two members on one node while
	// another node has room.
	Group string `json:"group,omitempty"`
	// Priority orders restarts after a node failure (higher first).
	Priority int `json:"priority,omitempty"`
	// NoHA: not restarted elsewhere when its node fails.
	NoHA bool `json:"no_ha,omitempty"`
	// IOPS and BPS cap the disk at the storage node (0: no cap).
	IOPS int64 `json:"iops,omitempty"`
	BPS  int64 `json:"bytes_per_second,omitempty"`
}

// LimitRequest is the body of POST /v1/instances/{name}/limit: the disk's
// new I/O caps (0 removes one).
type LimitRequest struct {
	IOPS int64 `json:"iops"`
	BPS  int64 `json:"bytes_per_second"`
}

// MigrateRequest is the body of POST /v1/instances/{name}/migrate.
type MigrateRequest struct {
	To string `json:"to,omitempty"` // empty: the scheduler picks
}

// MigrateResult is the answer to a migration.
type MigrateResult struct {
	Instance   string  `json:"instance"`
	From       string  `json:"from"`
	To         string  `json:"to"`
	WallMS     float64 `json:"wall_ms"`
	DowntimeMS float64 `json:"downtime_ms"` // as libvirt reports it
}

// Capacity is what a hardware node offers.
type Capacity struct {
	VCPUs      int    `json:"vcpus"`
	MemoryMiB  int    `json:"memory_mib"`
	Hypervisor string `json:"hypervisor"` // kvm, qemu or xen (the libvirt domain type)
	// Disk is how guest disks reach AoE volumes: "kernel" (the aoe
	// driver's /dev/etherd) or "nbd" (the agent's own initiator behind
	// an NBD export on loopback).
	Disk string `json:"disk"`
	// AoEMAC is the address the node's AoE traffic comes from, for the
	// volumes' allow lists ("" = the registered MAC).
	AoEMAC string `json:"aoe_mac,omitempty"`
	// MigrationURI is the URI peers' libvirtd use to reach this node's.
	MigrationURI string `json:"migration_uri"`
	Libvirt      string `json:"libvirt"` // libvirt version
	// Emulator is the hypervisor's version as libvirt reports it (QEMU's
	// for kvm and qemu), "" if unknown.
	Emulator string `json:"emulator,omitempty"`
	// Warning is what the agent found wrong with its hypervisor, for the
	// sysadmin ("" when nothing).
	Warning string `json:"warning,omitempty"`
	// HostUUID is libvirt's host UUID: nodes cloned from one image must
	// each have their own (libvirt refuses a migration between two hosts
	// with the same).
	HostUUID string `json:"host_uuid,omitempty"`
}

// InstanceStatus is one instance as an agent sees it.
type InstanceStatus struct {
	Name  string `json:"name"`
	State string `json:"state"` // running, shutoff, paused, absent, ...
	// Disk is where QEMU finds the disk (an nbd:// URL or a device path);
	// empty until attached.
	Disk  string `json:"disk,omitempty"`
	Error string `json:"error,omitempty"`
}

// MigrationReport is the source agent's account of a finished migration.
type MigrationReport struct {
	ID         uint64  `json:"id"`
	Instance   string  `json:"instance"`
	OK         bool    `json:"ok"`
	Error      string  `json:"error,omitempty"`
	WallMS     float64 `json:"wall_ms"`
	DowntimeMS float64 `json:"downtime_ms"`
}

// Heartbeat is the body of POST /v1/agent/heartbeat.
type Heartbeat struct {
	// Node is the name the agent runs as; it must be its certificate's.
	Node string `json:"node,omitempty"`
	// Generation is the desired-state generation the agent last applied;
	// the controller holds the request (up to wait) until it changes.
	Generation uint64            `json:"generation"`
	Capacity   Capacity          `json:"capacity"`
	Instances  []InstanceStatus  `json:"instances"`
	Migrations []MigrationReport `json:"migrations,omitempty"`
	// LibvirtError says why the node's libvirtd does not answer ("" when
	// it does).
	LibvirtError string `json:"libvirt_error,omitempty"`
	// Consoles answers the console requests of the last desired state.
	Consoles []ConsoleTail `json:"consoles,omitempty"`
}

// InstanceSpec is an instance as the controller wants it on a node.
type InstanceSpec struct {
	Name      string `json:"name"`
	UUID      string `json:"uuid"`
	VCPUs     int    `json:"vcpus"`
	MemoryMiB int    `json:"memory_mib"`
	MAC       string `json:"mac"`
	IP        string `json:"ip"` // CIDR
	Gateway   string `json:"gateway,omitempty"`
	Volume    string `json:"volume"`
	Running   bool   `json:"running"`
	// Incoming: this node is the destination of a migration; attach the
	// disk, define nothing.
	Incoming bool `json:"incoming,omitempty"`
	// Migrate: this node is the source; migrate to the given node.
	Migrate *Migration `json:"migrate,omitempty"`
}

// DesiredState is the answer to a heartbeat.
type DesiredState struct {
	// Node is the node's current name (it changes with `fabric node
	// update --name`); the agent adopts it.
	Node       string         `json:"node,omitempty"`
	Generation uint64         `json:"generation"`
	Instances  []InstanceSpec `json:"instances"`
	// Acked lists migration reports the controller has recorded; the
	// agent stops sending them.
	Acked []uint64 `json:"acked,omitempty"`
	// Consoles asks for the end of instances' serial console logs, sent
	// once per request with the next heartbeat.
	Consoles []ConsoleRequest `json:"consoles,omitempty"`
}

// ConsoleRequest asks a node's agent for part of an instance's serial
// console log (`fabric instance console`).
type ConsoleRequest struct {
	ID       uint64 `json:"id"`
	Instance string `json:"instance"`
	// From is the log offset to send from; -1 (or past the end: the log
	// began again) sends its last Max bytes.
	From int64 `json:"from"`
	Max  int   `json:"max"`
}

// ConsoleTail is what an agent sends for a ConsoleRequest.
type ConsoleTail struct {
	ID       uint64 `json:"id"` // the request's
	Instance string `json:"instance"`
	Node     string `json:"node"`
	Offset   int64  `json:"offset"` // where Data starts in the log
	Size     int64  `json:"size"`   // the log's length
	Data     []byte `json:"data"`
	// Error says why there is no log (the agent keeps none without
	// --serial-dir; the instance has not run on the node).
	Error string `json:"error,omitempty"`
}

// EnrollRequest is the body of POST /v1/agent/enroll: a one-time token
// and a PKCS #10 certificate request for the agent's own key.
type EnrollRequest struct {
	Node  string `json:"node"`
	Token string `json:"token"`
	CSR   []byte `json:"csr"` // DER
}

// RenewRequest is the body of POST /v1/agent/renew, made with the agent's
// current certificate: a request for a fresh key.
type RenewRequest struct {
	CSR []byte `json:"csr"` // DER
}

// EnrollResponse carries the node's certificate.
type EnrollResponse struct {
	Node        string    `json:"node"`        // the name the certificate is issued to
	Certificate string    `json:"certificate"` // PEM: the node certificate, then the fabric CA
	NotAfter    time.Time `json:"not_after"`
}

// DrainResult is what `fabric node drain` did with one instance.
type DrainResult struct {
	Instance   string  `json:"instance"`
	To         string  `json:"to,omitempty"`
	Live       bool    `json:"live"` // live-migrated (else a stopped instance reassigned)
	DowntimeMS float64 `json:"downtime_ms,omitempty"`
	Error      string  `json:"error,omitempty"`
}

// NodeStatus is a hardware node's live state, part of `fabric node show`.
type NodeStatus struct {
	Alive   bool `json:"alive"`
	Drained bool `json:"drained,omitempty"`
	// Fenced: the node was declared failed and cut off from its disks
	// (FenceReason says why); it takes nothing until unfenced.
	Fenced      bool   `json:"fenced,omitempty"`
	FenceReason string `json:"fence_reason,omitempty"`
	// Health is the failure detector's verdict on a node whose agent is
	// silent: "agent lost" (a witness, the storage or ping, still hears
	// the node: not fenced) or "failed" (none does: being fenced);
	// HealthWhy says what the witnesses said.
	Health    string    `json:"health,omitempty"`
	HealthWhy string    `json:"health_why,omitempty"`
	LastSeen  time.Time `json:"last_seen,omitzero"`
	Capacity  Capacity  `json:"capacity"`
	UsedVCPUs int       `json:"used_vcpus"`
	UsedMiB   int       `json:"used_memory_mib"`
	Instances []string  `json:"instances"`
	// CertExpires is when the agent's current certificate expires
	// (agents renew at half its lifetime).
	CertExpires time.Time `json:"cert_expires,omitzero"`
}

// Event types of instances and agents.
const (
	EventAgentEnrolled     = "agent.enrolled"
	EventEnrollRefused     = "agent.enroll_refused"
	EventAgentRefused      = "agent.refused" // a call with a revoked or foreign certificate
	EventAgentLost         = "agent.lost"
	EventImageImported     = "image.imported"
	EventInstanceCreated   = "instance.created"
	EventInstanceStarted   = "instance.started"
	EventInstanceStopped   = "instance.stopped"
	EventInstanceDeleted   = "instance.deleted"
	EventInstanceMigrated  = "instance.migrated"
	EventMigrationFailed   = "instance.migration_failed"
	EventInstanceNodeError = "instance.error"
	EventInstanceRestarted = "instance.restarted" // elsewhere, after its node failed
	EventInstanceLimited   = "instance.limited"   // its disk's I/O caps changed
	EventNodeFenced        = "node.fenced"
	EventStorageDown       = "storage.down" // a storage node stopped reporting
	EventStorageUp         = "storage.up"   // it reports again
	EventPairState         = "storage.pair" // a storage pair changed state (in sync, degraded, ...)
	EventVolumeResized     = "volume.resized"
)
