package controllerapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"time"
)

// Client calls the controller API.
type Client struct {
	BaseURL string // https://host:port
	Token   string // admin credential
	HTTP    *http.Client

	roots *x509.CertPool
	id    *Identity // agents: the node's key and certificate
}

// NewClient returns a client that trusts only the fabric CA in caPEM.
func NewClient(baseURL, token string, caPEM []byte) (*Client, error) {
	pool := x509.NewCertPool()
	if len(caPEM) > 0 && !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("controllerapi: CA file holds no PEM certificate")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	// HTTP/1.1: an admin makes a call or a few, and Go's HTTP/2 client
	// copies a large answer through a buffer of its own (a list of
	// 10,000 nodes took 40% longer to read). Concurrent callers each keep
	// a connection.
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP1(true)
	tr.MaxIdleConnsPerHost = 64
	return &Client{BaseURL: baseURL, Token: token, HTTP: &http.Client{Transport: tr}, roots: pool}, nil
}

// RegisterNode registers a node.
func (c *Client) RegisterNode(ctx context.Context, r RegisterRequest) (Node, error) {
	var n Node
	err := c.do(ctx, http.MethodPost, "/v1/nodes", r, &n)
	return n, err
}

// Nodes lists every node, ordered by name.
func (c *Client) Nodes(ctx context.Context) ([]Node, error) {
	ns := []Node{}
	var n Node
	err := c.each(ctx, "/v1/nodes", &n, func() error {
		ns = append(ns, n)
		return nil
	})
	return ns, err
}

// EachNodeSummary calls fn with each node as the node list shows it, in
// name order, while the answer is read: a list of 10,000 nodes is never
// held whole, and a summary is a third of a node's bytes (reading whole
// nodes and holding them took most of `fabric node list`).
func (c *Client) EachNodeSummary(ctx context.Context, fn func(NodeSummary) error) error {
	var s NodeSummary
	return c.each(ctx, "/v1/nodes?view=summary", &s, func() error { return fn(s) })
}

// NodesJSON copies the node list to w as the controller writes it: JSON
// indented by two spaces, a node at a time.
func (c *Client) NodesJSON(ctx context.Context, w io.Writer) error {
	resp, err := c.get(ctx, "/v1/nodes?pretty")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("reading controller answer to GET /v1/nodes: %w", err)
	}
	return nil
}

// Node returns one node by name or MAC.
func (c *Client) Node(ctx context.Context, name string) (Node, error) {
	var n Node
	err := c.do(ctx, http.MethodGet, "/v1/nodes/"+url.PathEscape(name), nil, &n)
	return n, err
}

// UpdateNode changes a node's name, role or address.
func (c *Client) UpdateNode(ctx context.Context, name string, r UpdateRequest) (Node, error) {
	var n Node
	err := c.do(ctx, http.MethodPatch, "/v1/nodes/"+url.PathEscape(name), r, &n)
	return n, err
}

// RemoveNode removes a node and revokes its certificates. A node that
// holds instances is refused unless force is set, which deletes them.
func (c *Client) RemoveNode(ctx context.Context, name string, force bool) error {
	p := "/v1/nodes/" + url.PathEscape(name)
	if force {
		p += "?force=true"
	}
	return c.do(ctx, http.MethodDelete, p, nil, nil)
}

// ResetNode revokes a node's certificates, so that it may enroll again
// (with a new token).
func (c *Client) ResetNode(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(name)+"/reset", nil, nil)
}

// CreateAdminToken makes a named API credential; the answer carries its
// secret, shown only this once.
func (c *Client) CreateAdminToken(ctx context.Context, name, kind string) (AdminToken, error) {
	var t AdminToken
	err := c.do(ctx, http.MethodPost, "/v1/tokens", CreateTokenRequest{Name: name, Kind: kind}, &t)
	return t, err
}

// AdminTokens lists the named API credentials (without secrets).
func (c *Client) AdminTokens(ctx context.Context) ([]AdminToken, error) {
	var ts []AdminToken
	err := c.do(ctx, http.MethodGet, "/v1/tokens", nil, &ts)
	return ts, err
}

// RevokeAdminToken deletes a named API credential.
func (c *Client) RevokeAdminToken(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/tokens/"+url.PathEscape(name), nil, nil)
}

// Events returns events with Seq >= since. With wait > 0 the controller
// holds the request until an event arrives or wait passes.
func (c *Client) Events(ctx context.Context, since uint64, wait time.Duration) (EventsResponse, error) {
	q := url.Values{"since": {strconv.FormatUint(since, 10)}}
	if wait > 0 {
		q.Set("wait", wait.String())
	}
	var r EventsResponse
	err := c.do(ctx, http.MethodGet, "/v1/events?"+q.Encode(), nil, &r)
	return r, err
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, body)
	if err != nil {
		return fmt.Errorf("controller URL %q: %w", c.BaseURL, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.send(req, out)
}

// each GETs path, a JSON array, and decodes each element into v (zeroed
// first) and calls fn, as the answer is read. v must be a pointer.
func (c *Client) each(ctx context.Context, path string, v any, fn func() error) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("controllerapi: each needs a non-nil pointer, not %T", v)
	}
	resp, err := c.get(ctx, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	bad := func(err error) error { return fmt.Errorf("decoding controller answer to GET %s: %w", path, err) }
	dec := json.NewDecoder(resp.Body)
	if t, err := dec.Token(); err != nil {
		return bad(err)
	} else if t != json.Delim('[') {
		return bad(fmt.Errorf("not a list (%v)", t))
	}
	for dec.More() {
		rv.Elem().SetZero()
		if err := dec.Decode(v); err != nil {
			return bad(err)
		}
		if err := fn(); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil {
		return bad(err)
	}
	return nil
}

func (c *Client) send(req *http.Request, out any) error {
	method, path := req.Method, req.URL.Path
	resp, err := c.roundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	// Read whole, then decode: a Decoder grows its buffer by doubling
	// while it looks for the value's end.
	b, err := readBody(resp)
	if err != nil {
		return fmt.Errorf("reading controller answer to %s %s: %w", method, path, err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decoding controller answer to %s %s: %w", method, path, err)
	}
	return nil
}

// get GETs path and returns a 2xx answer for the caller to read.
func (c *Client) get(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+path, nil)
	if err != nil {
		return nil, fmt.Errorf("controller URL %q: %w", c.BaseURL, err)
	}
	return c.roundTrip(req)
}

// roundTrip sends req with the credential and returns a 2xx answer, or
// the error the controller gave (or why it could not be reached).
func (c *Client) roundTrip(req *http.Request) (*http.Response, error) {
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		var unknownCA x509.UnknownAuthorityError
		var badName x509.HostnameError
		switch {
		case errors.As(err, &unknownCA):
			return nil, fmt.Errorf("the controller at %s presented a certificate not signed by the fabric CA you gave: pass --ca (or FABRIC_CA) with the controller's STATE/ca/ca.crt: %w", c.BaseURL, err)
		case errors.As(err, &badName):
			return nil, fmt.Errorf("the controller's certificate is not for the host in %s: use an address given to `fabricd controller --api-host` (its client.json has one): %w", c.BaseURL, err)
		}
		return nil, fmt.Errorf("cannot reach the controller at %s: %w", c.BaseURL, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, respError(resp)
	}
	return resp, nil
}

// readBody reads an answer's body into a buffer sized from its length.
func readBody(resp *http.Response) ([]byte, error) {
	var buf bytes.Buffer
	if n := resp.ContentLength; n > 0 && n < 1<<30 {
		buf.Grow(int(n) + bytes.MinRead)
	}
	_, err := buf.ReadFrom(resp.Body)
	return buf.Bytes(), err
}

// respError is the APIError a failed answer carries.
func respError(resp *http.Response) error {
	var e ErrorResponse
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &e) != nil || e.Error == "" {
		e.Error = fmt.Sprintf("controller answered HTTP %d", resp.StatusCode)
	}
	return &APIError{Status: resp.StatusCode, Code: e.Code, Message: e.Error}
}

// NodeToken issues a new one-time enrollment token for a node (the
// previous one the admin was given stops working).
func (c *Client) NodeToken(ctx context.Context, name string, ttl time.Duration) (string, error) {
	var r struct{ Token string }
	p := "/v1/nodes/" + url.PathEscape(name) + "/token"
	if ttl > 0 {
		p += "?ttl=" + url.QueryEscape(ttl.String())
	}
	err := c.do(ctx, http.MethodPost, p, nil, &r)
	return r.Token, err
}

// ImportImage uploads size bytes from body as image name.
func (c *Client) ImportImage(ctx context.Context, name string, body io.Reader, size int64) (Image, error) {
	var im Image
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, c.BaseURL+"/v1/images/"+url.PathEscape(name), body)
	if err != nil {
		return im, err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	err = c.send(req, &im)
	return im, err
}

// Images lists the images.
func (c *Client) Images(ctx context.Context) ([]Image, error) {
	var ims []Image
	err := c.do(ctx, http.MethodGet, "/v1/images", nil, &ims)
	return ims, err
}

// DeleteImage deletes an image.
func (c *Client) DeleteImage(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/images/"+url.PathEscape(name), nil, nil)
}

// CreateInstance creates (and with r.Start, starts) an instance.
func (c *Client) CreateInstance(ctx context.Context, r CreateInstanceRequest) (Instance, error) {
	var in Instance
	err := c.do(ctx, http.MethodPost, "/v1/instances", r, &in)
	return in, err
}

// Instances lists the instances.
func (c *Client) Instances(ctx context.Context) ([]Instance, error) {
	var ins []Instance
	err := c.do(ctx, http.MethodGet, "/v1/instances", nil, &ins)
	return ins, err
}

// Instance returns one instance.
func (c *Client) Instance(ctx context.Context, name string) (Instance, error) {
	var in Instance
	err := c.do(ctx, http.MethodGet, "/v1/instances/"+url.PathEscape(name), nil, &in)
	return in, err
}

// SetInstanceState starts ("start") or stops ("stop") an instance; with
// wait > 0 the controller answers once the node reports the new state.
func (c *Client) SetInstanceState(ctx context.Context, name, action string, wait time.Duration) (Instance, error) {
	var in Instance
	p := "/v1/instances/" + url.PathEscape(name) + "/" + action
	if wait > 0 {
		p += "?wait=" + url.QueryEscape(wait.String())
	}
	err := c.do(ctx, http.MethodPost, p, nil, &in)
	return in, err
}

// Console returns up to max bytes of an instance's serial console log
// from offset from (-1: its last max bytes), fetched from its node.
func (c *Client) Console(ctx context.Context, name string, from int64, max int) (ConsoleTail, error) {
	var t ConsoleTail
	p := fmt.Sprintf("/v1/instances/%s/console?from=%d&max=%d", url.PathEscape(name), from, max)
	err := c.do(ctx, http.MethodGet, p, nil, &t)
	return t, err
}

// DeleteInstance deletes an instance and its disk.
func (c *Client) DeleteInstance(ctx context.Context, name string) (Instance, error) {
	var in Instance
	err := c.do(ctx, http.MethodDelete, "/v1/instances/"+url.PathEscape(name), nil, &in)
	return in, err
}

// LimitInstance sets the I/O caps of an instance's disk (0 removes one),
// in force when it returns.
func (c *Client) LimitInstance(ctx context.Context, name string, r LimitRequest) (Instance, error) {
	var in Instance
	err := c.do(ctx, http.MethodPost, "/v1/instances/"+url.PathEscape(name)+"/limit", r, &in)
	return in, err
}

// MigrateInstance live-migrates an instance; to "" lets the scheduler pick.
func (c *Client) MigrateInstance(ctx context.Context, name, to string) (MigrateResult, error) {
	var r MigrateResult
	err := c.do(ctx, http.MethodPost, "/v1/instances/"+url.PathEscape(name)+"/migrate", MigrateRequest{To: to}, &r)
	return r, err
}

// Heartbeat reports an agent's state (authenticated by its certificate)
// and returns its desired state, waiting up to wait for it to
// differ from hb.Generation.
func (c *Client) Heartbeat(ctx context.Context, hb Heartbeat, wait time.Duration) (DesiredState, error) {
	var ds DesiredState
	err := c.do(ctx, http.MethodPost, "/v1/agent/heartbeat?wait="+url.QueryEscape(wait.String()), hb, &ds)
	return ds, err
}

// DrainNode stops new placements on a hardware node and moves its
// instances away.
func (c *Client) DrainNode(ctx context.Context, name string) ([]DrainResult, error) {
	var r []DrainResult
	err := c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(name)+"/drain", nil, &r)
	return r, err
}

// UndrainNode lets a drained node take instances again.
func (c *Client) UndrainNode(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(name)+"/undrain", nil, nil)
}

// ReimageRequest is the body of POST /v1/nodes/{name}/reimage.
type ReimageRequest struct {
	// Confirm deletes the roots earlier reimages kept.
	Confirm bool `json:"confirm,omitempty"`
}

// ReimageStatus is a hardware node's root volume and its reimages.
type ReimageStatus struct {
	Node    string `json:"node"`
	Volume  string `json:"volume"` // the root volume now
	Image   string `json:"image"`  // what a reimage clones
	Pending bool   `json:"pending"`
	// Kept are earlier roots, not exported, deleted by a confirm.
	Kept []string `json:"kept,omitempty"`
}

// ReimageNode gives a hardware node a fresh clone of the root image at its
// next PXE boot, or with confirm deletes the roots earlier reimages kept.
func (c *Client) ReimageNode(ctx context.Context, name string, confirm bool) (ReimageStatus, error) {
	var st ReimageStatus
	err := c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(name)+"/reimage", ReimageRequest{Confirm: confirm}, &st)
	return st, err
}

// FenceRequest is the body of POST /v1/nodes/{name}/fence.
type FenceRequest struct {
	Reason string `json:"reason"`
}

// FenceResult says which storage nodes confirmed a fence.
type FenceResult struct {
	Node      string   `json:"node"`
	Confirmed []string `json:"confirmed_by"`
}

// FenceNode cuts a hardware node off from every disk and waits until the
// storage nodes confirm; its instances are then restarted elsewhere.
func (c *Client) FenceNode(ctx context.Context, name, reason string) (FenceResult, error) {
	var r FenceResult
	err := c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(name)+"/fence", FenceRequest{Reason: reason}, &r)
	return r, err
}

// UnfenceNode lets a repaired node reach its disks and take instances.
func (c *Client) UnfenceNode(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPost, "/v1/nodes/"+url.PathEscape(name)+"/unfence", nil, nil)
}

// Status returns the fabric's one-screen summary.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &st)
	return st, err
}
