// Package scenario reproduces the storage-latency story on the machine the
// tests run on, for real and as root: a running systemd-udevd, a loop device,
// the udev rule that rewrites queue/scheduler and queue/nr_requests on every
// "change" uevent, a monitoring daemon ("raidmon") whose RAID CLI
// ("arcconf") causes those uevents, and an O_DIRECT + fdatasync writer (fio)
// whose submissions stall while the rule freezes the request queue.
//
// Every helper takes a testing.TB and registers a cleanup that puts the
// machine back as it was, also when the test fails midway. Every external
// command runs with a timeout. The package is meant for tests only.
//
// Test processes that use these helpers run one at a time: go test runs
// packages in parallel, and a diagnosis in one would otherwise see the
// story another one reproduces. A typical end-to-end test:
//
//	scenario.RequireRoot(t)
//	dev := scenario.LoopDevice(t, 256<<20)
//	scenario.QueueRule(t, dev) // starts udevd if needed
//	scenario.Monitor(t, dev, 200*time.Millisecond)
//	w := scenario.Writer(t, dev, 10*time.Second)
//	// ... run the diagnosis while w runs, then w.Wait()
package scenario

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// RequireRoot skips the test, saying why, unless it runs as root. Because
// everything here touches the real machine, it also skips under -short
// (`make test-unit` runs the tests that need neither root nor BPF).
func RequireRoot(t testing.TB) {
	t.Helper()
	if testing.Short() {
		Skip(t, "scenario: skipped with -short: needs root and changes real devices")
	}
	if os.Geteuid() != 0 {
		Skip(t, "scenario: skipped: needs root (euid is %d) to start udevd, attach loop devices and write sysfs", os.Geteuid())
	}
}

// InMatrix reports whether the tests run in a guest of the qemu kernel
// matrix: make vmtest sets WHYSLOW_VMTEST=1 there.
func InMatrix() bool { return os.Getenv("WHYSLOW_VMTEST") != "" }

// Skip skips t, saying why; in the kernel matrix it fails t instead:
// everything a test there needs (root, the disks, bcache, kprobes, fentry)
// is there by construction, and a test that skips there proves nothing.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	if InMatrix() {
		t.Fatalf("must run in the kernel matrix (WHYSLOW_VMTEST), but: "+format, args...)
	}
	t.Skipf(format, args...)
}

// machineLock is held exclusively by the test process using the helpers.
var machineLock = filepath.Join(stateDir, "machine.lock")

// machine counts this process's tests holding machineLock.
var machine struct {
	sync.Mutex
	refs int
	f    *os.File
}

// Hold makes t's test process the only one changing the machine's block
// devices, as the helpers here do, until t's cleanups have run: tests that
// make devices of their own (the probe tests) call it so that a diagnosis
// running in another test process at the same time (go test runs packages
// in parallel) does not see their freezes.
func Hold(t testing.TB) { hold(t) }

// hold makes this test process the only one using the helpers until t's
// cleanups have run, waiting (at most 15 minutes) for another to finish.
// Every helper calls it first, so its cleanup runs after theirs.
func hold(t testing.TB) {
	t.Helper()
	machine.Lock()
	defer machine.Unlock()
	if machine.refs == 0 {
		if err := os.MkdirAll(stateDir, 0o755); err != nil {
			t.Fatalf("scenario: %v", err)
		}
		f, err := lock(machineLock, unix.LOCK_EX, 0)
		if err != nil {
			t.Logf("scenario: waiting for another test process to finish its scenario (%s)", machineLock)
			if f, err = lock(machineLock, unix.LOCK_EX, 15*time.Minute); err != nil {
				t.Fatalf("scenario: %v", err)
			}
		}
		machine.f = f
		// Nobody else uses the helpers now: undo what test processes
		// killed before their cleanups (go test -timeout) left behind.
		removeStaleRules(t)
		detachStaleLoops(t)
		removeStaleCgroups(t)
	}
	machine.refs++
	t.Cleanup(func() {
		machine.Lock()
		defer machine.Unlock()
		if machine.refs--; machine.refs == 0 {
			machine.f.Close()
			machine.f = nil
		}
	})
}

// waitFor polls cond every 20 ms until it returns true or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether pid names a live (not zombie) process.
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// state is the field after "(comm)"; comm may contain spaces and parens.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	return s[i+2] != 'Z' && s[i+2] != 'X'
}

// comm returns /proc/<pid>/comm without the newline.
func comm(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// errNotFound is returned when a needed program is not installed.
var errNotFound = errors.New("not installed")

// lookPath finds the first of paths that exists, or a name in PATH.
func lookPath(pkg string, candidates ...string) (string, error) {
	for _, c := range candidates {
		if strings.Contains(c, "/") {
			if _, err := os.Stat(c); err == nil {
				return c, nil
			}
			continue
		}
		if p, err := exec.LookPath(c); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s %w: install the %s package (apt-get install %s)", candidates[0], errNotFound, pkg, pkg)
}
