package pxe

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"text/template"
)

// Profile is how a role boots: kernel and initrd paths inside the boot
// directory and a kernel command line template. The template sees
// .Name .MAC .IP .Role .RootVolume .Token .Controller .CAPin.
type Profile struct {
	Kernel  string
	Initrd  string
	Cmdline string
	// SANBoot boots the node's root volume through its own boot loader
	// (iPXE "sanboot aoe:e<shelf>.<slot>") instead of Kernel and Initrd.
	SANBoot bool
	// Hypervisor, if set, is a multiboot hypervisor (Xen's xen.gz) in the
	// boot directory that iPXE loads with HypervisorArgs; Kernel (with
	// the command line) and Initrd become its modules: a Xen dom0.
	Hypervisor, HypervisorArgs string
}

// DefaultCmdline carries what the initramfs and the node agent need.
const DefaultCmdline = "console=ttyS0 fabric.name={{.Name}} fabric.root={{.RootVolume}} fabric.controller={{.Controller}} fabric.ca={{.CAPin}} fabric.token={{.Token}}"

// HTTPBoot serves iPXE scripts at /boot/<mac>.ipxe and the boot directory
// (kernels, initrds; Range requests supported) at /files/.
type HTTPBoot struct {
	Root       *os.Root
	Backend    Backend
	Profiles   map[string]Profile // by role
	BaseURL    string             // how booting nodes reach this server, e.g. http://10.233.0.1:8080
	Controller string             // the controller API URL given to node agents
	CAPin      string             // the fabric CA's pin given to node agents (controllerapi.CAPin)
	Logger     *slog.Logger
}

// Handler returns the HTTP handler.
func (h *HTTPBoot) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /boot/{file}", h.script)
	mux.Handle("GET /files/", http.StripPrefix("/files/", http.FileServerFS(h.Root.FS())))
	return mux
}

var scriptTmpl = template.Must(template.New("ipxe").Parse(`#!ipxe
echo fabric: booting {{.Host.Name}} ({{.Host.MAC}}) as {{.Host.Role}}, root {{.Host.RootVolume}}
{{if .Profile.SANBoot -}}
sanboot aoe:{{.Host.RootVolume}}
{{- else if .Profile.Hypervisor -}}
kernel {{.Base}}/files/{{.Profile.Hypervisor}} {{.Profile.HypervisorArgs}}
module {{.Base}}/files/{{.Profile.Kernel}} {{.Cmdline}}
module {{.Base}}/files/{{.Profile.Initrd}}
boot
{{- else -}}
kernel {{.Base}}/files/{{.Profile.Kernel}} initrd=initrd.img {{.Cmdline}}
initrd --name initrd.img {{.Base}}/files/{{.Profile.Initrd}}
boot
{{- end}}
`))

// holdTmpl has a registered machine wait for the config node (its fresh
// root volume being made) and ask again.
var holdTmpl = template.Must(template.New("hold").Parse(`#!ipxe
echo fabric: {{.Why}}
echo fabric: asking again in 5 seconds
sleep 5
chain --replace {{.Base}}/boot/{{.File}}
`))

// unknownTmpl keeps an unregistered machine's console informative and
// retries, so registering it is enough to make it boot.
var unknownTmpl = template.Must(template.New("unknown").Parse(`#!ipxe
echo fabric: this machine ({{.MAC}}) is not registered{{if .Why}}: {{.Why}}{{end}}
echo fabric: register it on the config node with
echo fabric:   fabric node register --mac {{.MAC}} --role hwnode --name NAME
echo fabric: retrying in 10 seconds
sleep 10
chain --replace {{.Base}}/boot/{{.File}}
`))

func (h *HTTPBoot) log() *slog.Logger {
	if h.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return h.Logger
}

func (h *HTTPBoot) script(w http.ResponseWriter, r *http.Request) {
	file := r.PathValue("file")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	base := strings.TrimRight(h.BaseURL, "/")
	name, ok := strings.CutSuffix(file, ".ipxe")
	mac, err := net.ParseMAC(name)
	if !ok || err != nil || len(mac) != 6 {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, "#!ipxe\necho fabric: %q is not a boot script name; expected /boot/<mac>.ipxe\n", file)
		return
	}
	host, known, err := h.Backend.Host(mac)
	if err != nil {
		h.log().Error("http boot: registry lookup", "mac", mac.String(), "err", err)
		http.Error(w, "#!ipxe\necho fabric: registry unavailable, retrying\nsleep 5\nchain --replace "+base+"/boot/"+file+"\n", http.StatusOK)
		return
	}
	var buf bytes.Buffer
	data := map[string]any{"MAC": mac.String(), "Base": base, "File": file}
	if !known {
		h.Backend.Report(Event{Kind: EventUnknownMAC, MAC: mac, Message: fmt.Sprintf("unknown MAC %s asked for its iPXE script", mac)})
		_ = unknownTmpl.Execute(&buf, data)
		_, _ = w.Write(buf.Bytes())
		return
	}
	prof, ok := h.Profiles[host.Role]
	if !ok {
		data["Why"] = "no boot profile for role " + host.Role
		_ = unknownTmpl.Execute(&buf, data)
		_, _ = w.Write(buf.Bytes())
		return
	}
	if prof.SANBoot && host.RootVolume == "" {
		data["Why"] = "SAN boot needs a root volume and " + host.Name + " has none"
		_ = unknownTmpl.Execute(&buf, data)
		_, _ = w.Write(buf.Bytes())
		return
	}
	if hold := h.Backend.BootScript(mac); hold != "" {
		data["Why"] = hold
		_ = holdTmpl.Execute(&buf, data)
		_, _ = w.Write(buf.Bytes())
		return
	}
	cmdTmpl := prof.Cmdline
	if cmdTmpl == "" {
		cmdTmpl = DefaultCmdline
	}
	// The enrollment token goes only to the machine DHCP just booted, once
	// per boot (the backend decides); anyone else gets the script without
	// one, and the event says why.
	token, tokenNote := "", ""
	if !prof.SANBoot && strings.Contains(cmdTmpl, ".Token") {
		from, _ := netip.ParseAddrPort(r.RemoteAddr)
		t, err := h.Backend.BootToken(mac, from.Addr())
		if err != nil {
			tokenNote = " without an enrollment token: " + err.Error()
		} else {
			token, tokenNote = t, " with a new enrollment token"
		}
	}
	ct, err := template.New("cmdline").Option("missingkey=error").Parse(cmdTmpl)
	var cmdline bytes.Buffer
	if err == nil {
		err = ct.Execute(&cmdline, map[string]any{"Name": host.Name, "MAC": host.MAC.String(), "IP": host.IP.String(),
			"Role": host.Role, "RootVolume": host.RootVolume, "Token": token, "Controller": h.Controller, "CAPin": h.CAPin})
	}
	if err != nil {
		h.log().Error("http boot: command line template", "role", host.Role, "err", err)
		data["Why"] = "the boot profile of role " + host.Role + " is broken: " + err.Error()
		_ = unknownTmpl.Execute(&buf, data)
		_, _ = w.Write(buf.Bytes())
		return
	}
	if err := scriptTmpl.Execute(&buf, map[string]any{"Host": host, "Base": base, "Profile": prof, "Cmdline": cmdline.String()}); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	h.Backend.Report(Event{Kind: EventScript, MAC: mac, Host: host.Name,
		Message: fmt.Sprintf("%s (%s) fetched its iPXE script from %s%s", host.Name, mac, r.RemoteAddr, tokenNote)})
	_, _ = w.Write(buf.Bytes())
}
