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

// writebackRules are the rules of this file's causes: a control must give
// none of them.
var writebackRules = []string{"wbt-throttling", "dirty-throttling", "journal-commit-wait"}

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
		names              []string
	}{
		{name: "dirty", fstype: "ext4",
			setup: func(t *testing.T, fs scenario.FS) { scenario.DirtyLimits(t, 8<<20, 2<<20) },
			loads: func(t *testing.T, fs scenario.FS) {
				scenario.StartNamedJob(t, "writer", "--filename="+filepath.Join(fs.Dir, "data"), "--rw=write", "--bs=64k",
					"--size=400M", "--runtime="+secs, "--time_based", "--ioengine=psync")
			}, rule: "dirty-throttling", names: []string{"writer"}},
		{name: "dirty-control", fstype: "ext4",
			loads: func(t *testing.T, fs scenario.FS) {
				scenario.StartNamedJob(t, "writer", "--filename="+filepath.Join(fs.Dir, "data"), "--rw=write", "--bs=64k",
					"--size=400M", "--runtime="+secs, "--time_based", "--ioengine=psync", "--rate=20m")
			}},
		{name: "journal", fstype: "ext4", opts: "nodelalloc",
			setup: func(t *testing.T, fs scenario.FS) { scenario.DirtyLimits(t, 0, 32<<20) },
			loads: func(t *testing.T, fs scenario.FS) {
				scenario.StartNamedJob(t, "bulk", "--filename="+filepath.Join(fs.Dir, "bulk"), "--rw=write", "--bs=1M",
					"--size=400M", "--runtime="+secs, "--time_based", "--ioengine=psync", "--rate=30m")
				scenario.StartNamedJob(t, "victim", "--filename="+filepath.Join(fs.Dir, "victim"), "--rw=randwrite", "--bs=4k",
					"--size=4M", "--fsync=1", "--runtime="+secs, "--time_based", "--ioengine=psync")
			}, rule: "journal-commit-wait", names: []string{"victim", "bulk"}},
		{name: "journal-control", fstype: "ext4", opts: "nodelalloc",
			setup: func(t *testing.T, fs scenario.FS) { scenario.DirtyLimits(t, 0, 32<<20) },
			loads: func(t *testing.T, fs scenario.FS) {
				scenario.StartNamedJob(t, "victim", "--filename="+filepath.Join(fs.Dir, "victim"), "--rw=randwrite", "--bs=4k",
					"--size=4M", "--fsync=1", "--runtime="+secs, "--time_based", "--ioengine=psync")
			}},
		{name: "wbt", fstype: "ext4",
			setup: func(t *testing.T, fs scenario.FS) { wbtLat(t, fs.Dev, "1000") },
			loads: wbtLoads(secs), rule: "wbt-throttling", names: []string{"victim"}},
		{name: "wbt-control", fstype: "ext4",
			setup: func(t *testing.T, fs scenario.FS) { wbtLat(t, fs.Dev, "0") },
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
					if slices.Contains(writebackRules, f.Rule) {
						t.Errorf("control: finding %s (%s) on %v", f.Rule, f.Title, f.Devices)
					}
				}
				return
			}
			if len(rep.Findings) == 0 {
				t.Fatal("no finding")
			}
			top := rep.Findings[0]
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

// wbtLoads: a direct random reader, a buffered bulk writer and a writer
// that fsyncs each write, on one filesystem.
func wbtLoads(secs string) func(t *testing.T, fs scenario.FS) {
	return func(t *testing.T, fs scenario.FS) {
		scenario.StartNamedJob(t, "reader", "--filename="+filepath.Join(fs.Dir, "rd"), "--rw=randread", "--bs=4k",
			"--size=256M", "--direct=1", "--ioengine=libaio", "--iodepth=4", "--runtime="+secs, "--time_based")
		scenario.StartNamedJob(t, "bulk", "--filename="+filepath.Join(fs.Dir, "bulk"), "--rw=write", "--bs=1M",
			"--size=400M", "--runtime="+secs, "--time_based", "--ioengine=psync", "--rate=30m")
		scenario.StartNamedJob(t, "victim", "--filename="+filepath.Join(fs.Dir, "victim"), "--rw=write", "--bs=256k",
			"--size=64M", "--fsync=1", "--runtime="+secs, "--time_based", "--ioengine=psync")
	}
}
