package selftest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/command"
	"github.com/whyslow/whyslow/internal/sysattr"
	"github.com/whyslow/whyslow/internal/udevd"
)

// rulesDir is where the selftest's udev rule goes: udevd reads it, and it
// is on /run, so that even a rule nothing removed is gone at the next boot.
const rulesDir = "/run/udev/rules.d"

// rulePrefix starts the name of the selftest's rule files.
const rulePrefix = "99-whyslow-selftest-"

// trigger makes the kernel send a "change" uevent for dev.
func trigger(dev string) error {
	return sysattr.Write(filepath.Join("/sys/block", dev, "uevent"), "change")
}

func settle() error {
	_, err := command.Run(40*time.Second, "udevadm", "settle", "--timeout=30")
	return err
}

func reloadRules() error {
	_, err := command.Run(30*time.Second, "udevadm", "control", "--reload")
	return err
}

// ruleMark is in every rule file the selftest writes: a rule is removed
// only if it has it.
func ruleMark(pid int) string { return fmt.Sprintf("whyslow-selftest-pid-%d", pid) }

// removeRule removes a rule file of the selftest (one holding mark), lets
// udevd know and waits for the events queued until then.
func removeRule(path, mark string) error {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if !bytes.Contains(b, []byte(mark)) {
		return fmt.Errorf("%s is not the selftest's (no %s in it): left as it is", path, mark)
	}
	if err := os.Remove(path); err != nil {
		return err
	}
	if err := reloadRules(); err != nil {
		return err
	}
	return settle()
}

// removeStaleRules removes the rule files of selftests that died before
// they and their guard could (the whole process tree killed at once).
func removeStaleRules() []string {
	files, _ := filepath.Glob(filepath.Join(rulesDir, rulePrefix+"*.rules"))
	var removed []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		_, rest, ok := strings.Cut(string(b), "whyslow-selftest-pid-")
		if !ok {
			continue
		}
		num, _, _ := strings.Cut(rest, "\n")
		pid, err := strconv.Atoi(strings.TrimSpace(num))
		if err != nil || alive(pid) {
			continue
		}
		if os.Remove(f) == nil {
			removed = append(removed, f)
		}
	}
	if len(removed) > 0 {
		reloadRules()
	}
	return removed
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// startUdevd starts udevd as a daemon and returns its pid.
func startUdevd() (int, error) {
	var bin string
	for _, c := range []string{"/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd", "systemd-udevd", "/sbin/udevd", "udevd"} {
		if p, err := exec.LookPath(c); err == nil {
			bin = p
			break
		}
	}
	if bin == "" {
		return 0, errors.New("no udevd is running and none was found to start (systemd-udevd, udevd: Debian package udev)")
	}
	// The daemon's parent exits at once: the selftest takes the daemon as
	// its child for the while, to reap it once it stopped it (pid 1 of a
	// container may not).
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err == nil {
		defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	}
	if _, err := command.Run(30*time.Second, bin, "--daemon"); err != nil {
		return 0, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if pid := udevd.Find(); pid != 0 {
			if _, err := command.Run(10*time.Second, "udevadm", "control", "--ping"); err == nil {
				return pid, nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if pid := udevd.Find(); pid != 0 {
		stopUdevd(pid)
	}
	return 0, fmt.Errorf("%s --daemon: udevd does not answer", bin)
}

// stopUdevd stops a udevd the selftest started.
func stopUdevd(pid int) error {
	if c := comm(pid); c != "systemd-udevd" && c != "udevd" {
		return nil // gone (or the pid is another process's now)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		// Reaped here when the selftest is its parent (startUdevd).
		var ws unix.WaitStatus
		n, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if n == pid || errors.Is(err, unix.ECHILD) && !alive(pid) {
			return nil
		}
		if errors.Is(err, unix.ECHILD) && strings.Contains(stat(pid), ") Z ") {
			return nil // another's child: its parent reaps it
		}
		time.Sleep(50 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	return nil
}

func stat(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return string(b)
}

// loopDevice is a loop device the selftest attached.
type loopDevice struct {
	name string // loopN
	f    *os.File
}

// attachLoop attaches a loop device over a new unnamed file of size bytes
// (O_TMPFILE: it has no name to leave behind) with LO_FLAGS_AUTOCLEAR: the
// kernel detaches it once the last file open on it is closed, so that
// even a selftest killed leaves no device.
func attachLoop(size int64) (*loopDevice, error) {
	var backing int = -1
	var err error
	for _, dir := range []string{"/var/tmp", os.TempDir()} {
		if backing, err = unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600); err == nil {
			break
		}
	}
	if backing < 0 {
		return nil, fmt.Errorf("creating the loop device's backing file (O_TMPFILE in /var/tmp, %s): %w", os.TempDir(), err)
	}
	defer unix.Close(backing)
	if err := unix.Ftruncate(backing, size); err != nil {
		return nil, fmt.Errorf("sizing the loop device's backing file: %w", err)
	}
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("loop devices: %w (is the loop module loaded? modprobe loop)", err)
	}
	defer ctl.Close()
	for try := 0; try < 10; try++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("finding a free loop device: %w", err)
		}
		name := fmt.Sprintf("loop%d", n)
		f, err := openDev("/dev/" + name)
		if err != nil {
			return nil, err
		}
		cfg := unix.LoopConfig{Fd: uint32(backing)}
		cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
		copy(cfg.Info.File_name[:], "whyslow-selftest")
		err = unix.IoctlLoopConfigure(int(f.Fd()), &cfg)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) {
			// Before 5.8: no LOOP_CONFIGURE.
			if err = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_FD, backing); err == nil {
				if err = unix.IoctlLoopSetStatus64(int(f.Fd()), &cfg.Info); err != nil {
					unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
				}
			}
		}
		if errors.Is(err, unix.EBUSY) {
			f.Close() // another process took it first
			continue
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("attaching /dev/%s: %w", name, err)
		}
		return &loopDevice{name: name, f: f}, nil
	}
	return nil, errors.New("attaching a loop device: every free one was taken by another process first, 10 times")
}

// openDev opens a device node, waiting a little for devtmpfs to make it.
func openDev(path string) (*os.File, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err == nil || !os.IsNotExist(err) || time.Now().After(deadline) {
			if err != nil {
				return nil, fmt.Errorf("opening %s: %w", path, err)
			}
			return f, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// detach closes the selftest's file of the loop device; the kernel
// detaches it once nobody else holds it open (udev's workers may, for a
// moment).
func (l *loopDevice) detach() error {
	if l.f == nil {
		return nil
	}
	l.f.Close()
	l.f = nil
	if !waitDetached(l.name, 10*time.Second) {
		return fmt.Errorf("/dev/%s is still attached 10 s after the selftest closed it (something else holds it open)", l.name)
	}
	return nil
}
