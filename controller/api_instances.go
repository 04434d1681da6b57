package controller

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

// maxImage bounds an uploaded image.
const maxImage = 1 << 40

func (c *Controller) importImage(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if r.ContentLength > maxImage {
		writeError(w, http.StatusRequestEntityTooLarge, controllerapi.CodeTooLarge, "image over 1 TiB")
		return
	}
	if r.ContentLength < 0 {
		writeError(w, http.StatusLengthRequired, controllerapi.CodeInvalid, "send the image with a Content-Length")
		return
	}
	im, err := c.ImportImage(name, r.ContentLength, func(f *os.File) error {
		n, err := io.Copy(f, io.LimitReader(r.Body, r.ContentLength))
		if err == nil && n != r.ContentLength {
			err = fmt.Errorf("upload ended after %d of %d bytes", n, r.ContentLength)
		}
		if err == nil {
			err = f.Sync()
		}
		return err
	})
	if err != nil {
		c.fail(w, err)
		return
	}
	c.log.Info("image imported", "image", name, "bytes", im.Size)
	writeJSON(w, http.StatusCreated, im)
}

func (c *Controller) listImages(w http.ResponseWriter, r *http.Request) {
	ims, err := c.Images()
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ims)
}

func (c *Controller) deleteImage(w http.ResponseWriter, r *http.Request) {
	if err := c.DeleteImage(r.PathValue("name")); err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"deleted": r.PathValue("name")})
}

func (c *Controller) createInstance(w http.ResponseWriter, r *http.Request) {
	var req controllerapi.CreateInstanceRequest
	if !decode(w, r, &req) {
		return
	}
	in, err := c.CreateInstance(req)
	if err != nil {
		c.fail(w, err)
		return
	}
	c.log.Info("instance created", "instance", in.Name, "node", in.Node, "volume", in.Volume, "ip", in.IP)
	c.fillState(&in)
	writeJSON(w, http.StatusCreated, in)
}

func (c *Controller) listInstances(w http.ResponseWriter, r *http.Request) {
	ins, err := c.Instances()
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ins)
}

func (c *Controller) showInstance(w http.ResponseWriter, r *http.Request) {
	in, err := c.Instance(r.PathValue("name"))
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, in)
}

// setState answers POST /v1/instances/{name}/start|stop[?wait=D]: with
// wait, it answers when the node reports the state (or wait passes).
func (c *Controller) setState(want, reported string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		d, ok := waitParam(w, r, 10*time.Minute) // checked before anything changes
		if !ok {
			return
		}
		in, err := c.SetWant(name, want)
		if err != nil {
			c.fail(w, err)
			return
		}
		if d > 0 {
			if in, ok = c.WaitState(name, reported, d); !ok {
				if in.Error != "" {
					writeError(w, http.StatusBadGateway, "instance_error", fmt.Sprintf("instance %s is %s on %s, not %s: the node reports %s (it keeps retrying; `fabric instance show %s`, `fabric events`)", name, in.State, in.Node, reported, in.Error, name))
					return
				}
				writeError(w, http.StatusGatewayTimeout, "timeout", fmt.Sprintf("instance %s is %s on %s after %s, not %s", name, in.State, in.Node, d, reported))
				return
			}
		} else {
			c.fillState(&in)
		}
		writeJSON(w, http.StatusOK, in)
	}
}

func (c *Controller) deleteInstance(w http.ResponseWriter, r *http.Request) {
	in, err := c.DeleteInstance(r.PathValue("name"))
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, in)
}

func (c *Controller) limitInstance(w http.ResponseWriter, r *http.Request) {
	var req controllerapi.LimitRequest
	if !decode(w, r, &req) {
		return
	}
	in, err := c.LimitInstance(r.PathValue("name"), req.IOPS, req.BPS)
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, in)
}

func (c *Controller) migrateInstance(w http.ResponseWriter, r *http.Request) {
	var req controllerapi.MigrateRequest
	if !decode(w, r, &req) {
		return
	}
	res, err := c.Migrate(r.PathValue("name"), req.To)
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (c *Controller) nodeToken(w http.ResponseWriter, r *http.Request) {
	ttl := DefaultManualTokenTTL
	if v := r.URL.Query().Get("ttl"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > 7*24*time.Hour {
			writeError(w, http.StatusBadRequest, controllerapi.CodeInvalid, "ttl must be a duration up to 168h")
			return
		}
		ttl = d
	}
	tok, err := c.reg.IssueToken(r.PathValue("name"), actorOf(r), ttl)
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"token": tok})
}

func (c *Controller) drainNode(w http.ResponseWriter, r *http.Request) {
	res, err := c.Drain(r.PathValue("name"))
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (c *Controller) reimageNode(w http.ResponseWriter, r *http.Request) {
	var req controllerapi.ReimageRequest
	if !decode(w, r, &req) {
		return
	}
	st, err := c.Reimage(r.PathValue("name"), req.Confirm)
	if err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (c *Controller) undrainNode(w http.ResponseWriter, r *http.Request) {
	if err := c.Undrain(r.PathValue("name")); err != nil {
		c.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"undrained": r.PathValue("name")})
}
