package main

// Write-back throttles and journal commits, for real on this host: a
// filesystem on a loop device with direct I/O over a file on the disk,
// loads under names of their own, each cause with its control (the same
// load without the cause), recorded into testdata/traces with -record.

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/scenario"
)

func findingNames(f report.Finding) []string {
	var out []string
	for _, p := range f.Processes {
		out = append(out, p.Comm)
	}
	return out
}

func TestWritebackCauses(t *testing.T) {
	scenario.RequireRoot(t)
	const run = 8 * time.Second
	secs := fmt.Sprint(int((run + 2*time.Second) / time.Second))
	for _, tc := range []struct {
		name, fstype, opts string
		setup              func(t *testing.T, fs scenario.FS)
		loads              func(t *testing.T, fs scenario.FS)
		rule               string // "" for a control
		not                string // a control: the rule it must not give
		// allow, for a control, says when a finding of rule not is no false
		// cause after all (nil: never)
		allow func(f report.Finding) bool
		names []string
		// above are the rules that may rank above rule (true causes too, on
		// a slower device: the flood, the writers' own pauses, the device);
		// the processes they name but as victims must be one of causes
		// (name prefixes)
		above  []string
		causes []string
		// memcg: the writers run in a memory cgroup of 64 MiB: where the
		// kernel gives it a dirty limit of its own (cgroup writeback),
		// the finding must name the cgroup and its memory.max; elsewhere
		// (cgroup v1 memory) no finding may claim it. Every other case is
		// a control for it: no finding names a memory cgroup.
		memcg bool
	}{
		{name: "dirty", fstype: "ext4",
			setup: func(t *testing.T, fs scenario.FS) { scenario.DirtyLimits(t, 8<<20, 2<<20) },
			loads: func(t *testing.T, fs scenario.FS) {
				scenario.StartNamedJob(t, "writer", "--filename="+filepath.Join(fs.Dir, "data"), "--rw=write", "--bs=64k",
					"--size=400M", "--runtime="+secs, "--time_based", "--ioengine=psync")
			}, rule: "dirty-throttling", names: []string{"writer"}},
		{name: "dirty-control", fstype: "ext4", not: "dirty-throttling",
			loads: func(t *testing.T, fs scenario.FS) {
				scenario.StartNamedJob(t, "writer", "--filename="+filepath.Join(fs.Dir, "data"), "--rw=write", "--bs=64k",
					"--size=400M", "--runtime="+secs, "--time_based", "--ioengine=psync", "--rate=20m")
			}},
		// A buffered writer in a memory cgroup of 64 MiB under the
		// system's own dirty limits: the cgroup's dirty limit, a share of
		// its 64 MiB, pauses it; the control is dirty-control and every
		// other case (no memory cgroup: never named).
		//
		// The writer rewrites a file of 32 MiB, which its page cache
		// holds without reclaim: 400 MiB streamed through the 64 MiB
		// made it reclaim its own pages, real time that ranked above the
		// pauses once (6.12 guest). Its writes' mtime updates take a
		// journal handle, and on the guests' throttled disk one waited
		// 1429 ms for the inode's buffer that a commit, queued behind the
		// write-back, was writing (do_get_write_access; 6.12 guest).
		// lazytime keeps the updates in memory where ext4 has no
		// i_version (5.10, 6.1); from 6.2 ext4 always counts it and an
		// mtime update bumps it, dirtying the inode in the journal all
		// the same (567 ms so, in the 6.12 guest). commit=60: no
		// periodic commit during the run, whose write of the inode's
		// buffer the writer's updates would wait for.
		{name: "dirty-memcg", fstype: "ext4", opts: "lazytime,commit=60", memcg: true,
			loads: func(t *testing.T, fs scenario.FS) {
				procs := scenario.MemoryCgroup(t, 64<<20)
				scenario.StartNamedJobIn(t, procs, "writer", "--filename="+filepath.Join(fs.Dir, "data"), "--rw=write", "--bs=64k",
					"--size=32M", "--runtime="+secs, "--time_based", "--ioengine=psync")
			}, rule: "dirty-throttling", names: []string{"writer"}},
		{name: "journal", fstype: "ext4", opts: "nodelalloc",
			setup: func(t *testing.T, fs scenario.FS) { deepQueue(t, fs.Dev); scenario.DirtyLimits(t, 0, 32<<20) },
			loads: func(t *testing.T, fs scenario.FS) {
				scenario.StartNamedJob(t, "bulk", "--filename="+filepath.Join(fs.Dir, "bulk"), "--rw=write", "--bs=1M",
					"--size=400M", "--runtime="+secs, "--time_based", "--ioengine=psync")
				scenario.StartNamedJob(t, "victim", "--filename="+filepath.Join(fs.Dir, "victim"), "--rw=randwrite", "--bs=4k",
					"--size=4M", "--fsync=1", "--runtime="+secs, "--time_based", "--ioengine=psync")
			}, rule: "journal-commit-wait", names: []string{"victim", "bulk"},
			// on a slower device (the guests' scratch disk, 5.10) the
			// victim also waits for its own data behind bulk's, in stage
			// device: the slow device, naming it, may outweigh the journal;
			// so may wbt there, holding the victim's writes back behind
			// bulk's write-back
			above: []string{"dirty-throttling", "slow-device", "wbt-throttling"}, causes: []string{"bulk"}},
		// Without bulk, no commit writes another's data: on a slow device
		// (the guests' throttled disk) the commits of the victim's own
		// fsyncs may still be slow, and the finding may say so, naming the
		// device and no writer of ordered data.
		{name: "journal-control", fstype: "ext4", opts: "nodelalloc", not: "journal-commit-wait",
			allow: func(f report.Finding) bool {
				return !slices.ContainsFunc(f.Processes, func(p report.Process) bool { return p.Role == "ordered data" }) &&
					strings.Contains(f.Remedy, "Commits are slow on")
			},
			setup: func(t *testing.T, fs scenario.FS) { deepQueue(t, fs.Dev); scenario.DirtyLimits(t, 0, 32<<20) },
			loads: func(t *testing.T, fs scenario.FS) {
				scenario.StartNamedJob(t, "victim", "--filename="+filepath.Join(fs.Dir, "victim"), "--rw=randwrite", "--bs=4k",
					"--size=4M", "--fsync=1", "--runtime="+secs, "--time_based", "--ioengine=psync")
			}},
		// xfs: the victim's fsyncs force the log, whose writes queue behind
		// bulk's write-back on the device; the finding names the log's
		// device and the victim (xfs has no ordered data: bulk's data is
		// not the log's to write).
		{name: "journal-xfs", fstype: "xfs",
			setup: func(t *testing.T, fs scenario.FS) { deepQueue(t, fs.Dev); scenario.DirtyLimits(t, 0, 32<<20) },
			loads: func(t *testing.T, fs scenario.FS) {
				scenario.StartNamedJob(t, "bulk", "--filename="+filepath.Join(fs.Dir, "bulk"), "--rw=write", "--bs=1M",
					"--size=400M", "--runtime="+secs, "--time_based", "--ioengine=psync")
				scenario.StartNamedJob(t, "victim", "--filename="+filepath.Join(fs.Dir, "victim"), "--rw=randwrite", "--bs=4k",
					"--size=4M", "--fsync=1", "--runtime="+secs, "--time_based", "--ioengine=psync")
			}, rule: "journal-commit-wait", names: []string{"victim"},
			// on the guests' throttled scratch disk (6.12 in CI) wbt held
			// the victim's writes behind bulk's write-back longer than its
			// log forces waited (1413 against 689 ms): a cause as true
			above: []string{"dirty-throttling", "slow-device", "noisy-neighbour", "wbt-throttling"}, causes: []string{"bulk", "kworker"}},
		// The same fsyncs without bulk: the log's writes are fast. On the
		// guests' scratch disk, throttled to 32 MiB/s, the victim's own
		// log writes may be slow (p99 22 ms on 6.1): a finding may say so
		// there, naming no process but the victim.
		{name: "journal-xfs-control", fstype: "xfs", not: "journal-commit-wait",
			allow: func(f report.Finding) bool {
				return scenario.InMatrix() && strings.Contains(f.Remedy, "The log's writes are slow on") &&
					!slices.ContainsFunc(f.Processes, func(p report.Process) bool { return p.Comm != "victim" })
			},
			setup: func(t *testing.T, fs scenario.FS) { deepQueue(t, fs.Dev); scenario.DirtyLimits(t, 0, 32<<20) },
			loads: func(t *testing.T, fs scenario.FS) {
				scenario.StartNamedJob(t, "victim", "--filename="+filepath.Join(fs.Dir, "victim"), "--rw=randwrite", "--bs=4k",
					"--size=4M", "--fsync=1", "--runtime="+secs, "--time_based", "--ioengine=psync")
			}},
		// A bulk writer floods the device, the reader misses wbt's target,
		// wbt holds the synced writer back: the flood is the root cause and
		// may rank first (naming bulk, never one of those it harms), as may,
		// on a slower device, the device the reader waits for and bulk's
		// own dirty-page pauses; the throttle must be found with the writer
		// it held.
		{name: "wbt",
			setup: func(t *testing.T, fs scenario.FS) { deepQueue(t, fs.Dev); wbtLat(t, fs.Dev, wbtTarget(t, fs.Dev)) },
			loads: wbtLoads(secs), rule: "wbt-throttling", names: []string{"victim"},
			above: []string{"noisy-neighbour", "slow-device", "dirty-throttling"}, causes: []string{"bulk", "kworker"}},
		{name: "wbt-control", not: "wbt-throttling",
			setup: func(t *testing.T, fs scenario.FS) { deepQueue(t, fs.Dev); wbtLat(t, fs.Dev, "0") },
			loads: wbtLoads(secs)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var fs scenario.FS
			dev := ""
			if strings.HasPrefix(tc.name, "wbt") && scenario.InMatrix() {
				// In the guests the CPU, emulated, is slower than qemu's
				// disks: a flood of writes neither fills their queues
				// nor slows their reads run after run, and wbt has
				// nothing to throttle. A null_blk disk whose every
				// request takes 2 ms misses the target (half its
				// unloaded read latency, 1 ms) in every window with
				// reads and writes, on any CPU.
				dev = scenario.NullBlk(t, 1<<30, 2*time.Millisecond, 64)
				t.Logf("scenario: null_blk /dev/%s, raw", dev)
				fs = scenario.FS{Dev: dev}
				// bulk, slowed by the emulated CPU, dirties a few MiB a
				// second: under the default limits nothing is written
				// back during the run, and wbt has no write to hold the
				// victim's behind. A small background limit keeps the
				// flusher writing.
				scenario.DirtyLimits(t, 0, 4<<20)
			} else {
				fs = scenario.Filesystem(t, tc.fstype, 1<<30, tc.opts)
			}
			if tc.setup != nil {
				tc.setup(t, fs)
			}
			trace := tracePath(t, "writeback-"+tc.name)
			rep := diagnoseUnder(t, run, func() func() {
				tc.loads(t, fs)
				return func() {}
			}, "--record", trace)
			if dev != "" {
				// where wbt left the device (debugfs, where mounted)
				var state []string
				for _, f := range []string{"enabled", "wb_normal", "wb_background", "inflight", "min_lat_nsec"} {
					if b, err := os.ReadFile(filepath.Join("/sys/kernel/debug/block", dev, "rqos", "wbt", f)); err == nil {
						state = append(state, f+"="+strings.Join(strings.Fields(string(b)), " "))
					}
				}
				t.Logf("wbt on %s after the run: %s", dev, strings.Join(state, ", "))
			}
			t.Logf("findings:\n%s", summary(rep))
			t.Logf("affected:\n%s", affectedSummary(rep))
			cgwb, why := scenario.CgroupWriteback()
			for _, f := range rep.Findings {
				m := evidenceOf(f, "memcg")
				if m == nil || m == "" {
					continue
				}
				if !tc.memcg || !cgwb {
					t.Errorf("%s names the memory cgroup %v (cgroup writeback: %v %s): %s", f.Rule, m, cgwb, why, f.Title)
				}
			}
			if tc.memcg && !cgwb {
				t.Logf("no memory cgroup has a dirty limit of its own here (%s): none named", why)
				return
			}
			if tc.rule == "" {
				for _, f := range rep.Findings {
					if f.Rule == tc.not && slices.Contains(f.Devices, fs.Dev) {
						if tc.allow != nil && tc.allow(f) {
							t.Logf("control: %s (%s) without the cause: %s", f.Rule, f.Title, f.Remedy)
							continue
						}
						t.Errorf("control: finding %s (%s) on %v", f.Rule, f.Title, f.Devices)
					}
				}
				return
			}
			if len(rep.Findings) == 0 {
				t.Fatal("no finding")
			}
			i := slices.IndexFunc(rep.Findings, func(f report.Finding) bool { return f.Rule == tc.rule })
			if i < 0 {
				t.Fatalf("no %s finding; top finding %s (%s)", tc.rule, rep.Findings[0].Rule, rep.Findings[0].Title)
			}
			causes := tc.causes
			if strings.HasPrefix(tc.name, "wbt") && scenario.InMatrix() {
				// null_blk serves each request in 2 ms: the reader's two
				// in flight hold a large part of its queue while wbt lets
				// one write in, a neighbour as true as bulk
				causes = append(slices.Clone(causes), "reader")
			}
			for _, f := range rep.Findings[:i] {
				if !slices.Contains(tc.above, f.Rule) {
					t.Fatalf("top finding %s (%s), want %s", f.Rule, f.Title, tc.rule)
				}
				for _, p := range f.Processes {
					// wbt-throttling names the writers wbt held: harmed, not causes
					held := f.Rule == "wbt-throttling" && p.Role == "writer"
					if p.Part != "victim" && !held && !slices.ContainsFunc(causes, func(c string) bool { return strings.HasPrefix(p.Comm, c) }) {
						t.Errorf("%s ranks above %s and names %s (pid %d, %s), want one of %v", f.Rule, tc.rule, p.Comm, p.Pid, p.Role, causes)
					}
				}
				t.Logf("%s (%s) ranks above %s", f.Rule, f.Title, tc.rule)
			}
			top := rep.Findings[i]
			if top.Rule != tc.rule {
				t.Fatalf("top finding %s (%s), want %s", top.Rule, top.Title, tc.rule)
			}
			if !slices.Contains(top.Devices, fs.Dev) {
				t.Errorf("top finding on %v, want %s", top.Devices, fs.Dev)
			}
			for _, n := range tc.names {
				if !slices.Contains(findingNames(top), n) || !strings.Contains(top.Title+top.Explanation, n) {
					t.Errorf("top finding does not name %s: processes %v, title %q", n, findingNames(top), top.Title)
				}
			}
			if tc.memcg {
				m, _ := evidenceOf(top, "memcg").(string)
				if !strings.Contains(m, "whyslow-test-mem-") || !strings.Contains(top.Title, m) ||
					!strings.Contains(top.Title, "memory.max=67108864 (64 MiB)") || !strings.Contains(top.Remedy, m) {
					t.Errorf("%s does not name the memory cgroup (evidence %q) and its memory.max in title and remedy: %s\n%s",
						top.Rule, m, top.Title, top.Remedy)
				}
			}
			t.Logf("top: %s\n%s\n%s", top.Title, top.Explanation, top.Remedy)
		})
	}
}

// deepQueue gives the device mq-deadline with 1024 requests, restored on
// cleanup: a bulk writer's flood of requests waits in the scheduler, not
// for tags in its submitters (tag-starvation is another test's cause).
func deepQueue(t *testing.T, dev string) {
	q, err := scenario.ReadQueue(dev)
	if err != nil {
		t.Fatal(err)
	}
	if err := scenario.SetQueue(dev, "mq-deadline", 1024); err != nil {
		t.Fatalf("%s: mq-deadline, 1024 requests: %v", dev, err)
	}
	t.Cleanup(func() { scenario.SetQueue(dev, q.Scheduler, q.NrRequests) })
}

// wbtTarget is a wbt latency target (µs) that the device's reads miss
// once a flood of writes fills its queue: half their latency unloaded
// (direct 4 KiB random reads for a second), at most 1000 µs and at least
// 50 µs. wbt scales writes down when the fastest read of a window misses
// the target: a disk whose reads are faster than a fixed target unloaded
// and loaded alike (the guests' scratch disk, throttled by bandwidth only)
// would never make it throttle.
func wbtTarget(t *testing.T, dev string) string {
	f := scenario.StartJob(t, scenario.Job{Name: "read-probe", Dev: dev, RW: "randread", Direct: true,
		Duration: time.Second, Extra: []string{"--size=256M"}})
	res, err := f.Wait()
	if err != nil {
		t.Fatalf("%s: measuring its reads: %v", dev, err)
	}
	us := min(max(res.ReadMean.Microseconds()/2, 50), 1000)
	t.Logf("scenario: %s reads 4 KiB in %v unloaded: wbt target %d µs", dev, res.ReadMean, us)
	return fmt.Sprint(us)
}

// wbtLat sets the device's wbt_lat_usec, restored on cleanup.
func wbtLat(t *testing.T, dev, usec string) {
	p := "/sys/block/" + dev + "/queue/wbt_lat_usec"
	old, err := os.ReadFile(p)
	if err != nil {
		scenario.Skip(t, "no wbt on %s: %v", dev, err)
	}
	if err := os.WriteFile(p, []byte(usec), 0); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	t.Cleanup(func() { os.WriteFile(p, []byte(strings.TrimSpace(string(old))), 0) })
}

// wbtLoads: on the raw device (no journal), in regions of their own: a
// direct random reader, a buffered bulk writer and a buffered writer that
// syncs each write (O_SYNC: it writes back its own range; an fsync of the
// device would write back bulk's pages too, and make it the flood).
func wbtLoads(secs string) func(t *testing.T, fs scenario.FS) {
	return func(t *testing.T, fs scenario.FS) {
		dev := "--filename=/dev/" + fs.Dev
		depth := "8"
		if scenario.InMatrix() {
			// null_blk serves every read in 2 ms at any depth: two keep
			// reads in each of wbt's windows, for a quarter of the
			// emulated CPU
			depth = "2"
		}
		scenario.StartNamedJob(t, "reader", dev, "--offset=0", "--size=256M", "--rw=randread", "--bs=4k",
			"--direct=1", "--ioengine=libaio", "--iodepth="+depth, "--runtime="+secs, "--time_based")
		scenario.StartNamedJob(t, "bulk", dev, "--offset=256M", "--size=512M", "--rw=write", "--bs=1M",
			"--runtime="+secs, "--time_based", "--ioengine=psync")
		scenario.StartNamedJob(t, "victim", dev, "--offset=800M", "--size=4M", "--rw=randwrite", "--bs=4k",
			"--sync=1", "--runtime="+secs, "--time_based", "--ioengine=psync")
	}
}
