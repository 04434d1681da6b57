package controller

import (
	"context"
	"crypto/subtle"
	"fmt"
	"net/http"
	"strings"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/controller/store"
)

// bucketAdminTokens maps the SHA-256 of a named API credential to its
// AdminToken record (without the secret).
const bucketAdminTokens = "admintokens"

// actor is who makes an API call.
type actor struct{ name, kind string }

// call is an admin API call in progress: who makes it, and whether the
// handler wrote its own event naming them (then the generic api.call
// event is left out).
type call struct {
	actor
	recorded bool
}

type callKey struct{}

// recorded notes that the handler's own event names the call's actor.
func recorded(r *http.Request) {
	if c, ok := r.Context().Value(callKey{}).(*call); ok {
		c.recorded = true
	}
}

// actorOf returns the admin token a request was authenticated with.
func actorOf(r *http.Request) string {
	if c, ok := r.Context().Value(callKey{}).(*call); ok {
		return c.name
	}
	return ""
}

// admin finds the admin token a request carries.
func (c *Controller) admin(r *http.Request) (actor, bool) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return actor{}, false
	}
	if subtle.ConstantTimeCompare([]byte(tok), []byte(c.token)) == 1 {
		return actor{controllerapi.RootTokenName, controllerapi.TokenAdmin}, true
	}
	var t controllerapi.AdminToken
	err := c.st.View(func(tx store.Tx) error {
		var err error
		t, err = getJSON[controllerapi.AdminToken](tx, bucketAdminTokens, hashCred(tok), func() error { return store.ErrNotFound })
		return err
	})
	if err != nil {
		return actor{}, false
	}
	return actor{t.Name, t.Kind}, true
}

// statusWriter remembers the status code a handler answered.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// authUpload admits requests that carry an admin token: read-only tokens
// for reads only. Every call that may change something is recorded in the
// event log with the token's name and the caller's address.
func (c *Controller) authUpload(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a, ok := c.admin(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="fabric"`)
			writeError(w, http.StatusUnauthorized, controllerapi.CodeUnauthorized,
				"missing or wrong admin credential; pass --token or set FABRIC_TOKEN (the controller wrote it to its state directory as "+AdminTokenFile+")")
			return
		}
		cl := &call{actor: a}
		r = r.WithContext(context.WithValue(r.Context(), callKey{}, cl))
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			h(w, r)
			return
		}
		sw := &statusWriter{ResponseWriter: w}
		if a.kind != controllerapi.TokenAdmin {
			writeError(sw, http.StatusForbidden, controllerapi.CodeForbidden,
				fmt.Sprintf("token %q is %s: it may only read; use an admin token for %s %s", a.name, a.kind, r.Method, r.URL.Path))
		} else {
			h(sw, r)
		}
		if cl.recorded {
			return
		}
		if err := c.reg.Record(controllerapi.Event{Type: controllerapi.EventAPICall, Actor: a.name, Source: remoteHost(r),
			Message: fmt.Sprintf("%s %s by %s: %d %s", r.Method, r.URL.RequestURI(), a.name, sw.status, http.StatusText(sw.status))}); err != nil {
			c.log.Error("recording API call", "err", err)
		}
	})
}

// CreateAdminToken makes a named API credential and returns it with its
// secret.
func (c *Controller) CreateAdminToken(req controllerapi.CreateTokenRequest, by string) (controllerapi.AdminToken, error) {
	if err := checkName("token", req.Name); err != nil {
		return controllerapi.AdminToken{}, err
	}
	if req.Kind == "" {
		req.Kind = controllerapi.TokenAdmin
	}
	if req.Kind != controllerapi.TokenAdmin && req.Kind != controllerapi.TokenReadOnly {
		return controllerapi.AdminToken{}, errorf(ErrInvalid, "token kind %q is not known; use %q or %q", req.Kind, controllerapi.TokenAdmin, controllerapi.TokenReadOnly)
	}
	if req.Name == controllerapi.RootTokenName {
		return controllerapi.AdminToken{}, errorf(ErrConflict, "%q is the controller's own admin credential (%s)", req.Name, AdminTokenFile)
	}
	secret := newToken()
	t := controllerapi.AdminToken{Name: req.Name, Kind: req.Kind, Created: c.reg.now().UTC(), CreatedBy: by}
	err := c.reg.update(func(tx store.Tx) error {
		dup := false
		if err := tx.ForEach(bucketAdminTokens, "", func(_ string, v []byte) error {
			if x, _ := decodeJSON[controllerapi.AdminToken](v); x.Name == req.Name {
				dup = true
				return store.ErrStop
			}
			return nil
		}); err != nil {
			return err
		}
		if dup {
			return errorf(ErrConflict, "a token named %q exists; revoke it first (`fabric token revoke %s`) or choose another name", req.Name, req.Name)
		}
		if err := putJSON(tx, bucketAdminTokens, hashCred(secret), t); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: t.Created, Type: controllerapi.EventAdminToken, Actor: by,
			Message: fmt.Sprintf("%s token %q created by %s", t.Kind, t.Name, by)})
	})
	t.Secret = secret
	return t, err
}

// AdminTokens lists the named API credentials, without their secrets.
func (c *Controller) AdminTokens() ([]controllerapi.AdminToken, error) {
	ts, err := listJSON[controllerapi.AdminToken](c.st, bucketAdminTokens)
	if err != nil {
		return nil, err
	}
	root := controllerapi.AdminToken{Name: controllerapi.RootTokenName, Kind: controllerapi.TokenAdmin}
	return append([]controllerapi.AdminToken{root}, ts...), nil
}

// RevokeAdminToken deletes a named API credential; calls with it are
// refused from then on.
func (c *Controller) RevokeAdminToken(name, by string) error {
	if name == controllerapi.RootTokenName {
		return errorf(ErrInvalid, "the root token cannot be revoked over the API: delete %s in the controller's state directory and restart it to make a new one", AdminTokenFile)
	}
	return c.reg.update(func(tx store.Tx) error {
		key := ""
		if err := tx.ForEach(bucketAdminTokens, "", func(k string, v []byte) error {
			if x, _ := decodeJSON[controllerapi.AdminToken](v); x.Name == name {
				key = k
				return store.ErrStop
			}
			return nil
		}); err != nil {
			return err
		}
		if key == "" {
			return errorf(ErrNotFound, "no token named %q; see `fabric token list`", name)
		}
		if err := tx.Delete(bucketAdminTokens, key); err != nil {
			return err
		}
		return appendEvent(tx, controllerapi.Event{Time: c.reg.now().UTC(), Type: controllerapi.EventAdminToken, Actor: by,
			Message: fmt.Sprintf("token %q revoked by %s", name, by)})
	})
}

func (c *Controller) createToken(w http.ResponseWriter, r *http.Request) {
	var req controllerapi.CreateTokenRequest
	if !decode(w, r, &req) {
		return
	}
	t, err := c.CreateAdminToken(req, actorOf(r))
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, t)
}

func (c *Controller) listTokens(w http.ResponseWriter, r *http.Request) {
	ts, err := c.AdminTokens()
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ts)
}

func (c *Controller) revokeToken(w http.ResponseWriter, r *http.Request) {
	if err := c.RevokeAdminToken(r.PathValue("name"), actorOf(r)); err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"revoked": r.PathValue("name")})
}
