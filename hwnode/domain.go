package hwnode

import (
	"encoding/xml"
	"fmt"
	"net"
	"strings"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

// Hypervisors (libvirt domain types) the agent generates XML for.
const (
	KVM  = "kvm"  // QEMU with hardware virtualisation
	QEMU = "qemu" // QEMU software emulation (TCG), where KVM is absent
	Xen  = "xen"  // Xen HVM guest through libvirt's libxl driver
)

// metadataNS marks the domains the agent manages.
const metadataNS = "https://fabric-project.github.io/ns/instance/1"

// Disk is how a guest reaches its volume.
type Disk struct {
	// Device is a block device path (/dev/etherd/e1.2): the kernel aoe
	// driver.
	Device string
	// NBDHost, NBDPort and NBDExport name an NBD export: the agent's own
	// initiator.
	NBDHost   string
	NBDPort   string
	NBDExport string
}

// URL describes the disk for humans and the controller.
func (d Disk) URL() string {
	if d.Device != "" {
		return d.Device
	}
	return "nbd://" + net.JoinHostPort(d.NBDHost, d.NBDPort) + "/" + d.NBDExport
}

// Guest is what the domain XML needs besides the instance spec.
type Guest struct {
	Hypervisor string
	Emulator   string // QEMU binary (kvm, qemu)
	Kernel     string // instance kernel and initrd on this host
	Initrd     string
	Bridge     string // host bridge the guest NIC joins
	SerialLog  string // file for the serial console ("" for a pty)
}

type domainXML struct {
	XMLName  xml.Name `xml:"domain"`
	Type     string   `xml:"type,attr"`
	Name     string   `xml:"name"`
	UUID     string   `xml:"uuid"`
	Title    string   `xml:"title"`
	Metadata struct {
		Instance struct {
			XMLName xml.Name `xml:"fabric:instance"`
			NS      string   `xml:"xmlns:fabric,attr"`
			Volume  string   `xml:"fabric:volume"`
		}
	} `xml:"metadata"`
	Memory struct {
		Unit  string `xml:"unit,attr"`
		Value int    `xml:",chardata"`
	} `xml:"memory"`
	VCPU int `xml:"vcpu"`
	OS   struct {
		Type struct {
			Arch    string `xml:"arch,attr,omitempty"`
			Machine string `xml:"machine,attr,omitempty"`
			Value   string `xml:",chardata"`
		} `xml:"type"`
		Kernel  string `xml:"kernel"`
		Initrd  string `xml:"initrd"`
		Cmdline string `xml:"cmdline"`
	} `xml:"os"`
	Features struct {
		ACPI *struct{} `xml:"acpi"`
		APIC *struct{} `xml:"apic"`
	} `xml:"features"`
	CPU *struct {
		Mode string `xml:"mode,attr"`
	} `xml:"cpu,omitempty"`
	Clock struct {
		Offset string `xml:"offset,attr"`
	} `xml:"clock"`
	OnPoweroff string `xml:"on_poweroff"`
	OnReboot   string `xml:"on_reboot"`
	OnCrash    string `xml:"on_crash"`
	Devices    struct {
		Emulator  string `xml:"emulator,omitempty"`
		Disk      diskXML
		Interface struct {
			Type   string `xml:"type,attr"`
			Source struct {
				Bridge string `xml:"bridge,attr"`
			} `xml:"source"`
			MAC struct {
				Address string `xml:"address,attr"`
			} `xml:"mac"`
			Model struct {
				Type string `xml:"type,attr"`
			} `xml:"model"`
		} `xml:"interface"`
		Serial struct {
			Type   string `xml:"type,attr"`
			Source *struct {
				Path   string `xml:"path,attr"`
				Append string `xml:"append,attr"`
			} `xml:"source,omitempty"`
		} `xml:"serial"`
		Console struct {
			Type string `xml:"type,attr"`
		} `xml:"console"`
		MemBalloon struct {
			Model string `xml:"model,attr"`
		} `xml:"memballoon"`
	} `xml:"devices"`
}

type diskXML struct {
	XMLName xml.Name `xml:"disk"`
	Type    string   `xml:"type,attr"`
	Device  string   `xml:"device,attr"`
	Driver  struct {
		Name  string `xml:"name,attr"`
		Type  string `xml:"type,attr"`
		Cache string `xml:"cache,attr,omitempty"`
		IO    string `xml:"io,attr,omitempty"`
	} `xml:"driver"`
	Source struct {
		Dev      string `xml:"dev,attr,omitempty"`
		Protocol string `xml:"protocol,attr,omitempty"`
		Name     string `xml:"name,attr,omitempty"`
		Host     *struct {
			Name string `xml:"name,attr"`
			Port string `xml:"port,attr"`
		} `xml:"host,omitempty"`
	} `xml:"source"`
	Target struct {
		Dev string `xml:"dev,attr"`
		Bus string `xml:"bus,attr"`
	} `xml:"target"`
}

// DomainXML renders the libvirt domain of an instance.
func DomainXML(s controllerapi.InstanceSpec, d Disk, g Guest) (string, error) {
	if s.Name == "" || s.UUID == "" || s.VCPUs < 1 || s.MemoryMiB < 1 {
		return "", fmt.Errorf("instance spec %+v is incomplete", s)
	}
	if _, err := net.ParseMAC(s.MAC); err != nil {
		return "", fmt.Errorf("instance %s: MAC %q: %w", s.Name, s.MAC, err)
	}
	var x domainXML
	x.Name, x.UUID, x.Title = s.Name, s.UUID, "fabric instance "+s.Name
	x.Metadata.Instance.NS = metadataNS
	x.Metadata.Instance.Volume = s.Volume
	x.Memory.Unit, x.Memory.Value = "MiB", s.MemoryMiB
	x.VCPU = s.VCPUs
	x.OS.Type.Value = "hvm"
	x.OS.Kernel, x.OS.Initrd = g.Kernel, g.Initrd
	cmd := []string{"console=ttyS0", "panic=-1", "quiet", "fabric.name=" + s.Name, "fabric.ip=" + s.IP}
	if s.Gateway != "" {
		cmd = append(cmd, "fabric.gw="+s.Gateway)
	}
	x.OS.Cmdline = strings.Join(cmd, " ")
	x.Features.ACPI, x.Features.APIC = &struct{}{}, &struct{}{}
	x.Clock.Offset = "utc"
	x.OnPoweroff, x.OnReboot, x.OnCrash = "destroy", "restart", "destroy"
	x.Devices.Interface.Type = "bridge"
	x.Devices.Interface.Source.Bridge = g.Bridge
	x.Devices.Interface.MAC.Address = s.MAC
	x.Devices.Interface.Model.Type = "virtio"
	x.Devices.Serial.Type = "pty"
	if g.SerialLog != "" {
		x.Devices.Serial.Type = "file"
		x.Devices.Serial.Source = &struct {
			Path   string `xml:"path,attr"`
			Append string `xml:"append,attr"`
		}{g.SerialLog, "on"}
	}
	x.Devices.Console.Type = "pty"
	x.Devices.MemBalloon.Model = "none"
	dk := &x.Devices.Disk
	dk.Device = "disk"
	dk.Target.Dev, dk.Target.Bus = "vda", "virtio"
	switch g.Hypervisor {
	case KVM, QEMU:
		x.Type = g.Hypervisor
		x.OS.Type.Arch, x.OS.Type.Machine = "x86_64", "pc"
		x.Devices.Emulator = g.Emulator
		if g.Hypervisor == KVM {
			x.CPU = &struct {
				Mode string `xml:"mode,attr"`
			}{"host-passthrough"}
		}
		// No host page cache: both ends of a migration must see the
		// volume itself.
		dk.Driver.Name, dk.Driver.Type, dk.Driver.Cache = "qemu", "raw", "none"
	case Xen:
		x.Type = Xen
		x.OS.Type.Arch = "x86_64"
		x.Devices.Interface.Model.Type = "netfront"
		dk.Driver.Name, dk.Driver.Type = "qemu", "raw"
		dk.Target.Dev, dk.Target.Bus = "xvda", "xen"
	default:
		return "", fmt.Errorf("unknown hypervisor %q (kvm, qemu or xen)", g.Hypervisor)
	}
	switch {
	case d.Device != "":
		dk.Type = "block"
		dk.Source.Dev = d.Device
		if g.Hypervisor != Xen {
			dk.Driver.IO = "native"
		}
	case d.NBDExport != "":
		dk.Type = "network"
		dk.Source.Protocol, dk.Source.Name = "nbd", d.NBDExport
		dk.Source.Host = &struct {
			Name string `xml:"name,attr"`
			Port string `xml:"port,attr"`
		}{d.NBDHost, d.NBDPort}
	default:
		return "", fmt.Errorf("instance %s: no disk", s.Name)
	}
	b, err := xml.MarshalIndent(x, "", "  ")
	return string(b), err
}

// managedVolume returns the fabric volume recorded in a domain's XML, and
// whether the domain is one the agent manages.
func managedVolume(domXML string) (string, bool) {
	var x struct {
		Metadata struct {
			Inner []byte `xml:",innerxml"`
		} `xml:"metadata"`
	}
	if xml.Unmarshal([]byte(domXML), &x) != nil || !strings.Contains(string(x.Metadata.Inner), metadataNS) {
		return "", false
	}
	var m struct {
		Volume string `xml:"volume"`
	}
	_ = xml.Unmarshal(x.Metadata.Inner, &m)
	return m.Volume, true
}
