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
		names              []string
		above              []string // rules that may rank above rule (a cause on the same device)
		causes             []string // the processes (name prefixes) above may give as its cause
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
		{name: "journal", fstype: "ext4", opts: "nodelalloc",
			setup: func(t *testing.T, fs scenario.FS) { deepQueue(t, fs.Dev); scenario.DirtyLimits(t, 0, 32<<20) },
			loads: func(t *testing.T, fs scenario.FS) {
				scenario.StartNamedJob(t, "bulk", "--filename="+filepath.Join(fs.Dir, "bulk"), "--rw=write", "--bs=1M",
					"--size=400M", "--runtime="+secs, "--time_based", "--ioengine=psync")
				scenario.StartNamedJob(t, "victim", "--filename="+filepath.Join(fs.Dir, "victim"), "--rw=randwrite", "--bs=4k",
					"--size=4M", "--fsync=1", "--runtime="+secs, "--time_based", "--ioengine=psync")
			}, rule: "journal-commit-wait", names: []string{"victim", "bulk"}},
		{name: "journal-control", fstype: "ext4", opts: "nodelalloc", not: "journal-commit-wait",
			setup: func(t *testing.T, fs scenario.FS) { deepQueue(t, fs.Dev); scenario.DirtyLimits(t, 0, 32<<20) },
			loads: func(t *testing.T, fs scenario.FS) {
				scenario.StartNamedJob(t, "victim", "--filename="+filepath.Join(fs.Dir, "victim"), "--rw=randwrite", "--bs=4k",
					"--size=4M", "--fsync=1", "--runtime="+secs, "--time_based", "--ioengine=psync")
			}},
		// A bulk writer floods the device, the reader misses wbt's target,
		// wbt holds the synced writer back: the flood is the root cause and
		// may rank first (naming bulk, never one of those it harms), the
		// throttle must be found with the writer it held. The writer's
		// waits for its own I/O behind the flood, which wbt does not
		// explain, may outweigh its wait in wbt: unexplained-latency
		// (naming no cause) may rank first then.
		{name: "wbt",
			setup: func(t *testing.T, fs scenario.FS) { deepQueue(t, fs.Dev); wbtLat(t, fs.Dev, "1000") },
			loads: wbtLoads(secs), rule: "wbt-throttling", names: []string{"victim"},
			above: []string{"noisy-neighbour"}, causes: []string{"bulk", "kworker"}},
		{name: "wbt-control", not: "wbt-throttling",
			setup: func(t *testing.T, fs scenario.FS) { deepQueue(t, fs.Dev); wbtLat(t, fs.Dev, "0") },
			loads: wbtLoads(secs)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := scenario.Filesystem(t, tc.fstype, 1<<30, tc.opts)
			if tc.setup != nil {
				tc.setup(t, fs)
			}
			trace := filepath.Join(t.TempDir(), "run.trace.gz")
			if *record {
				trace = filepath.Join(tracesDir, "writeback-"+tc.name+".trace.gz")
			}
			rep := diagnoseUnder(t, run, func() func() {
				tc.loads(t, fs)
				return func() {}
			}, "--record", trace)
			t.Logf("findings:\n%s", summary(rep))
			t.Logf("affected:\n%s", affectedSummary(rep))
			if tc.rule == "" {
				for _, f := range rep.Findings {
					if f.Rule == tc.not && slices.Contains(f.Devices, fs.Dev) {
						t.Errorf("control: finding %s (%s) on %v", f.Rule, f.Title, f.Devices)
					}
				}
				return
			}
			if len(rep.Findings) == 0 {
				t.Fatal("no finding")
			}
			top := rep.Findings[0]
			if top.Rule != tc.rule && slices.Contains(tc.above, top.Rule) {
				for _, p := range top.Processes {
					if p.Role == "cause" && !slices.ContainsFunc(tc.causes, func(c string) bool { return strings.HasPrefix(p.Comm, c) }) {
						t.Errorf("%s ranks first and names %s (pid %d) as its cause, want one of %v", top.Rule, p.Comm, p.Pid, tc.causes)
					}
				}
				i := slices.IndexFunc(rep.Findings, func(f report.Finding) bool { return f.Rule == tc.rule })
				if i < 0 {
					t.Fatalf("no %s finding below %s (%s)", tc.rule, top.Rule, top.Title)
				}
				t.Logf("%s (%s) ranks above %s", top.Rule, top.Title, tc.rule)
				top = rep.Findings[i]
			}
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
		scenario.StartNamedJob(t, "reader", dev, "--offset=0", "--size=256M", "--rw=randread", "--bs=4k",
			"--direct=1", "--ioengine=libaio", "--iodepth=8", "--runtime="+secs, "--time_based")
		scenario.StartNamedJob(t, "bulk", dev, "--offset=256M", "--size=512M", "--rw=write", "--bs=1M",
			"--runtime="+secs, "--time_based", "--ioengine=psync")
		scenario.StartNamedJob(t, "victim", dev, "--offset=800M", "--size=4M", "--rw=randwrite", "--bs=4k",
			"--sync=1", "--runtime="+secs, "--time_based", "--ioengine=psync")
	}
}
