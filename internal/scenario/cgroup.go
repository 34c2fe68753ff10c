package scenario

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/sysattr"
)

// Cgroup is a cgroup a scenario made in the hierarchy of the block I/O
// controller, so that the kernel charges the I/O of the processes in it to
// it: cgroup v1's blkio hierarchy where that is mounted (the controller is
// bound there, as on this project's 6.18 host), else the unified (v2)
// hierarchy with the io controller enabled for its children.
type Cgroup struct {
	Dir  string // its directory, e.g. /sys/fs/cgroup/blkio/whyslow-scenario-1234-backup
	Path string // its path in the hierarchy, e.g. /whyslow-scenario-1234-backup
	V1   bool   // in cgroup v1's blkio hierarchy
}

// cgroupPrefix starts the name of every cgroup made here, followed by the
// pid of the test process, so leftovers of a killed test can be removed.
const cgroupPrefix = "whyslow-scenario-"

var cgroupName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

// IOCgroup makes a cgroup named whyslow-scenario-PID-name (name: lower
// case letters, digits and dashes) in the block I/O controller's
// hierarchy. On cleanup the processes still in it are moved to the root
// and it is removed; the io controller, if it was enabled for the root's
// children here, is disabled again.
func IOCgroup(t testing.TB, name string) *Cgroup {
	t.Helper()
	RequireRoot(t)
	hold(t)
	if !cgroupName.MatchString(name) {
		t.Fatalf("cgroup: bad name %q", name)
	}
	root, v1, err := ioHierarchy()
	if err != nil {
		t.Fatalf("cgroup: %v", err)
	}
	if !v1 {
		enableIO(t, root)
	}
	c := makeCgroup(t, root, name)
	c.V1 = v1
	t.Logf("scenario: made cgroup %s", c.Dir)
	return c
}

// makeCgroup makes the test's cgroup name under root, removed when the
// test ends.
func makeCgroup(t testing.TB, root, name string) *Cgroup {
	t.Helper()
	c := &Cgroup{Dir: filepath.Join(root, fmt.Sprintf("%s%d-%s", cgroupPrefix, os.Getpid(), name))}
	c.Path = "/" + filepath.Base(c.Dir)
	if err := os.Mkdir(c.Dir, 0o755); err != nil {
		t.Fatalf("cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := removeCgroup(c.Dir, root); err != nil {
			t.Errorf("cgroup cleanup: %v", err)
		}
	})
	return c
}

// Enter moves process pid (all its threads) into the cgroup.
func (c *Cgroup) Enter(pid int) error {
	return sysattr.Write(filepath.Join(c.Dir, "cgroup.procs"), strconv.Itoa(pid))
}

// Command returns argv that runs argv in the cgroup: a shell that moves
// itself into it, then execs argv (keeping its pid).
func (c *Cgroup) Command(argv ...string) []string {
	return append([]string{"/bin/sh", "-c", `echo $$ > "$0" && exec "$@"`, filepath.Join(c.Dir, "cgroup.procs")}, argv...)
}

// LimitWriteIOPS caps the writes the cgroup's processes make to dev at
// iops per second: blkio.throttle.write_iops_device on cgroup v1, io.max
// wiops on v2. The limit goes with the cgroup.
func (c *Cgroup) LimitWriteIOPS(dev string, iops int) error {
	id, err := devID(dev)
	if err != nil {
		return err
	}
	if c.V1 {
		return sysattr.Write(filepath.Join(c.Dir, "blkio.throttle.write_iops_device"), fmt.Sprintf("%s %d", id, iops))
	}
	return sysattr.Write(filepath.Join(c.Dir, "io.max"), fmt.Sprintf("%s wiops=%d", id, iops))
}

// LimitReadBPS caps the bytes a second the cgroup's processes read from
// dev: blkio.throttle.read_bps_device on cgroup v1, io.max rbps on v2; 0
// removes the limit. The limit goes with the cgroup.
func (c *Cgroup) LimitReadBPS(dev string, bps int) error {
	id, err := devID(dev)
	if err != nil {
		return err
	}
	if c.V1 {
		return sysattr.Write(filepath.Join(c.Dir, "blkio.throttle.read_bps_device"), fmt.Sprintf("%s %d", id, bps))
	}
	v := strconv.Itoa(bps)
	if bps == 0 {
		v = "max"
	}
	return sysattr.Write(filepath.Join(c.Dir, "io.max"), fmt.Sprintf("%s rbps=%s", id, v))
}

// devID reads major:minor of block device dev from sysfs.
func devID(dev string) (string, error) {
	if err := checkDev(dev); err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join("/sys/block", dev, "dev"))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// ioHierarchy finds the mount point of the block I/O controller's
// hierarchy: a cgroup v1 mount with blkio, else the cgroup2 mount.
func ioHierarchy() (root string, v1 bool, err error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", false, err
	}
	defer f.Close()
	var v2 string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if sep < 5 || sep+3 >= len(fields) || fields[3] != "/" {
			continue
		}
		switch fields[sep+1] {
		case "cgroup":
			if slices.Contains(strings.Split(fields[sep+3], ","), "blkio") {
				return fields[4], true, nil
			}
		case "cgroup2":
			if v2 == "" {
				v2 = fields[4]
			}
		}
	}
	if v2 == "" {
		return "", false, errors.New("no cgroup v1 blkio nor cgroup2 mount in /proc/self/mountinfo")
	}
	return v2, false, nil
}

// enableIO enables the io controller for the children of the cgroup2 root
// when it is available there and not yet enabled, and disables it again on
// cleanup.
func enableIO(t testing.TB, root string) {
	t.Helper()
	avail, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	if err != nil || !slices.Contains(strings.Fields(string(avail)), "io") {
		t.Logf("scenario: cgroup2 at %s offers no io controller: I/O is charged to the root", root)
		return
	}
	ctl := filepath.Join(root, "cgroup.subtree_control")
	on, err := os.ReadFile(ctl)
	if err == nil && slices.Contains(strings.Fields(string(on)), "io") {
		return
	}
	if err := sysattr.Write(ctl, "+io"); err != nil {
		t.Fatalf("cgroup: enabling io in %s: %v", ctl, err)
	}
	t.Cleanup(func() {
		if err := sysattr.Write(ctl, "-io"); err != nil {
			t.Logf("scenario: disabling io in %s again: %v", ctl, err)
		}
	})
}

// removeCgroup moves the processes left in dir to the root cgroup and
// removes dir, retrying while exiting processes keep it busy.
func removeCgroup(dir, root string) error {
	var err error
	for try := 0; try < 50; try++ {
		if b, rerr := os.ReadFile(filepath.Join(dir, "cgroup.procs")); rerr == nil {
			for _, pid := range strings.Fields(string(b)) {
				_ = sysattr.Write(filepath.Join(root, "cgroup.procs"), pid)
			}
		}
		if err = unix.Rmdir(dir); err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("removing %s: %w", dir, err)
}

// removeStaleCgroups removes the cgroups this package made in test
// processes that no longer exist.
func removeStaleCgroups(t testing.TB) {
	root, _, err := ioHierarchy()
	if err != nil {
		return
	}
	dirs, _ := filepath.Glob(filepath.Join(root, cgroupPrefix+"*"))
	for _, dir := range dirs {
		rest := strings.TrimPrefix(filepath.Base(dir), cgroupPrefix)
		pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
		if err != nil || alive(pid) {
			continue
		}
		if err := removeCgroup(dir, root); err != nil {
			t.Logf("scenario: %v", err)
		} else {
			t.Logf("scenario: removed cgroup %s left over by dead test process %d", dir, pid)
		}
	}
}

// PressureCgroup makes a cgroup named whyslow-scenario-PID-name in the
// cgroup v2 hierarchy, with no controller of its own: its io.pressure and
// memory.pressure count the stalls of its processes (PSI per cgroup),
// whichever hierarchy the block I/O controller is in. On cleanup the
// processes still in it are moved to the root and it is removed. It
// skips, saying why, where no cgroup v2 with PSI is mounted.
func PressureCgroup(t testing.TB, name string) *Cgroup {
	t.Helper()
	RequireRoot(t)
	if !cgroupName.MatchString(name) {
		t.Fatalf("cgroup: bad name %q", name)
	}
	root, err := cgroup2Root()
	if err != nil {
		Skip(t, "no cgroup v2 hierarchy: %v", err)
	}
	c := makeCgroup(t, root, name)
	if _, err := os.Stat(filepath.Join(c.Dir, "io.pressure")); err != nil {
		Skip(t, "cgroup v2 %s has no io.pressure (a kernel without PSI, or psi=0): %v", c.Dir, err)
	}
	t.Logf("scenario: made cgroup %s", c.Dir)
	return c
}

// cgroup2Root is the mount point of the cgroup v2 hierarchy.
func cgroup2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if sep < 5 || sep+1 >= len(fields) || fields[3] != "/" {
			continue
		}
		if fields[sep+1] == "cgroup2" {
			return fields[4], nil
		}
	}
	return "", errors.New("no cgroup2 mount in /proc/self/mountinfo")
}
