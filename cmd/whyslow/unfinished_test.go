package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/scenario"
	"github.com/whyslow/whyslow/internal/tracefile"
)

// hungReader starts, in cgroup c, a single 1 MiB O_DIRECT read of dev
// that its cgroup's read limit holds past the run. On cleanup the limit
// is lifted (the read then ends) and the reader is killed and reaped.
func hungReader(t *testing.T, c *scenario.Cgroup, dev string) *exec.Cmd {
	t.Helper()
	argv := c.Command("dd", "if=/dev/"+dev, "of=/dev/null", "bs=1M", "count=1", "iflag=direct", "status=none")
	cmd := exec.Command(argv[0], argv[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.LimitReadBPS(dev, 0); err != nil {
			t.Errorf("lifting the read limit: %v", err)
		}
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

// A read a cgroup's read limit holds for longer than the run never
// returns while whyslow watches: one began before the run, one during it.
// Both are in affected[], still in their call when the run ended, with
// the device and most of the run in it; the top finding is
// cgroup-throttle naming both readers as throttled. The device is a
// disk: a disk-backed loop device here, the unthrottled virtio disk in
// the kernels of the matrix (limitDisk; their /tmp is in memory).
func TestUnfinishedThrottledRead(t *testing.T) {
	scenario.RequireRoot(t)
	dev := limitDisk(t)
	c := scenario.IOCgroup(t, "hung")
	if err := c.LimitReadBPS(dev, 4096); err != nil {
		t.Fatal(err)
	}
	before := hungReader(t, c, dev)
	time.Sleep(300 * time.Millisecond) // in its read before the run starts
	const d = 5 * time.Second
	var during *exec.Cmd
	trace := tracePath(t, cgroupTraceName(c, "unfinished", ""))
	// The run lasts d from its ready signal (every probe attached), when
	// the second reader starts; a call in progress before the run counts
	// from the probe's start, between whyslow's launch and the ready
	// signal: up to the time whyslow took to start its probes (seconds in
	// a guest under emulation) longer than d.
	launched := time.Now()
	var startup time.Duration
	rep := diagnoseUnder(t, d, func() func() {
		startup = time.Since(launched)
		during = hungReader(t, c, dev)
		return func() {}
	}, "--record", trace)
	t.Logf("findings:\n%saffected:\n%s", summary(rep), affectedSummary(rep))
	t.Logf("whyslow was ready %v after its launch", startup)
	for _, r := range []struct {
		name     string
		cmd      *exec.Cmd
		min, max time.Duration
	}{{"began before the run", before, d - 500*time.Millisecond, startup + d + 3*time.Second}, {"began during the run", during, d - 1500*time.Millisecond, d + 3*time.Second}} {
		a, ok := findAffected(rep, r.cmd.Process.Pid)
		if !ok {
			t.Errorf("the reader that %s (pid %d) is not in affected[]", r.name, r.cmd.Process.Pid)
			continue
		}
		i := slices.IndexFunc(a.Unfinished, func(u report.UnfinishedCall) bool { return u.Syscall == "read" && u.Device == dev })
		if i < 0 {
			t.Errorf("the reader that %s: no unfinished read on %s in %+v", r.name, dev, a.Unfinished)
			continue
		}
		u := a.Unfinished[i]
		if got := time.Duration(u.InCallMs * float64(time.Millisecond)); got < r.min || got > r.max {
			t.Errorf("the reader that %s: %v in its read, want %v to %v", r.name, got, r.min, r.max)
		}
		if u.BlockedMs < 0.9*u.InCallMs || a.TotalMs < u.InCallMs {
			t.Errorf("the reader that %s: blocked %.0f ms of %.0f ms in the call, process total %.0f ms", r.name, u.BlockedMs, u.InCallMs, a.TotalMs)
		}
		if c, ok := affectedCall(a, "read"); !ok || c.Unfinished != 1 {
			t.Errorf("the reader that %s: calls %+v, want read with 1 unfinished", r.name, a.Calls)
		}
	}
	// The one that began during the run was seen by the probe's BPF side
	// (its entry and first sleep), the other found in /proc at the end.
	tl, _, err := tracefile.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct {
		cmd    *exec.Cmd
		before bool
	}{{before, true}, {during, false}} {
		i := slices.IndexFunc(tl.UnfinishedCalls, func(u event.UnfinishedCall) bool { return int(u.Task.Tgid) == r.cmd.Process.Pid })
		if i < 0 {
			t.Errorf("no unfinished_call record of pid %d in the trace", r.cmd.Process.Pid)
		} else if u := tl.UnfinishedCalls[i]; u.Before != r.before || len(u.KernelStack) == 0 {
			t.Errorf("unfinished_call of pid %d: before %v (want %v), %d frames", r.cmd.Process.Pid, u.Before, r.before, len(u.KernelStack))
		}
	}
	if len(rep.Findings) == 0 || rep.Findings[0].Rule != "cgroup-throttle" {
		t.Fatalf("top finding is not cgroup-throttle:\n%s", summary(rep))
	}
	f := rep.Findings[0]
	t.Logf("title: %s\nexplain: %s", f.Title, f.Explanation)
	if !slices.Contains(f.Devices, dev) || !strings.Contains(f.Title, c.Path) {
		t.Errorf("finding does not name %s and cgroup %s: %s %v", dev, c.Path, f.Title, f.Devices)
	}
	// The reads are held, not served: the text says so, never that the
	// cgroup's reads ran at a multiple of the limit (cgroup v1 counts the
	// bytes when the throttle takes them, before they are served).
	if !strings.Contains(f.Explanation, "still held when the run ended") || strings.Contains(f.Explanation, "while it did I/O") {
		t.Errorf("explanation does not say a read was still held, or says the reads ran at a rate: %s", f.Explanation)
	}
	for _, r := range []*exec.Cmd{before, during} {
		if !slices.ContainsFunc(f.Processes, func(p report.Process) bool { return int(p.Pid) == r.Process.Pid && p.Role == "throttled" }) {
			t.Errorf("finding's processes %+v do not name dd (pid %d) as throttled", f.Processes, r.Process.Pid)
		}
	}
}

// A writer busy in short storage calls for the whole run (pwrite and
// fdatasync on a disk-backed loop device, a call every millisecond or
// so, in D most of the time) has calls in progress when the run ends,
// each some milliseconds old. None may be taken for a call hung since the
// run began: one its thread entered once the probe's programs were
// detached looks so in /proc. Three runs, since whether a thread is
// between two calls at the end is chance.
func TestUnfinishedNotForBusyWriters(t *testing.T) {
	scenario.RequireRoot(t)
	dev := scenario.DiskLoop(t, 64<<20)
	const d = time.Second
	w := scenario.StartJob(t, scenario.Job{Dev: dev, RW: "randwrite", Direct: true, Fdatasync: 1, NumJobs: 4, Duration: 30 * time.Second})
	for run := range 3 {
		rep := diagnoseUnder(t, d, func() func() { return func() {} })
		a, ok := findAffected(rep, w.Pid)
		if !ok {
			t.Fatalf("run %d: the writer (pid %d) is not in affected[]:\n%s", run, w.Pid, affectedSummary(rep))
		}
		for _, u := range a.Unfinished {
			if u.InCallMs >= 500 {
				t.Errorf("run %d: the writer's %s (tid %d) is said in its call for %.0f ms; its calls take milliseconds", run, u.Syscall, u.Tid, u.InCallMs)
			}
		}
	}
}
