package scenario

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Daemon is a running monitoring daemon started by Monitor.
type Daemon struct {
	Pid     int    // pid of raidmon (also its process group)
	Dir     string // the temp dir holding the scripts, the log and raidmon's output
	Raidmon string // path of the daemon script
	Arcconf string // path of the fake RAID CLI
	Log     string // arcconf appends "<its pid> <its parent pid>" here on every run
	Output  string // raidmon's stdout and stderr (the grep'ed temperature lines)

	done     chan struct{}
	stopOnce sync.Once
	stopErr  error
}

// Run is one execution of arcconf, read from the daemon's log.
type Run struct {
	Pid  int // the arcconf process
	PPid int // its parent: raidmon
}

// Monitor starts the story's monitoring daemon for dev: a /bin/sh script
// named raidmon that every period runs `arcconf getconfig 1 AL | grep
// Temperature`. arcconf is a fake RAID CLI that, like the real one, makes
// the kernel send a "change" uevent for the block device (it writes
// "change" to /sys/block/<dev>/uevent), then prints a controller report and
// logs its run. Each exec of arcconf has parent comm "raidmon". Stop, or the
// cleanup, kills the daemon's whole process group.
func Monitor(t testing.TB, dev string, period time.Duration) *Daemon {
	t.Helper()
	return MonitorDevices(t, []string{dev}, period)
}

// MonitorDevices is Monitor for several block devices: each run of arcconf
// makes a "change" uevent for every one of them.
func MonitorDevices(t testing.TB, devs []string, period time.Duration) *Daemon {
	t.Helper()
	if len(devs) == 0 {
		t.Fatalf("monitor: no device")
	}
	for _, dev := range devs {
		if err := checkDev(dev); err != nil {
			t.Fatalf("monitor: %v", err)
		}
	}
	return monitor(t, "for dev in "+strings.Join(devs, " ")+"; do echo change > /sys/block/$dev/uevent; done", period)
}

// MonitorAll is Monitor for the whole machine, as the seed's
// temperature check was: each run of arcconf makes a "change" uevent for
// every block device there is then (every /sys/block/*: the disks, the
// devices stacked on them, loop devices), as a controller rescan does.
func MonitorAll(t testing.TB, period time.Duration) *Daemon {
	t.Helper()
	return monitor(t, "for dev in /sys/block/*; do echo change > $dev/uevent; done", period)
}

// monitor starts raidmon with an arcconf whose uevents come from the
// shell command changes.
func monitor(t testing.TB, changes string, period time.Duration) *Daemon {
	t.Helper()
	RequireRoot(t)
	hold(t)
	if period <= 0 {
		t.Fatalf("monitor: period %v must be positive", period)
	}
	dir := t.TempDir()
	d := &Daemon{
		Dir:     dir,
		Raidmon: filepath.Join(dir, "raidmon"),
		Arcconf: filepath.Join(dir, "arcconf"),
		Log:     filepath.Join(dir, "arcconf.log"),
		Output:  filepath.Join(dir, "raidmon.out"),
		done:    make(chan struct{}),
	}
	raidmon := fmt.Sprintf(`#!/bin/sh
# raidmon: polls the RAID controller's temperature every %[1]s.
PATH=%[2]s:$PATH
while :; do
	arcconf getconfig 1 AL | grep Temperature
	sleep %.3[3]f
done
`, period, dir, period.Seconds())
	arcconf := fmt.Sprintf(`#!/bin/sh
# arcconf: a stand-in for Adaptec's RAID CLI. Asking the controller for its
# configuration rescans its devices, and the kernel sends "change" uevents.
%[1]s
cat <<'EOF'
Controllers found: 1
----------------------------------------------------------------------
Controller information
----------------------------------------------------------------------
   Controller Status                        : Optimal
   Controller Model                         : Adaptec ASR8805
   Temperature                              : 38 C/ 100 F (Normal)
   Defunct disk drive count                 : 0
   Logical devices/Failed/Degraded          : 1/0/0
EOF
echo "$$ $PPID" >> %[2]s
`, changes, d.Log)
	for path, text := range map[string]string{d.Raidmon: raidmon, d.Arcconf: arcconf} {
		if err := os.WriteFile(path, []byte(text), 0o755); err != nil {
			t.Fatalf("monitor: %v", err)
		}
	}
	out, err := os.Create(d.Output)
	if err != nil {
		t.Fatalf("monitor: %v", err)
	}
	defer out.Close()

	cmd := exec.Command(d.Raidmon)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	// Pdeathsig: a test process killed by its timeout takes raidmon along.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("monitor: starting %s: %v", d.Raidmon, err)
	}
	d.Pid = cmd.Process.Pid
	go func() {
		cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("monitor cleanup: %v", err)
		}
	})
	return d
}

// Stop kills the daemon's process group (raidmon, and arcconf, grep or
// sleep if running) and waits for raidmon to exit. It may be called more
// than once.
func (d *Daemon) Stop() error {
	d.stopOnce.Do(func() {
		syscall.Kill(-d.Pid, syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-d.Pid, syscall.SIGKILL)
			select {
			case <-d.done:
			case <-time.After(5 * time.Second):
				d.stopErr = fmt.Errorf("raidmon (pid %d) did not exit after SIGKILL", d.Pid)
				return
			}
		}
		// Children that were between fork and exec when the group was
		// signalled got the signal too; make sure none is left.
		syscall.Kill(-d.Pid, syscall.SIGKILL)
	})
	return d.stopErr
}

// Runs returns the runs of arcconf logged so far.
func (d *Daemon) Runs() ([]Run, error) {
	f, err := os.Open(d.Log)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var runs []Run
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 2 {
			continue // a line being written
		}
		pid, err1 := strconv.Atoi(fs[0])
		ppid, err2 := strconv.Atoi(fs[1])
		if err1 != nil || err2 != nil {
			continue
		}
		runs = append(runs, Run{Pid: pid, PPid: ppid})
	}
	return runs, sc.Err()
}

// WaitRuns waits until arcconf has run at least n times, at most timeout.
func (d *Daemon) WaitRuns(n int, timeout time.Duration) ([]Run, error) {
	var runs []Run
	var err error
	if waitFor(timeout, func() bool {
		runs, err = d.Runs()
		return err == nil && len(runs) >= n
	}) {
		return runs, nil
	}
	if err != nil {
		return runs, err
	}
	return runs, fmt.Errorf("arcconf ran %d times in %v, want %d", len(runs), timeout, n)
}
