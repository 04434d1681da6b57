// Package controllerapi holds the wire types of the controller's JSON HTTP API
// and a client for it. The `fabric` CLI and the node agents import this
// package, never the controller's internals.
package controllerapi

import (
	"fmt"
	"time"
)

// Node roles.
const (
	RoleHWNode  = "hwnode"
	RoleStorage = "storage"
)

// Node is a registered machine.
type Node struct {
	Name string `json:"name"`
	// ID is this registration's identity: a name registered again after
	// removal gets a new one, and certificates carry it.
	ID   string `json:"id,omitempty"`
	MAC  string `json:"mac"`
	Role string `json:"role"`
	IP   string `json:"ip"`
	// RootVolume is the AoE address (e<shelf>.<slot>) of a hardware
	// node's root volume.
	RootVolume string    `json:"root_volume,omitempty"`
	Lease      *Lease    `json:"lease,omitempty"`
	Created    time.Time `json:"created"`
	Updated    time.Time `json:"updated"`
	LastBoot   time.Time `json:"last_boot,omitzero"`
	BootState  string    `json:"boot_state,omitempty"`
	// Status is a hardware node's agent state (capacity, liveness).
	Status *NodeStatus `json:"status,omitempty"`
}

// NodeSummary is a node as `fabric node list` shows it: GET
// /v1/nodes?view=summary sends these, a third of the bytes of full nodes
// (with 10,000 nodes, decoding full nodes took most of the listing).
type NodeSummary struct {
	Name    string    `json:"name"`
	Role    string    `json:"role"`
	MAC     string    `json:"mac"`
	IP      string    `json:"ip"`
	Created time.Time `json:"created"`
	// Agent is a hardware node's agent state.
	Agent *AgentSummary `json:"agent,omitempty"`
}

// AgentSummary is the part of a NodeStatus the node list shows.
type AgentSummary struct {
	Alive       bool      `json:"alive,omitempty"`
	Drained     bool      `json:"drained,omitempty"`
	Fenced      bool      `json:"fenced,omitempty"`
	FenceReason string    `json:"fence_reason,omitempty"`
	Health      string    `json:"health,omitempty"`
	HealthWhy   string    `json:"health_why,omitempty"`
	LastSeen    time.Time `json:"last_seen,omitzero"`
	Instances   int       `json:"instances,omitempty"`
}

// Summary is n as the node list shows it.
func (n Node) Summary() NodeSummary {
	s := NodeSummary{Name: n.Name, Role: n.Role, MAC: n.MAC, IP: n.IP, Created: n.Created}
	if st := n.Status; st != nil {
		s.Agent = &AgentSummary{Alive: st.Alive, Drained: st.Drained, Fenced: st.Fenced, FenceReason: st.FenceReason,
			Health: st.Health, HealthWhy: st.HealthWhy, LastSeen: st.LastSeen, Instances: len(st.Instances)}
	}
	return s
}

// Lease is the DHCP server's record of a node's address.
type Lease struct {
	State   string    `json:"state"`
	Expires time.Time `json:"expires"`
	Updated time.Time `json:"updated"`
}

// RegisterRequest is the body of POST /v1/nodes.
type RegisterRequest struct {
	Name string `json:"name"`
	MAC  string `json:"mac"`
	Role string `json:"role"`
	IP   string `json:"ip,omitempty"` // empty: assigned from the boot subnet
}

// UpdateRequest is the body of PATCH /v1/nodes/{name}. Nil fields stay as
// they are.
type UpdateRequest struct {
	Name *string `json:"name,omitempty"`
	Role *string `json:"role,omitempty"`
	IP   *string `json:"ip,omitempty"`
}

// Event types.
const (
	EventNodeRegistered = "node.registered"
	EventNodeUpdated    = "node.updated"
	EventNodeRemoved    = "node.removed"
	EventUnknownMAC     = "boot.unknown_mac"
	EventNodeBooting    = "boot.dhcp"
	EventBootScript     = "boot.script"
	EventAddrConflict   = "boot.address_conflict"
	EventControllerUp   = "controller.started"
	EventNodeReset      = "node.reset"
	EventTokenIssued    = "node.token_issued"
	EventAPICall        = "api.call"
	EventAdminToken     = "admin.token"
)

// Event is one entry of the append-only event log.
type Event struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Node    string    `json:"node,omitempty"`
	MAC     string    `json:"mac,omitempty"`
	Message string    `json:"message"`
	// Actor is who caused it: an admin token's name, or agent:NODE.
	Actor string `json:"actor,omitempty"`
	// Source is the network address a request came from.
	Source string `json:"source,omitempty"`
}

// EventsResponse is the body of GET /v1/events.
type EventsResponse struct {
	Events []Event `json:"events"`
	// Next is the sequence number to ask for next (since=Next).
	Next uint64 `json:"next"`
}

// ErrorResponse is the body of every non-2xx answer.
type ErrorResponse struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// Error codes, matching the HTTP status classes the API uses.
const (
	CodeInvalid      = "invalid"      // 400
	CodeUnauthorized = "unauthorized" // 401
	CodeForbidden    = "forbidden"    // 403: authenticated, not allowed
	CodeRevoked      = "revoked"      // 403: the node's certificate was revoked (node removed or reset)
	CodeNotFound     = "not_found"    // 404
	CodeConflict     = "conflict"     // 409
	CodeTooLarge     = "too_large"    // 413
	CodeExhausted    = "exhausted"    // 507: no address left
	CodeUnplaceable  = "unplaceable"  // 409: no node can take it
	CodeNodeFailed   = "node_failed"  // 502: a node tried and failed
	CodeInternal     = "internal"     // 500
)

// APIError is an error answered by the controller.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("controller answered HTTP %d", e.Status)
	}
	return e.Message
}

// Admin token kinds.
const (
	TokenAdmin    = "admin"     // every call
	TokenReadOnly = "read-only" // GET only: dashboards, monitoring
)

// AdminToken is a named API credential (its secret is shown once, at
// creation).
type AdminToken struct {
	Name    string    `json:"name"`
	Kind    string    `json:"kind"`
	Created time.Time `json:"created"`
	// CreatedBy is the token that created it.
	CreatedBy string `json:"created_by,omitempty"`
	Secret    string `json:"secret,omitempty"`
}

// CreateTokenRequest is the body of POST /v1/tokens.
type CreateTokenRequest struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
}

// RootTokenName names the admin credential the controller writes to its
// state directory on first start.
const RootTokenName = "root"

// Status is the one-screen summary of `fabric status` (GET /v1/status).
type Status struct {
	Controller ControllerStatus `json:"controller"`
	Nodes      NodeCounts       `json:"nodes"`
	Capacity   CapacitySummary  `json:"capacity"`
	Instances  map[string]int   `json:"instances"` // by state
	// Reserve is the N+1 check over the live, usable nodes.
	Reserve Reserve `json:"reserve"`
	// Pairs are the storage pairs the controller made, with their sync
	// state (as `fabric storage pair list`).
	Pairs []StoragePairInfo `json:"pairs"`
	// Problems are the most recent events that report something wrong
	// (refused enrollments and certificates, failed migrations, instance
	// errors, address conflicts, unknown MACs), newest last.
	Problems []Event `json:"problems"`
}

// Reserve says whether the HA instances of every usable hardware node
// could restart on the others if that node failed (the N+1 reserve).
type Reserve struct {
	Met bool `json:"met"`
	// Short lists the nodes whose failure would leave instances waiting.
	Short []Shortfall `json:"short,omitempty"`
}

// Shortfall is a node whose failure would leave HA instances waiting.
type Shortfall struct {
	Node    string   `json:"node"`
	Waiting []string `json:"waiting"` // in restart order
}

// ControllerStatus describes the controller itself.
type ControllerStatus struct {
	Started   time.Time `json:"started"`
	Events    uint64    `json:"events"` // sequence number of the newest event
	BootIface string    `json:"boot_iface,omitempty"`
	// CAPin is the fabric CA's pin (sha256:HEX), what `fabricd hwnode
	// --ca-pin` and fabric.ca= take.
	CAPin string `json:"ca_pin"`
}

// NodeCounts counts nodes by role and state.
type NodeCounts struct {
	HWNodes     int `json:"hwnodes"`
	Alive       int `json:"alive"`
	Dead        int `json:"dead"`         // enrolled, silent past the agent timeout
	NotReported int `json:"not_reported"` // never reported since the controller started
	Drained     int `json:"drained"`
	Fenced      int `json:"fenced"`
	Storage     int `json:"storage"`
}

// CapacitySummary is what the live hardware nodes offer and what
// instances take of it.
type CapacitySummary struct {
	VCPUs         int `json:"vcpus"`
	VCPUsUsed     int `json:"vcpus_used"`
	MemoryMiB     int `json:"memory_mib"`
	MemoryUsedMiB int `json:"memory_used_mib"`
}
