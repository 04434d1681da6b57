package controller

import (
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/fabric-project/fabric/controller/ca"
	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/controller/store"
)

// Errors of authentication; the API maps them to 401 and 403.
var (
	ErrUnauthorized = errors.New("unauthorized")
	ErrForbidden    = errors.New("forbidden")
	ErrRevoked      = errors.New("revoked")
)

// Buckets of the trust state.
const (
	// bucketTokens maps a node name to its outstanding one-time
	// enrollment tokens ([]enrollToken JSON, hashed).
	bucketTokens = "enrolltokens"
	// bucketCerts maps a node's registration ID to its certRecord: the
	// serials its agent may authenticate with. No record: not enrolled,
	// or revoked.
	bucketCerts = "nodecerts"
)

// Defaults of the trust settings.
const (
	DefaultCertTTL        = 12 * time.Hour
	DefaultBootWindow     = time.Minute
	DefaultBootTokenTTL   = 15 * time.Minute
	DefaultManualTokenTTL = time.Hour
)

// Token kinds: one a sysadmin asked for, one served in a boot script.
const (
	tokenManual = "manual"
	tokenBoot   = "boot"
)

// enrollToken is an outstanding enrollment token, stored hashed.
type enrollToken struct {
	Hash    string    `json:"hash"`
	Kind    string    `json:"kind"`
	Expires time.Time `json:"expires"`
}

// certRecord is what the controller accepts from a node's agent.
type certRecord struct {
	Node     string    `json:"node"`    // current name (follows renames)
	Serials  []string  `json:"serials"` // newest first; at most two (a renewal's answer may be lost)
	NotAfter time.Time `json:"not_after"`
}

// enrollFacts is what the enrollment decision looks at.
type enrollFacts struct {
	Known        bool // the node is registered
	Role         string
	TokenMatched bool // the token is one of the node's outstanding ones
	TokenExpired bool // ... and it has expired
	Enrolled     bool // the node holds an unrevoked certificate
	// LastSeen is the agent's last call (zero: none since the controller
	// started at Started).
	LastSeen, Started, Now time.Time
	AgentTimeout           time.Duration
}

// decideEnroll is the enrollment policy. A token is checked first, so that
// a caller without one learns nothing about the node; a node whose agent
// is alive (or may be: the controller restarted less than a timeout ago
// and has not heard from it yet) is not enrolled a second time, so a
// stolen token cannot take over a running node; the admin's `fabric node
// reset` revokes the live certificate to allow it.
func decideEnroll(f enrollFacts) error {
	switch {
	case !f.Known || !f.TokenMatched:
		return errorf(ErrUnauthorized, "enrollment refused: unknown node, or a wrong or already used token; get a new one with `fabric node token NAME`")
	case f.TokenExpired:
		return errorf(ErrUnauthorized, "enrollment refused: the token has expired; get a new one with `fabric node token NAME`")
	case f.Role != controllerapi.RoleHWNode && f.Role != controllerapi.RoleStorage:
		return errorf(ErrInvalid, "enrollment refused: role %s runs no agent", f.Role)
	}
	if !f.Enrolled {
		return nil
	}
	if !f.LastSeen.IsZero() && f.Now.Sub(f.LastSeen) < f.AgentTimeout {
		return errorf(ErrConflict, "enrollment refused: this node's enrolled agent is alive (last call %s ago); if the node was reinstalled, run `fabric node reset NAME` first",
			max(0, f.Now.Sub(f.LastSeen)).Round(time.Millisecond))
	}
	if f.LastSeen.IsZero() && f.Now.Sub(f.Started) < f.AgentTimeout {
		return errorf(ErrConflict, "enrollment refused: the controller restarted %s ago and this node's enrolled agent may still be alive; retry in %s, or run `fabric node reset NAME`",
			f.Now.Sub(f.Started).Round(time.Millisecond), (f.AgentTimeout - f.Now.Sub(f.Started)).Round(time.Second))
	}
	return nil
}

// bootWindow is opened for a MAC when DHCP binds its address.
type bootWindow struct {
	IP     netip.Addr
	Opened time.Time
	Served bool // a token was already served in this window
}

// decideBootToken says whether a boot script fetched from from may carry
// a new enrollment token: only to the address DHCP just bound for that
// MAC, within the window, once.
func decideBootToken(w bootWindow, open bool, from netip.Addr, now time.Time, window time.Duration) (bool, string) {
	switch {
	case !open:
		return false, "no DHCP exchange opened a boot window for this MAC"
	case now.Sub(w.Opened) > window:
		return false, fmt.Sprintf("the boot window opened by DHCP %s ago has closed (%s)", now.Sub(w.Opened).Round(time.Second), window)
	case from != w.IP:
		return false, fmt.Sprintf("fetched from %s, not from %s, the address DHCP gave this MAC", from, w.IP)
	case w.Served:
		return false, "a token was already served in this boot window"
	}
	return true, ""
}

// issueToken mints an enrollment token for a node, replacing its
// outstanding token of the same kind.
func (r *Registry) issueToken(tx store.Tx, node, kind string, ttl time.Duration) (string, error) {
	tok := newToken()
	toks, err := getJSON[[]enrollToken](tx, bucketTokens, node, func() error { return nil })
	if err != nil {
		toks = nil // an unreadable record (an older format) is replaced
	}
	now := r.now()
	toks = slices.DeleteFunc(toks, func(t enrollToken) bool { return t.Kind == kind || now.After(t.Expires) })
	toks = append(toks, enrollToken{Hash: hashCred(tok), Kind: kind, Expires: now.Add(ttl).UTC()})
	return tok, putJSON(tx, bucketTokens, node, toks)
}

// IssueToken mints a one-time enrollment token for a sysadmin starting an
// agent by hand.
func (r *Registry) IssueToken(nameOrMAC, actor string, ttl time.Duration) (string, error) {
	var tok string
	err := r.update(func(tx store.Tx) error {
		n, err := resolve(tx, nameOrMAC)
		if err != nil {
			return err
		}
		if tok, err = r.issueToken(tx, n.Name, tokenManual, ttl); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: r.now().UTC(), Type: controllerapi.EventTokenIssued, Node: n.Name, MAC: n.MAC, Actor: actor,
			Message: fmt.Sprintf("enrollment token for %s issued, valid %s, single use", n.Name, ttl)})
	})
	return tok, err
}

// takeToken finds token among a node's outstanding ones and removes it:
// a token is spent by any attempt that presents it, granted or not.
func takeToken(tx store.Tx, node, token string, now time.Time) (matched, expired bool, err error) {
	toks, err := getJSON[[]enrollToken](tx, bucketTokens, node, func() error { return nil })
	if err != nil {
		return false, false, nil
	}
	h := hashCred(token)
	for i, t := range toks {
		if subtle.ConstantTimeCompare([]byte(t.Hash), []byte(h)) == 1 {
			toks = append(toks[:i], toks[i+1:]...)
			return true, now.After(t.Expires), putJSON(tx, bucketTokens, node, toks)
		}
	}
	return false, false, nil
}

func (r *Registry) certRecord(id string) (certRecord, bool) {
	if id == "" {
		return certRecord{}, false
	}
	var rec certRecord
	err := r.st.View(func(tx store.Tx) error {
		var err error
		rec, err = getJSON[certRecord](tx, bucketCerts, id, func() error { return store.ErrNotFound })
		return err
	})
	return rec, err == nil
}

// nodeIdentity is what a node's certificate binds.
func nodeIdentity(n controllerapi.Node) ca.NodeIdentity {
	id := ca.NodeIdentity{Name: n.Name, ID: n.ID, MAC: n.MAC, Role: n.Role}
	if ip := net.ParseIP(n.IP); ip != nil {
		id.IPs = []net.IP{ip}
	}
	return id
}

func serialHex(c *x509.Certificate) string { return hex.EncodeToString(c.SerialNumber.Bytes()) }

// Enroll exchanges a node's one-time token for a certificate for the key
// in csr. Every attempt, granted or refused, is an event with its source.
func (c *Controller) Enroll(req controllerapi.EnrollRequest, from string) (controllerapi.EnrollResponse, error) {
	var resp controllerapi.EnrollResponse
	var verdict error
	now := c.reg.now()
	err := c.reg.update(func(tx store.Tx) error {
		n, nerr := getNode(tx, req.Node)
		f := enrollFacts{Known: nerr == nil, Role: n.Role, Started: c.started, Now: now, AgentTimeout: c.agents.timeout}
		if f.Known {
			var err error
			if f.TokenMatched, f.TokenExpired, err = takeToken(tx, n.Name, req.Token, now); err != nil {
				return err
			}
			_, err = tx.Get(bucketCerts, n.ID)
			f.Enrolled = n.ID != "" && err == nil
			f.LastSeen = c.agents.lastSeen(n.Name)
		}
		verdict = decideEnroll(f)
		if verdict == nil && n.ID == "" {
			// Registered by an older controller: give it its identity now.
			n.ID = newNodeID()
			if err := putNode(tx, n); err != nil {
				return err
			}
		}
		var der []byte
		if verdict == nil {
			var err error
			if der, err = c.ca.SignNode(req.CSR, nodeIdentity(n), c.certTTL(), now); err != nil {
				verdict = errorf(ErrInvalid, "enrollment refused: %v", err)
			}
		}
		ev := controllerapi.Event{Time: now.UTC(), Node: req.Node, MAC: n.MAC, Source: from}
		if verdict != nil {
			ev.Type, ev.Message = controllerapi.EventEnrollRefused, fmt.Sprintf("enrollment as %q from %s refused: %v", req.Node, from, verdict)
			return appendEvent(tx, ev) // the spent token and the event are kept
		}
		cert, _ := x509.ParseCertificate(der)
		rec := certRecord{Node: n.Name, Serials: []string{serialHex(cert)}, NotAfter: cert.NotAfter}
		if err := putJSON(tx, bucketCerts, n.ID, rec); err != nil {
			return err
		}
		resp = c.certResponse(n, cert)
		ev.Type, ev.Message = controllerapi.EventAgentEnrolled, fmt.Sprintf("%s agent %s enrolled from %s; certificate valid until %s", n.Role, n.Name, from, cert.NotAfter.Format(time.RFC3339))
		return appendEvent(tx, ev)
	})
	if err != nil {
		return resp, err
	}
	return resp, verdict
}

// agentAuth checks that a request comes with a node certificate the
// controller still accepts, and returns the node (by its current name).
func (c *Controller) agentAuth(r *http.Request, role string) (controllerapi.Node, *x509.Certificate, error) {
	var n controllerapi.Node
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || len(r.TLS.VerifiedChains) == 0 {
		return n, nil, errorf(ErrUnauthorized, "no client certificate: agents authenticate with the certificate they got at enrollment")
	}
	leaf := r.TLS.PeerCertificates[0]
	now := c.reg.now()
	if now.After(leaf.NotAfter) {
		return n, nil, errorf(ErrUnauthorized, "the client certificate expired at %s; enroll again with a new token", leaf.NotAfter.Format(time.RFC3339))
	}
	id, ok := ca.NodeID(leaf)
	if !ok {
		return n, nil, errorf(ErrForbidden, "the client certificate names no fabric node")
	}
	refuse := func(why string) (controllerapi.Node, *x509.Certificate, error) {
		c.refused(leaf, r.RemoteAddr, why)
		return n, nil, errorf(ErrRevoked, "the certificate of %s was revoked (%s); this agent must stop: enroll again with a new token (`fabric node token`)", leaf.Subject.CommonName, why)
	}
	rec, ok := c.reg.certRecord(id)
	if !ok {
		return refuse("node removed or reset")
	}
	if !slices.Contains(rec.Serials, serialHex(leaf)) {
		return refuse("superseded by a later enrollment")
	}
	n, err := c.reg.Node(rec.Node)
	if err != nil || n.ID != id {
		return refuse("node removed")
	}
	if role != "" && n.Role != role {
		return n, nil, errorf(ErrForbidden, "%s is a %s node; this call is for %s agents", n.Name, n.Role, role)
	}
	return n, leaf, nil
}

// refused records a call with a certificate the controller no longer
// accepts, at most once a minute per certificate.
func (c *Controller) refused(leaf *x509.Certificate, from, why string) {
	if !c.firstInAMinute("cert/" + serialHex(leaf)) {
		return
	}
	c.log.Warn("agent refused", "node", leaf.Subject.CommonName, "from", from, "reason", why)
	_ = c.reg.Record(controllerapi.Event{Type: controllerapi.EventAgentRefused, Node: leaf.Subject.CommonName, Source: from,
		Message: fmt.Sprintf("a call as %s from %s was refused: its certificate was revoked (%s)", leaf.Subject.CommonName, from, why)})
}

// Renew issues a fresh certificate to an authenticated agent.
func (c *Controller) Renew(n controllerapi.Node, leaf *x509.Certificate, csr []byte) (controllerapi.EnrollResponse, error) {
	var resp controllerapi.EnrollResponse
	now := c.reg.now()
	der, err := c.ca.SignNode(csr, nodeIdentity(n), c.certTTL(), now)
	if err != nil {
		return resp, errorf(ErrInvalid, "renewal refused: %v", err)
	}
	cert, _ := x509.ParseCertificate(der)
	err = c.reg.update(func(tx store.Tx) error {
		rec, err := getJSON[certRecord](tx, bucketCerts, n.ID, func() error {
			return errorf(ErrRevoked, "the certificate of %s was revoked meanwhile", n.Name)
		})
		if err != nil {
			return err
		}
		rec.Serials = []string{serialHex(cert), serialHex(leaf)}
		rec.NotAfter = cert.NotAfter
		return putJSON(tx, bucketCerts, n.ID, rec)
	})
	if err != nil {
		return resp, err
	}
	return c.certResponse(n, cert), nil
}

// certResponse hands a node its certificate, followed by the fabric CA.
func (c *Controller) certResponse(n controllerapi.Node, cert *x509.Certificate) controllerapi.EnrollResponse {
	return controllerapi.EnrollResponse{Node: n.Name, NotAfter: cert.NotAfter,
		Certificate: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})) + string(c.ca.CertPEM)}
}

// Reset revokes a node's certificate, so that its agent is refused from
// its next call and the node may enroll again with a new token.
func (c *Controller) Reset(nameOrMAC, actor string) (controllerapi.Node, error) {
	var n controllerapi.Node
	err := c.reg.update(func(tx store.Tx) error {
		var err error
		if n, err = resolve(tx, nameOrMAC); err != nil {
			return err
		}
		if n.ID != "" {
			if err := tx.Delete(bucketCerts, n.ID); err != nil {
				return err
			}
		}
		// Tokens issued before the reset are spent too: whoever holds one
		// (the revoked agent itself, say) cannot use it to come back.
		if err := tx.Delete(bucketTokens, n.Name); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: c.reg.now().UTC(), Type: controllerapi.EventNodeReset, Node: n.Name, MAC: n.MAC, Actor: actor,
			Message: fmt.Sprintf("%s reset: its certificate is revoked; it may enroll again with a new token (`fabric node token %s`, or its next PXE boot)", n.Name, n.Name)})
	})
	if err == nil {
		c.agents.forget(n.Name)
		c.storage.forget(n.Name)
	}
	return n, err
}

func (c *Controller) certTTL() time.Duration {
	if c.cfg.CertTTL > 0 {
		return c.cfg.CertTTL
	}
	return DefaultCertTTL
}

func newNodeID() string { return newToken()[:16] }

func remoteHost(r *http.Request) string {
	if h, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return h
	}
	return r.RemoteAddr
}

func (c *Controller) enroll(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	var req controllerapi.EnrollRequest
	if !decode(w, r, &req) {
		return
	}
	resp, err := c.Enroll(req, remoteHost(r))
	if err != nil {
		c.log.Warn("enrollment refused", "node", req.Node, "from", r.RemoteAddr, "err", err)
		c.fail(w, err)
		return
	}
	c.log.Info("agent enrolled", "node", req.Node, "from", r.RemoteAddr, "not_after", resp.NotAfter)
	writeJSON(w, http.StatusOK, resp)
}

func (c *Controller) renew(w http.ResponseWriter, r *http.Request) {
	n, leaf, err := c.agentAuth(r, "")
	if err != nil {
		c.fail(w, err)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	var req controllerapi.RenewRequest
	if !decode(w, r, &req) {
		return
	}
	resp, err := c.Renew(n, leaf, req.CSR)
	if err != nil {
		c.fail(w, err)
		return
	}
	c.log.Info("agent certificate renewed", "node", n.Name, "not_after", resp.NotAfter)
	writeJSON(w, http.StatusOK, resp)
}

// RemoveNode removes a node and revokes its certificate. A hardware node
// that holds instances (or is the destination of a migration) is refused
// unless force is set; force deletes those instances first, through their
// node, which is still enrolled then.
func (c *Controller) RemoveNode(nameOrMAC string, force bool, actor string) (controllerapi.Node, error) {
	n, err := c.reg.Node(nameOrMAC)
	if err != nil {
		return n, err
	}
	if n.Role == controllerapi.RoleStorage {
		if err := c.storageRemovable(n.Name); err != nil {
			return n, err
		}
	}
	ins, err := listJSON[controllerapi.Instance](c.st, bucketInstances)
	if err != nil {
		return n, err
	}
	var held []string
	for _, in := range ins {
		if in.Node == n.Name || in.Migrate != nil && in.Migrate.To == n.Name {
			held = append(held, in.Name)
		}
	}
	if len(held) > 0 && !force {
		return n, errorf(ErrConflict, "%s holds instances %s; move them away first (`fabric node drain %s`), or delete them with the node (`fabric node remove %s --force`)",
			n.Name, strings.Join(held, ", "), n.Name, n.Name)
	}
	for _, name := range held {
		if _, err := c.DeleteInstance(name); err != nil {
			return n, fmt.Errorf("removing %s: deleting its instance %s: %w", n.Name, name, err)
		}
	}
	n, err = c.reg.Remove(n.Name)
	if err != nil {
		return n, err
	}
	c.agents.forget(n.Name)
	c.storage.forget(n.Name)
	c.log.Info("node removed", "node", n.Name, "by", actor, "instances_deleted", len(held))
	return n, nil
}
