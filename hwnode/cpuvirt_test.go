package hwnode

import "testing"

// TestCPUVirt: KVM is chosen only where the CPU flags show hardware
// virtualisation; a machine whose /dev/kvm comes from kvm_pvm (no vmx or
// svm, as this project's CI machines) gets software emulation.
func TestCPUVirt(t *testing.T) {
	for _, tc := range []struct {
		name, cpuinfo string
		want          bool
	}{
		{"intel", "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme de pse tsc msr vmx smx est\nbugs\t\t: spectre_v1\n", true},
		{"amd", "processor\t: 0\nflags\t\t: fpu vme svm extapic\n", true},
		{"pvm guest", "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae hypervisor avx512f\nvmx flags\t: vnmi\n", false},
		{"vmx only in another field", "processor\t: 0\nmodel name\t: vmx svm\nflags\t\t: fpu sse2\n", false},
		{"no flags line", "processor\t: 0\n", false},
		{"empty", "", false},
	} {
		if got := cpuVirt(tc.cpuinfo); got != tc.want {
			t.Errorf("%s: cpuVirt = %v, want %v", tc.name, got, tc.want)
		}
	}
}
