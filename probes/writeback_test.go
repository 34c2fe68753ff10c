package probes

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/scenario"
)

// The writeback probe on the real kernel: a bulk buffered writer under
// small dirty limits is paused in balance_dirty_pages, on its device; a
// writer that fsyncs on ext4 (data=ordered, nodelalloc) makes journal
// commits that write the bulk writer's data first, and the probe names
// it; the device's wbt target and the mount are read at the start.
func TestWritebackLive(t *testing.T) {
	blkNeedRoot(t)
	fs := scenario.Filesystem(t, "ext4", 512<<20, "nodelalloc")
	scenario.DirtyLimits(t, 8<<20, 2<<20)
	sink := &blkSink{}
	r, st := (writebackProbe{}).Start(Config{}, sink)
	if r == nil {
		t.Fatalf("writeback probe: %s", st.Reason)
	}
	t.Logf("status: %+v", st)
	before := jbd2Commits(t, fs.Dev)
	bulk := scenario.StartNamedJob(t, "bulk", "--filename="+filepath.Join(fs.Dir, "bulk"), "--rw=write", "--bs=1M",
		"--size=300M", "--runtime=7", "--time_based", "--ioengine=psync")
	// The victim starts once bulk has been paused for dirty pages: the
	// commits its fsyncs make write bulk's data out (data=ordered), and on
	// a slow disk (the kernel matrix's) bulk, waiting for them, would not
	// reach the limits again.
	paused := waitForEvent(sink, 5*time.Second, func(e event.Event) bool {
		p, ok := e.(event.DirtyPause)
		return ok && p.Dev.Name == fs.Dev && p.Task.Comm == "bulk"
	})
	t.Logf("bulk paused for dirty pages before the victim started: %v", paused)
	victim := scenario.StartNamedJob(t, "victim", "--filename="+filepath.Join(fs.Dir, "victim"), "--rw=randwrite",
		"--bs=4k", "--size=4M", "--fsync=1", "--runtime=3", "--time_based", "--ioengine=psync")
	bulk.Wait()
	victim.Wait()
	kernelCommits := jbd2Commits(t, fs.Dev) - before
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, l := range sink.losses {
		t.Errorf("loss: %+v", l)
	}
	var pauses, commits, ordered, bulkOrdered int
	var pauseSum time.Duration
	dirtiers := map[string]int{}
	for _, e := range sink.events {
		switch e := e.(type) {
		case event.DirtyPause:
			if e.Dev.Name == fs.Dev && e.Task.Comm == "bulk" {
				pauses++
				pauseSum += e.Pause
				if e.Limit == 0 || e.Limit > (8<<20)/uint64(os.Getpagesize())+1 {
					t.Errorf("pause with limit %d pages, want at most vm.dirty_bytes (8 MiB)", e.Limit)
				}
			}
		case event.JournalCommit:
			if e.Dev.Name == fs.Dev {
				commits++
				if e.Duration <= 0 || e.Locking+e.Flushing+e.Logging > e.Duration {
					t.Errorf("commit %+v: phases do not fit in it", e)
				}
			}
		case event.OrderedData:
			if e.Dev.Name == fs.Dev {
				ordered++
				// fio runs its job in a child process: the name tells
				dirtiers[e.Dirtier.Comm]++
				if e.Dirtier.Comm == "bulk" {
					bulkOrdered++
				}
			}
		}
	}
	t.Logf("bulk paused %d times (%v); %d commits on %s (the journal counted %d), %d ordered inodes, %d of bulk; dirtiers %v", pauses, pauseSum, commits, fs.Dev, kernelCommits, ordered, bulkOrdered, dirtiers)
	switch {
	case pauses == 0 && fs.InMemory && !scenario.InMatrix():
		// A loop device over a file in memory: writeback to it keeps up
		// with bulk, which then never reaches the limits. The pause is
		// checked where the filesystem is on a disk (this project's host,
		// the kernel matrix's scratch disk); here, that the probe runs.
		t.Logf("no dirty-throttle pause of bulk on %s: its file is in memory, writeback keeps up", fs.Dev)
	case pauses == 0:
		t.Errorf("no dirty-throttle pause of bulk on %s (in memory: %v)", fs.Dev, fs.InMemory)
	}
	// Every commit the journal made while the probe ran, but the one in
	// flight at each end (started before it, or ended after the count).
	if kernelCommits < 3 || commits < kernelCommits-2 {
		t.Errorf("%d commits on %s seen, the journal made %d (the victim's fsyncs): want them all, and at least 3", commits, fs.Dev, kernelCommits)
	}
	if bulkOrdered == 0 {
		t.Errorf("no commit wrote bulk's ordered data (named)")
	}
	var mounted, wbt bool
	var mounts []event.Mount
	for _, e := range sink.events {
		switch e := e.(type) {
		case event.Mount:
			mounts = append(mounts, e)
			if e.Dev.Name == fs.Dev && e.FSType == "ext4" && e.Point == fs.Dir {
				mounted = true
			}
		case event.WbtLat:
			if e.Dev.Name == fs.Dev && e.From == "sysfs" {
				b, _ := os.ReadFile("/sys/block/" + fs.Dev + "/queue/wbt_lat_usec")
				if want := strings.TrimSpace(string(b)); want != "" && e.Lat.Microseconds() >= 0 {
					wbt = true
				}
			}
		case event.DirtyLimits:
			if e.Bytes != 8<<20 || e.BackgroundBytes != 2<<20 {
				t.Errorf("dirty limits %+v, want 8 MiB and 2 MiB", e)
			}
		}
	}
	if !mounted {
		info, _ := os.ReadFile("/proc/self/mountinfo")
		t.Errorf("no mount of %s at %s; the probe saw %+v; mountinfo:\n%s", fs.Dev, fs.Dir, mounts, info)
	}
	if !wbt {
		t.Errorf("no wbt target of %s from sysfs", fs.Dev)
	}
}

// waitForEvent waits at most d for the sink to hold an event match accepts,
// and says whether it does.
func waitForEvent(s *blkSink, d time.Duration, match func(event.Event) bool) bool {
	for end := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
		s.mu.Lock()
		found := slices.ContainsFunc(s.events, match)
		s.mu.Unlock()
		if found || time.Now().After(end) {
			return found
		}
	}
}

// jbd2Commits returns the number of transactions the journal of the ext4
// on dev has committed (/proc/fs/jbd2/<dev>-<inode>/info: "N transactions
// (M requested), ...").
func jbd2Commits(t *testing.T, dev string) int {
	t.Helper()
	infos, _ := filepath.Glob("/proc/fs/jbd2/" + dev + "-*/info")
	if len(infos) != 1 {
		t.Fatalf("journal of %s: want one /proc/fs/jbd2/%s-*/info, found %v", dev, dev, infos)
	}
	b, err := os.ReadFile(infos[0])
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if _, err := fmt.Sscanf(string(b), "%d transactions", &n); err != nil {
		t.Fatalf("%s: %v: %q", infos[0], err, b)
	}
	return n
}

// readMounts lists each block device's mounts: both points of a bind
// mount, past a line longer than a scanner's default buffer, never
// pseudo filesystems (device 0:N).
func TestReadMounts(t *testing.T) {
	long := "rw,lowerdir=" + strings.Repeat("/l", 40<<10)
	info := strings.Join([]string{
		"22 1 0:21 / /proc rw - proc proc rw",
		"30 1 0:26 / /var/lib/o rw - overlay overlay " + long,
		"40 1 7:0 / /mnt/a rw - ext4 /dev/loop0 rw",
		"41 1 7:0 /sub /mnt/b\\040c rw - ext4 /dev/loop0 rw",
		"42 1 7:0 / /mnt/a rw - ext4 /dev/loop0 rw",
		"43 1 8:1 / / rw shared:1 - xfs /dev/sda1 rw",
	}, "\n") + "\n"
	p := filepath.Join(t.TempDir(), "mountinfo")
	if err := os.WriteFile(p, []byte(info), 0o644); err != nil {
		t.Fatal(err)
	}
	got := readMounts(p)
	want := [][3]string{{"7:0", "ext4", "/mnt/a"}, {"7:0", "ext4", "/mnt/b c"}, {"8:1", "xfs", "/"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("readMounts = %v, want %v", got, want)
	}
}

// A pause's memory cgroup: found by its directory's inode in the cgroup
// v2 hierarchy, with memory.max and memory.high in bytes ("max" is no
// limit); the root and an inode not found give none; the system's dirty
// threshold and dirtyable memory come from vmstat and meminfo.
func TestPauseMemcg(t *testing.T) {
	root := t.TempDir()
	cg := filepath.Join(root, "jobs", "etl")
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(cg, "memory.max"), "67108864\n")
	write(filepath.Join(cg, "memory.high"), "max\n")
	proc := t.TempDir()
	if err := os.MkdirAll(filepath.Join(proc, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(proc, "self", "mountinfo"), "30 1 0:26 / "+root+" rw - cgroup2 cgroup2 rw\n")
	write(filepath.Join(proc, "vmstat"), "nr_dirty 12\nnr_dirty_threshold 209715\nnr_dirty_background_threshold 104857\n")
	write(filepath.Join(proc, "meminfo"), "MemTotal: 8000000 kB\nMemFree: 3000000 kB\nActive(file): 500000 kB\nInactive(file): 694304 kB\n")
	fi, err := os.Stat(cg)
	if err != nil {
		t.Fatal(err)
	}
	ino := fi.Sys().(*syscall.Stat_t).Ino
	r := &writebackRunning{cfg: Config{ProcFS: proc}, memcgs: map[uint64]memcgLimits{}}
	if got, want := r.memcg(ino), (memcgLimits{path: "/jobs/etl", max: 64 << 20}); got != want {
		t.Errorf("memcg(%d) = %+v, want %+v", ino, got, want)
	}
	for _, ino := range []uint64{0, 1, ino + 1_000_000} {
		if got := r.memcg(ino); got != (memcgLimits{}) {
			t.Errorf("memcg(%d) = %+v, want none", ino, got)
		}
	}
	thresh, dirtyable := dirtyThreshold(proc)
	if want := uint64(4194304) * 1024 / uint64(os.Getpagesize()); thresh != 209715 || dirtyable != want {
		t.Errorf("dirtyThreshold = %d, %d, want 209715, %d", thresh, dirtyable, want)
	}
}

// The xfs log on the real kernel: each fsync after an appending write
// forces the log, once (the CIL force inside it traces again, from
// xfs_log_force_seq), from xfs_file_fsync, on the filesystem's device; on
// 6.1+ the log's buffer writes are timed.
func TestXfsLogLive(t *testing.T) {
	blkNeedRoot(t)
	fs := scenario.Filesystem(t, "xfs", 512<<20, "")
	sink := &blkSink{}
	r, st := (writebackProbe{}).Start(Config{}, sink)
	if r == nil {
		t.Fatalf("writeback probe: %s", st.Reason)
	}
	if strings.Contains(st.Reason, "xfs log forces") {
		t.Fatalf("xfs log forces not traced: %s", st.Reason)
	}
	f, err := os.Create(filepath.Join(fs.Dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	const syncs = 40
	block := make([]byte, 4096)
	for range syncs {
		if _, err := f.Write(block); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, l := range sink.losses {
		t.Errorf("loss: %+v", l)
	}
	self := uint32(os.Getpid())
	callers := map[string]int{}
	var writes int
	for _, e := range sink.events {
		switch e := e.(type) {
		case event.LogForce:
			if e.Dev.Name == fs.Dev && e.Task.Tgid == self {
				callers[e.Caller]++
				if e.FsDev != fs.Dev {
					t.Errorf("force %+v: fs_dev %q, want %s", e, e.FsDev, fs.Dev)
				}
			}
		case event.LogWrite:
			if e.Dev.Name == fs.Dev {
				writes++
				if e.Duration <= 0 || e.Lsn == 0 {
					t.Errorf("log write %+v: want a duration and an LSN", e)
				}
			}
		}
	}
	t.Logf("forces of the log of %s by this process, by caller: %v; %d log writes", fs.Dev, callers, writes)
	if callers["xfs_file_fsync"] < syncs {
		t.Errorf("%d forces from xfs_file_fsync, want one for each of the %d fsyncs", callers["xfs_file_fsync"], syncs)
	}
	_, err = os.Stat("/sys/kernel/tracing/events/xfs/xlog_iclog_sync")
	switch {
	case err == nil && writes < syncs:
		t.Errorf("%d log writes, want at least one for each of the %d fsyncs", writes, syncs)
	case err != nil && writes > 0:
		t.Errorf("%d log writes without the xlog_iclog events", writes)
	case err != nil:
		t.Logf("no xlog_iclog_sync event here (before 6.1): the log's writes are not timed")
	}
}
