package main

// Cgroup I/O limits (blk-throttle), for real: a synced writer in a cgroup
// with a write-IOPS limit on a disk-backed loop device (cgroup v1's
// blkio.throttle.write_iops_device on this project's host, v2's io.max in
// the kernels of the matrix), and its controls: the same writer in the same
// cgroup with no limit, and with a limit far above what it writes.

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

// findingOf returns the report's finding of a rule.
func findingOf(rep *report.Report, rule string) (report.Finding, bool) {
	for _, f := range rep.Findings {
		if f.Rule == rule {
			return f, true
		}
	}
	return report.Finding{}, false
}

// limitDisk is the device the limits are put on: in the kernels of the
// matrix the unthrottled virtio disk (serial nvme; their /tmp is in
// memory), else a disk-backed loop device.
func limitDisk(t *testing.T) string {
	t.Helper()
	if scenario.InMatrix() {
		if d := scenario.DiskBySerial("nvme"); d != "" {
			return d
		}
	}
	return scenario.DiskLoop(t, 256<<20)
}

// throttledWriter runs the writer in cgroup c on dev inside a diagnosis,
// recording its trace as trace (tracePath).
func throttledWriter(t *testing.T, c *scenario.Cgroup, dev, trace string, args ...string) (*report.Report, *scenario.Fio, *scenario.FioResult) {
	t.Helper()
	args = append(args, "--record", tracePath(t, trace))
	rep, w, res := writerInWindow(t, func() *scenario.Fio { return scenario.WriterIn(t, c, dev, 6*time.Second) }, 8*time.Second, args...)
	t.Logf("fio: %s\nfindings:\n%saffected:\n%s", res, summary(rep), affectedSummary(rep))
	return rep, w, res
}

// cgroupTraceName names the trace of a cgroup-limit scenario by the
// interface its limits are in (v1's blkio or v2's io.max), what it is and
// the mechanism it forces ("" for none).
func cgroupTraceName(c *scenario.Cgroup, what, mech string) string {
	n := "iomax-" + what
	if c.V1 {
		n = "blkio-" + what
	}
	if mech != "" {
		n += "-" + mech
	}
	return n
}

// The writer's cgroup is limited to 40 writes a second on the device: the
// top finding is cgroup-throttle, naming the device, the cgroup, the limit
// and fio as the throttled process, with the delay it suffered and how it
// was measured.
func TestCgroupThrottle(t *testing.T) {
	scenario.RequireRoot(t)
	checkThrottled(t, "")
	if scenario.InMatrix() {
		t.Run("kprobe", func(t *testing.T) { checkThrottled(t, "kprobe") })
	}
}

// checkThrottled runs the scenario, with the throttle probe forced onto a
// mechanism ("kprobe") or on its best.
func checkThrottled(t *testing.T, mech string) {
	t.Helper()
	var args []string
	if mech != "" {
		args = []string{"--mechanism", "throttle=" + mech}
	}
	dev := limitDisk(t)
	name := "thr"
	if mech != "" {
		name += "-" + mech
	}
	c := scenario.IOCgroup(t, name)
	const iops = 40
	if err := c.LimitWriteIOPS(dev, iops); err != nil {
		t.Fatal(err)
	}
	rep, w, res := throttledWriter(t, c, dev, cgroupTraceName(c, "throttle", mech), args...)
	if len(rep.Findings) == 0 || rep.Findings[0].Rule != "cgroup-throttle" {
		t.Fatalf("top finding is not cgroup-throttle:\n%s", summary(rep))
	}
	f := rep.Findings[0]
	t.Logf("title: %s\nexplain: %s\nremedy: %s\nprecision: %s", f.Title, f.Explanation, f.Remedy, f.Precision)
	checkTroubleArmed(t, rep)
	// The limit holds the I/O before the device, which idles: not a
	// device at its capacity.
	if s, ok := findingOf(rep, "device-saturated"); ok {
		t.Errorf("device-saturated fired under a binding limit: %s", s.Title)
	}
	if !slices.Contains(f.Devices, dev) {
		t.Errorf("finding's devices %v, want %s", f.Devices, dev)
	}
	if cg := evidence(f, "cgroup"); cg != c.Path {
		t.Errorf("evidence cgroup %v, want %s", cg, c.Path)
	}
	if v := evidence(f, "limit_value"); fmt.Sprint(v) != fmt.Sprint(iops) {
		t.Errorf("evidence limit_value %v, want %d", v, iops)
	}
	want := fmt.Sprintf("wiops=%d", iops)
	if c.V1 {
		want = fmt.Sprintf("blkio.throttle.write_iops_device=%d", iops)
	}
	if l := evidence(f, "limit"); l != want {
		t.Errorf("evidence limit %v, want %s", l, want)
	}
	for _, s := range []string{c.Path, dev, want} {
		if !strings.Contains(f.Title+f.Explanation, s) {
			t.Errorf("title and explanation do not name %q: %s / %s", s, f.Title, f.Explanation)
		}
	}
	// By the name it did its I/O under: fio, not the shell that moved it
	// into the cgroup and exec'd it.
	if !slices.ContainsFunc(f.Processes, func(p report.Process) bool { return int(p.Pid) == w.Pid && p.Role == "throttled" && p.Comm == "fio" }) {
		t.Errorf("finding's processes %+v do not name fio (pid %d) as throttled", f.Processes, w.Pid)
	}
	// Measured at the throttle where fentry or kprobes run (the kernels of
	// the matrix), inferred elsewhere (this project's host).
	if want := "inferred: "; scenario.InMatrix() {
		if !strings.HasPrefix(f.Precision, "direct: "+mech) {
			t.Errorf("precision %q, want the throttle timed directly (direct: %s)", f.Precision, mech)
		}
	} else if !strings.HasPrefix(f.Precision, want) && !strings.HasPrefix(f.Precision, "direct: ") {
		t.Errorf("precision %q says neither inferred nor direct", f.Precision)
	}
	// The rate at the limit: about iops a second over the writer's time.
	if r := evidence(f, "rate"); r == nil {
		t.Errorf("no rate in the evidence")
	} else if rate, ok := r.(float64); !ok || rate < 0.7*iops || rate > 1.1*iops {
		t.Errorf("rate %v, want about %d a second", r, iops)
	}
	// Its delay is most of the time fio spent in its writes.
	d := evidence(f, "delay_ms")
	delay, _ := d.(float64)
	a, ok := findAffected(rep, w.Pid)
	if !ok {
		t.Fatalf("fio (pid %d) is not in affected[]", w.Pid)
	}
	if delay < 0.5*a.TotalMs || delay > a.TotalMs {
		t.Errorf("delay %.0f ms, fio spent %.0f ms in its storage calls: want most of it", delay, a.TotalMs)
	}
	if res.Writes == 0 {
		t.Errorf("fio wrote nothing")
	}
}

// Controls: the same writer in the same cgroup with no limit, and with a
// limit far above its rate, is not throttled.
func TestCgroupThrottleControls(t *testing.T) {
	scenario.RequireRoot(t)
	for _, tc := range []struct {
		name  string
		limit int // write IOPS; 0: none
	}{{"no-limit", 0}, {"limit-not-reached", 1000000}} {
		t.Run(tc.name, func(t *testing.T) {
			dev := limitDisk(t)
			c := scenario.IOCgroup(t, "ctl")
			if tc.limit > 0 {
				if err := c.LimitWriteIOPS(dev, tc.limit); err != nil {
					t.Fatal(err)
				}
			}
			rep, _, _ := throttledWriter(t, c, dev, cgroupTraceName(c, "control-"+tc.name, ""))
			for _, f := range rep.Findings {
				if f.Rule == "cgroup-throttle" {
					t.Errorf("cgroup-throttle fired without a binding limit: %s", f.Title)
				}
			}
		})
	}
}

// iocost on the device, with a model of 100 IOPS and fixed QoS (no
// latency targets, vrate held at 100%): the writer's cgroup gets that
// budget, its writes wait for it in ioc_rqos_throttle, and the top finding
// is iocost, naming the device, its configuration and fio. The control,
// the same writer without iocost, gives no iocost finding.
func TestIOCost(t *testing.T) {
	scenario.RequireRoot(t)
	for _, on := range []bool{true, false} {
		name := map[bool]string{true: "on", false: "off"}[on]
		t.Run(name, func(t *testing.T) {
			dev := limitDisk(t)
			if on {
				scenario.IOCost(t, dev,
					"ctrl=user model=linear rbps=20000000 rseqiops=100 rrandiops=100 wbps=20000000 wseqiops=100 wrandiops=100",
					"enable=1 ctrl=user rpct=0 rlat=0 wpct=0 wlat=0 min=100.00 max=100.00")
			}
			c := scenario.IOCgroup(t, "ioc")
			rep, w, _ := throttledWriter(t, c, dev, map[bool]string{true: "iocost", false: "iocost-control"}[on])
			// The iocost probe runs with iocost on or off.
			if i := slices.IndexFunc(rep.Probes, func(p report.Probe) bool { return p.Name == "iocost" }); i < 0 || rep.Probes[i].Status != "ok" {
				t.Errorf("iocost probe did not run: %+v", rep.Probes)
			}
			f, ok := findingOf(rep, "iocost")
			if !on {
				if ok {
					t.Errorf("iocost fired without iocost: %s", f.Title)
				}
				return
			}
			if !ok || rep.Findings[0].Rule != "iocost" {
				t.Fatalf("top finding is not iocost:\n%s", summary(rep))
			}
			t.Logf("title: %s\nexplain: %s\nprecision: %s", f.Title, f.Explanation, f.Precision)
			if !slices.Contains(f.Devices, dev) {
				t.Errorf("finding's devices %v, want %s", f.Devices, dev)
			}
			if q, _ := evidence(f, "qos").(string); !strings.Contains(q, "enable=1") {
				t.Errorf("evidence qos %q, want iocost's configuration", q)
			}
			if !slices.ContainsFunc(f.Processes, func(p report.Process) bool { return int(p.Pid) == w.Pid && p.Cgroup == c.Path }) {
				t.Errorf("finding's processes %+v do not name fio (pid %d) in its cgroup %s", f.Processes, w.Pid, c.Path)
			}
			// The cgroup held to its budget, named.
			if cgs := stringsOf(evidence(f, "cgroups")); len(cgs) != 1 || cgs[0] != c.Path || !strings.Contains(f.Title, c.Path) {
				t.Errorf("evidence cgroups %v and title %q, want the writer's cgroup %s", evidence(f, "cgroups"), f.Title, c.Path)
			}
			// By how much, from iocost's tracepoints: the vrate held at
			// 100% of the model (min=max=100), and the cgroup, alone on
			// the disk, given the whole budget.
			if v, _ := evidence(f, "vrate_pct").(float64); v != 100 {
				t.Errorf("evidence vrate_pct %v, want 100 (io.cost.qos min=max=100)", evidence(f, "vrate_pct"))
			}
			if v, _ := evidence(f, "share_pct").(float64); v != 100 {
				t.Errorf("evidence share_pct %v, want 100 (the writer's cgroup alone on %s)", evidence(f, "share_pct"), dev)
			}
			if !strings.Contains(f.Title, "vrate 100%") || !strings.Contains(f.Explanation, "vrate") {
				t.Errorf("title %q and explanation do not say the vrate", f.Title)
			}
		})
	}
}

// TestRecordThrottleTrace records testdata/traces/loop-cgroup-throttle: the
// writer of TestCgroupThrottle in a cgroup with a write-IOPS limit on a
// disk-backed loop device. Only with -record.
func TestRecordThrottleTrace(t *testing.T) {
	if !*record {
		t.Skip("records testdata/traces again only with -record")
	}
	scenario.RequireRoot(t)
	dev := scenario.DiskLoop(t, 128<<20)
	c := scenario.IOCgroup(t, "thr")
	if err := c.LimitWriteIOPS(dev, 40); err != nil {
		t.Fatal(err)
	}
	scenario.WriterIn(t, c, dev, 12*time.Second)
	time.Sleep(time.Second)
	trace := filepath.Join(tracesDir, "loop-cgroup-throttle.trace.gz")
	r := run(t, "diagnose", "storage", "--duration", "5s", "--record", trace, "--output", os.DevNull)
	if r.code != 0 {
		t.Fatalf("diagnose: exit %d, stderr %q", r.code, r.stderr)
	}
	fi, _ := os.Stat(trace)
	t.Logf("recorded %s (%d bytes); now run go test ./cmd/whyslow -run TestAnalyzeTraces -update", trace, fi.Size())
}
