package hwnode

import (
	"strings"
	"testing"
)

func TestEmulatorWarning(t *testing.T) {
	for _, c := range []struct {
		hv   string
		v    uint64
		want string // substring; "" = no warning
	}{
		{QEMU, 7002000, "QEMU 7.2.0 loses memory writes"},
		{QEMU, 8002002, "QEMU 8.2.2 loses memory writes"},
		{QEMU, 9000000, ""},
		{QEMU, 10000002, ""},
		{KVM, 7002000, ""}, // KVM tracks dirty pages itself
		{Xen, 4017000, ""},
	} {
		got := emulatorWarning(c.hv, c.v)
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("emulatorWarning(%s, %d) = %q, want %q", c.hv, c.v, got, c.want)
		}
	}
}
