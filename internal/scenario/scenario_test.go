package scenario

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/udevd"
)

const testDevSize = 64 << 20

// TestQueueRuleRewritesAttributes checks that the installed rule, and only a
// change uevent, rewrites the queue attributes to the rule's values.
func TestQueueRuleRewritesAttributes(t *testing.T) {
	RequireRoot(t)
	dev := LoopDevice(t, testDevSize)
	r := QueueRule(t, dev)
	if _, err := os.Stat(r.Path); err != nil {
		t.Fatalf("rule file: %v", err)
	}
	tests := []struct {
		name    string
		sched   string
		nr      int
		trigger bool
	}{
		{"none/32 then change", "none", 32, true},
		{"none/16 then change", "none", 16, true},
		{"kyber/16 then change", "kyber", 16, true},
		{"bfq/32 then change", "bfq", 32, true},
		{"none/32 without uevent stays", "none", 32, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, err := ReadQueue(dev)
			if err != nil {
				t.Fatal(err)
			}
			if !q.Offers(tt.sched) {
				t.Skipf("%s does not offer %s (offers %v)", dev, tt.sched, q.Offered)
			}
			if err := SetQueue(dev, tt.sched, tt.nr); err != nil {
				t.Fatal(err)
			}
			if q, err = ReadQueue(dev); err != nil || q.Scheduler != tt.sched || q.NrRequests != tt.nr {
				t.Fatalf("after SetQueue(%s, %d): %+v, %v", tt.sched, tt.nr, q, err)
			}
			want := Queue{Scheduler: tt.sched, NrRequests: tt.nr}
			if tt.trigger {
				want = Queue{Scheduler: r.Scheduler, NrRequests: r.NrRequests}
				if err := Trigger(dev); err != nil {
					t.Fatal(err)
				}
			}
			if err := Settle(); err != nil {
				t.Fatal(err)
			}
			ok := waitFor(5*time.Second, func() bool {
				q, err = ReadQueue(dev)
				return err == nil && q.Scheduler == want.Scheduler && q.NrRequests == want.NrRequests
			})
			if !tt.trigger {
				// Nothing should happen; give a wrong rule time to show.
				time.Sleep(300 * time.Millisecond)
				q, err = ReadQueue(dev)
				ok = err == nil && q.Scheduler == want.Scheduler && q.NrRequests == want.NrRequests
			}
			if !ok {
				t.Errorf("scheduler %q nr_requests %d (err %v), want %q %d", q.Scheduler, q.NrRequests, err, want.Scheduler, want.NrRequests)
			}
		})
	}
}

// TestMonitorExecsArcconfWithUevents checks that raidmon runs arcconf every
// period as its child and that every run sends a change uevent for the
// device.
func TestMonitorExecsArcconfWithUevents(t *testing.T) {
	RequireRoot(t)
	dev := LoopDevice(t, testDevSize)
	l := listenUevents(t)
	d := Monitor(t, dev, 150*time.Millisecond)
	if _, err := d.WaitRuns(4, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if c := comm(d.Pid); c != "raidmon" {
		t.Errorf("daemon comm %q, want raidmon", c)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	runs, err := d.Runs()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range runs {
		if r.PPid != d.Pid {
			t.Errorf("arcconf pid %d has parent %d, want raidmon %d", r.Pid, r.PPid, d.Pid)
		}
	}
	out, err := os.ReadFile(d.Output)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(out, []byte("Temperature")); n < len(runs)-1 || n == 0 {
		t.Errorf("raidmon printed %d temperature lines for %d runs:\n%s", n, len(runs), out)
	}
	changes, err := l.changes(dev, 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d arcconf runs, %d change uevents for %s", len(runs), changes, dev)
	if changes < len(runs) {
		t.Errorf("%d change uevents for %s, want at least one per arcconf run (%d)", changes, dev, len(runs))
	}
}

// TestWriterKeepsDeviceBusy checks that the writer writes to the device
// with I/O in flight while it runs.
func TestWriterKeepsDeviceBusy(t *testing.T) {
	RequireRoot(t)
	dev := LoopDevice(t, testDevSize)
	before, err := readStat(dev)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	w := Writer(t, dev, 2*time.Second)
	var samples, busy, threads int
	for running := true; running; {
		select {
		case <-w.Done():
			running = false
		case <-time.After(10 * time.Millisecond):
			if n, err := readInflightWrites(dev); err == nil {
				samples++
				if n > 0 {
					busy++
				}
			}
			if tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", w.Pid)); err == nil {
				threads = max(threads, len(tasks))
			}
		}
	}
	res, err := w.Wait()
	if err != nil {
		t.Fatal(err)
	}
	after, err := readStat(dev)
	if err != nil {
		t.Fatal(err)
	}
	wall := time.Since(start)
	ticks := time.Duration(after[9]-before[9]) * time.Millisecond
	t.Logf("fio: %v", res)
	t.Logf("%s: %d writes, io_ticks %v in %v; writes in flight in %d of %d samples; fio threads %d",
		dev, after[4]-before[4], ticks, wall.Round(time.Millisecond), busy, samples, threads)
	if res.Writes == 0 || res.Syncs == 0 {
		t.Errorf("fio did %d writes and %d fdatasyncs, want both", res.Writes, res.Syncs)
	}
	if got := after[4] - before[4]; got < uint64(res.Writes) {
		t.Errorf("%s completed %d writes, fio reports %d", dev, got, res.Writes)
	}
	if busy == 0 {
		t.Errorf("no write in flight on %s in %d samples", dev, samples)
	}
	if threads < 3 {
		t.Errorf("fio had at most %d threads, want main + 2 jobs", threads)
	}
}

// TestStoryStallsWriter runs the whole story and checks that the writer's
// submissions block entering the frozen queue. It reports what it sees
// without the trigger too, but asserts only the run with it.
func TestStoryStallsWriter(t *testing.T) {
	RequireRoot(t)
	Udevd(t)
	dev := LoopDevice(t, testDevSize)
	const dur = 4 * time.Second

	run := func(name string) (Stacks, *FioResult) {
		w := Writer(t, dev, dur)
		st := SampleStacks(w.Pid, dur+30*time.Second, 5*time.Millisecond)
		res, err := w.Wait()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("%s: fio %v", name, res)
		t.Logf("%s: %v; innermost functions %v", name, st, top(st.Top, 4))
		return st, res
	}
	run("without trigger")

	QueueRule(t, dev)
	d := Monitor(t, dev, 200*time.Millisecond)
	st, res := run("with trigger")
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	runs, _ := d.Runs()
	t.Logf("with trigger: arcconf ran %d times", len(runs))
	if len(runs) < 2 {
		t.Errorf("arcconf ran %d times in %v, want several", len(runs), dur)
	}
	if st.QueueEnter == 0 {
		t.Errorf("no fio thread seen blocked in %v in %d stack samples with the trigger running", queueEnterFuncs, st.Samples)
	}
	if res.LatMax < time.Millisecond {
		t.Errorf("fio max write latency %v with the trigger running, want >= 1ms", res.LatMax)
	}
}

// TestCleanupRestoresMachine stops a subtest midway with everything running
// and checks that its cleanups put the machine back.
func TestCleanupRestoresMachine(t *testing.T) {
	RequireRoot(t)
	hold(t) // no other test process may take the device between cleanup and checks
	udevdBefore := udevd.Find()
	var (
		dev     string
		orig    Queue
		rule    Rule
		udevd   int
		monitor int
		writer  int
	)
	t.Run("midway", func(t *testing.T) {
		udevd = Udevd(t)
		dev = LoopDevice(t, testDevSize)
		var err error
		if orig, err = ReadQueue(dev); err != nil {
			t.Fatal(err)
		}
		rule = QueueRule(t, dev)
		d := Monitor(t, dev, 100*time.Millisecond)
		monitor = d.Pid
		writer = Writer(t, dev, time.Minute).Pid
		if _, err := d.WaitRuns(2, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		t.Log("stopping midway with everything running (SkipNow exits like FailNow)")
		t.SkipNow()
	})
	if dev == "" {
		t.Fatal("subtest did not set up")
	}
	if _, err := os.Stat(rule.Path); !os.IsNotExist(err) {
		t.Errorf("rule %s still there (stat: %v)", rule.Path, err)
	}
	if b, err := os.ReadFile(filepath.Join("/sys/block", dev, "loop", "backing_file")); err == nil &&
		strings.Contains(string(b), backingPrefix+strconv.Itoa(os.Getpid())) {
		t.Errorf("%s still attached to %s", dev, bytes.TrimSpace(b))
	}
	if q, err := ReadQueue(dev); err != nil || q.Scheduler != orig.Scheduler || q.NrRequests != orig.NrRequests {
		t.Errorf("%s queue %+v (err %v), want scheduler %s nr_requests %d restored", dev, q, err, orig.Scheduler, orig.NrRequests)
	}
	for name, pid := range map[string]int{"raidmon": monitor, "fio": writer} {
		if alive(pid) {
			t.Errorf("%s (pid %d) still running", name, pid)
		}
	}
	if pids := groupMembers(monitor); len(pids) > 0 {
		t.Errorf("processes %v of raidmon's group still running", pids)
	}
	if udevdBefore == 0 && alive(udevd) && !udevdInUse(t) {
		t.Errorf("systemd-udevd (pid %d) started by the test still runs and nobody uses it", udevd)
	}
	if udevdBefore != 0 && !alive(udevdBefore) {
		t.Errorf("systemd-udevd (pid %d) that ran before the test was stopped", udevdBefore)
	}
}

// udevdInUse reports whether another test process holds udevd.
func udevdInUse(t *testing.T) bool {
	mutex, err := lock(udevdMutex, unix.LOCK_EX, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer mutex.Close()
	f, err := lock(udevdUsers, unix.LOCK_EX, 0)
	if err != nil {
		return true
	}
	f.Close()
	return false
}

// groupMembers lists the live processes in process group pgid.
func groupMembers(pgid int) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, err := unix.Getpgid(pid); err == nil && g == pgid && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestStackFuncs checks the parsing of /proc/<pid>/stack dumps.
func TestStackFuncs(t *testing.T) {
	tests := []struct {
		dump string
		want []string
	}{
		{"", nil},
		{"[<0>] __bio_queue_enter+0x14e/0x260\n[<0>] blk_mq_submit_bio+0x3c4/0x7e0\n", []string{"__bio_queue_enter", "blk_mq_submit_bio"}},
		{"[<0>] loop_queue_work+0x10/0x20 [loop]\n", []string{"loop_queue_work"}},
		{"garbage\n", nil},
	}
	for _, tt := range tests {
		got := stackFuncs(tt.dump)
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("stackFuncs(%q) = %v, want %v", tt.dump, got, tt.want)
		}
	}
}

// TestParseFio checks the reading of fio's JSON report, with a leading note.
func TestParseFio(t *testing.T) {
	report := `note: both iodepth >= 1 and synchronous I/O engine are selected
{"jobs": [
 {"error": 0, "write": {"total_ios": 100, "lat_ns": {"max": 30000000, "mean": 1000, "N": 100}, "slat_ns": {"max": 0}, "clat_ns": {"max": 29000000}},
  "sync": {"lat_ns": {"max": 5000000, "mean": 2000, "N": 100}}},
 {"error": 0, "write": {"total_ios": 300, "lat_ns": {"max": 2000000, "mean": 3000, "N": 300}, "slat_ns": {"max": 0}, "clat_ns": {"max": 1900000}},
  "sync": {"lat_ns": {"max": 7000000, "mean": 4000, "N": 300}}}
]}`
	r, err := parseFio([]byte(report))
	if err != nil {
		t.Fatal(err)
	}
	want := FioResult{Jobs: 2, Writes: 400, Syncs: 400, LatMax: 30 * time.Millisecond, LatMean: 2500,
		ClatMax: 29 * time.Millisecond, SyncMax: 7 * time.Millisecond, SyncMean: 3500}
	if *r != want {
		t.Errorf("parseFio = %+v, want %+v", *r, want)
	}
	// One report for both threads (--group_reporting) has the percentiles.
	grouped := `{"jobs": [{"error": 0, "write": {"total_ios": 400, "lat_ns": {"max": 30000000, "mean": 2500, "N": 400},
	  "clat_ns": {"max": 29000000, "percentile": {"50.000000": 2000, "99.000000": 20000}}},
	  "sync": {"lat_ns": {"max": 7000000, "mean": 3500, "N": 400, "percentile": {"50.000000": 3000, "99.000000": 6000000}}}}]}`
	r, err = parseFio([]byte(grouped))
	if err != nil {
		t.Fatal(err)
	}
	want = FioResult{Jobs: 1, Writes: 400, Syncs: 400, LatMax: 30 * time.Millisecond, LatMean: 2500, ClatMax: 29 * time.Millisecond,
		SyncMax: 7 * time.Millisecond, SyncMean: 3500, ClatP50: 2000, ClatP99: 20000, SyncP50: 3000, SyncP99: 6 * time.Millisecond}
	if *r != want {
		t.Errorf("parseFio(grouped) = %+v, want %+v", *r, want)
	}
	for _, bad := range []string{"", "fio: error", `{"jobs": []}`, `{"jobs": [{"error": 5}]}`, `{"jobs": [`} {
		if _, err := parseFio([]byte(bad)); err == nil {
			t.Errorf("parseFio(%q) did not fail", bad)
		}
	}
}

// top returns the n most frequent keys of m with their counts.
func top(m map[string]int, n int) string {
	type kv struct {
		k string
		v int
	}
	var all []kv
	for k, v := range m {
		all = append(all, kv{k, v})
	}
	for i := range all { // small: selection sort keeps it dependency-free
		for j := i + 1; j < len(all); j++ {
			if all[j].v > all[i].v || (all[j].v == all[i].v && all[j].k < all[i].k) {
				all[i], all[j] = all[j], all[i]
			}
		}
	}
	var parts []string
	for i := 0; i < len(all) && i < n; i++ {
		parts = append(parts, fmt.Sprintf("%s:%d", all[i].k, all[i].v))
	}
	return strings.Join(parts, " ")
}

// readStat returns the fields of /sys/block/<dev>/stat (see
// Documentation/block/stat.rst: [4] write I/Os, [9] io_ticks ms).
func readStat(dev string) ([]uint64, error) {
	b, err := os.ReadFile(filepath.Join("/sys/block", dev, "stat"))
	if err != nil {
		return nil, err
	}
	var vals []uint64
	for _, f := range strings.Fields(string(b)) {
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return nil, err
		}
		vals = append(vals, v)
	}
	if len(vals) < 11 {
		return nil, fmt.Errorf("%s stat has %d fields", dev, len(vals))
	}
	return vals, nil
}

// readInflightWrites returns the writes in flight on dev.
func readInflightWrites(dev string) (int, error) {
	b, err := os.ReadFile(filepath.Join("/sys/block", dev, "inflight"))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, fmt.Errorf("%s inflight: %q", dev, b)
	}
	return strconv.Atoi(f[1])
}

// ueventListener is a NETLINK_KOBJECT_UEVENT socket bound to the kernel's
// multicast group; it queues every uevent sent after it was opened.
type ueventListener struct{ fd int }

func listenUevents(t *testing.T) *ueventListener {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		t.Fatalf("uevent socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		t.Fatalf("uevent socket: bind: %v", err)
	}
	return &ueventListener{fd: fd}
}

// changes reads the queued uevents until none arrives for quiet and counts
// the "change" uevents of block device dev. Lost uevents are an error.
func (l *ueventListener) changes(dev string, quiet time.Duration) (int, error) {
	tv := unix.NsecToTimeval(quiet.Nanoseconds())
	if err := unix.SetsockoptTimeval(l.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return 0, err
	}
	buf := make([]byte, 64<<10)
	n := 0
	for {
		m, _, err := unix.Recvfrom(l.fd, buf, 0)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return n, nil
		case errors.Is(err, unix.ENOBUFS):
			return n, fmt.Errorf("uevent socket overflowed: uevents lost")
		case err != nil:
			return n, err
		}
		env := map[string]string{}
		for _, kv := range strings.Split(string(buf[:m]), "\x00")[1:] {
			if k, v, ok := strings.Cut(kv, "="); ok {
				env[k] = v
			}
		}
		if env["ACTION"] == "change" && env["SUBSYSTEM"] == "block" && env["DEVNAME"] == dev {
			n++
		}
	}
}
