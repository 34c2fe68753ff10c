package udevd

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// proc writes a /proc of processes: pid -> "comm|state|ppid".
func proc(t *testing.T, procs map[int]string) string {
	dir := t.TempDir()
	for pid, p := range procs {
		f := strings.Split(p, "|")
		d := filepath.Join(dir, fmt.Sprint(pid))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		stat := fmt.Sprintf("%d (%s) %s %s %d 0 0 0\n", pid, f[0], f[1], f[2], pid)
		if err := os.WriteFile(filepath.Join(d, "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Mkdir(filepath.Join(dir, "self"), 0o755)
	return dir
}

func TestFind(t *testing.T) {
	for _, tc := range []struct {
		name  string
		procs map[int]string
		want  int
	}{
		{"none", map[int]string{1: "init|S|0", 50: "bash|S|1"}, 0},
		{"systemd-udevd and its workers", map[int]string{1: "systemd|S|0", 30: "(udev-worker)|S|200", 31: "systemd-udevd|S|200", 200: "systemd-udevd|S|1"}, 200},
		{"eudev", map[int]string{1: "init|S|0", 77: "udevd|S|1", 78: "udevd|S|77"}, 77},
		{"a zombie is not running", map[int]string{1: "init|S|0", 40: "systemd-udevd|Z|1"}, 0},
		{"a name with spaces and parens", map[int]string{1: "init|S|0", 9: "a) (b|R|1", 60: "systemd-udevd|S|1"}, 60},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := find(proc(t, tc.procs)); got != tc.want {
				t.Errorf("find = %d, want %d", got, tc.want)
			}
		})
	}
}

// TestFindRunning: on this machine, what Find returns is a udev daemon.
func TestFindRunning(t *testing.T) {
	pid := Find()
	if pid == 0 {
		t.Skip("no udevd runs on this machine")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || !isDaemon(strings.TrimSpace(string(b))) {
		t.Errorf("Find() = %d, whose comm is %q (%v)", pid, b, err)
	}
}
