package main

// The seed's incident, for real, in the qemu kernel matrix (make vmtest):
// bcache0 over a slow "HDD" (a virtio disk qemu throttles) with a fast
// "NVMe" cache, a udev rule rewriting the HDD's queue attributes on every
// change uevent (as rules tuning rotational disks do), a monitoring daemon
// whose periodic command makes change uevents for every block device, and an
// fdatasync-heavy writer on bcache0, as Ceph's journal was. In writethrough
// mode each write goes to the HDD too, submitted from the writer's thread
// (the seed's flame graph had fdatasync's time in bio submission), and
// waits there while the HDD's queue is frozen. (In writeback mode
// bcache's workers would submit to the HDD instead.)

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/scenario"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/internal/tracefile"
)

// bcacheDisks returns the matrix's two disks, or skips: only the guests of
// make vmtest have them (and bcache: this host's kernel has none). In the
// matrix a missing disk or bcache fails the test.
func bcacheDisks(t *testing.T) (hdd, nvme string) {
	t.Helper()
	scenario.RequireRoot(t)
	hdd, nvme = scenario.DiskBySerial("hdd"), scenario.DiskBySerial("nvme")
	if hdd == "" || nvme == "" {
		scenario.Skip(t, "needs the qemu kernel matrix's virtio disks \"hdd\" and \"nvme\" (found %q, %q) and bcache: run make vmtest", hdd, nvme)
	}
	if _, err := os.Stat("/sys/fs/bcache/register"); err != nil {
		scenario.Skip(t, "needs bcache (the bcache module): %v", err)
	}
	return hdd, nvme
}

// TestBcache runs the control, then the incident, on one bcache, udevd and
// writer: the control without the monitoring daemon, the incident with it.
func TestBcache(t *testing.T) {
	hdd, nvme := bcacheDisks(t)
	bc := scenario.Bcache(t, hdd, nvme, "writethrough")
	scenario.QueueRule(t, hdd)
	// Long enough for both runs even under qemu's emulation; the cleanup
	// stops it. It writes only while a diagnosis observes (writing).
	w := scenario.Writer(t, bc, 10*time.Minute)
	time.Sleep(2 * time.Second)
	if err := w.Pause(); err != nil {
		t.Fatal(err)
	}
	writing := func() func() {
		if err := w.Resume(); err != nil {
			t.Fatal(err)
		}
		return func() {
			if err := w.Pause(); err != nil {
				t.Error(err)
			}
		}
	}

	// The same bcache, rule and writer, no monitoring daemon: nothing may
	// blame a freeze or udev.
	t.Run("control", func(t *testing.T) {
		checkControl(t, diagnoseUnder(t, 15*time.Second, writing), hdd)
	})
	t.Run("incident", func(t *testing.T) { bcacheIncident(t, hdd, bc, writing) })
}

// bcacheIncident: the monitoring daemon's command makes change uevents for
// every block device; udev's rule freezes the backing device's queue on
// each. The top finding must be the freeze stall on the backing device,
// caused by arcconf run by raidmon, and rest on the direct probes, with
// the stalls of bcache0's own submissions meanwhile measured on bcache0.
func bcacheIncident(t *testing.T, hdd, bc string, writing func() (stop func())) {
	mon := scenario.MonitorAll(t, 3*time.Second)
	// make vmtest brings WHYSLOW_RECORD_DIR back: its trace of the incident
	// is what testdata/traces/bcache-*.trace.gz are.
	dir := os.Getenv("WHYSLOW_RECORD_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	trace := filepath.Join(dir, "bcache-incident.trace.gz")
	rep := diagnoseUnder(t, 20*time.Second, writing, "--record", trace)
	t.Logf("findings:\n%s", summary(rep))
	if len(rep.Findings) == 0 {
		t.Fatal("no findings")
	}
	top := rep.Findings[0]
	if top.Rule != "queue-freeze-stall" {
		t.Fatalf("top finding is %q, want queue-freeze-stall", top.Rule)
	}
	// The freeze stalls the backing device: bcache0 itself has no request
	// queue to freeze.
	if !slices.Contains(top.Devices, hdd) {
		t.Errorf("top finding names devices %v, want the backing device %s", top.Devices, hdd)
	}
	if slices.Contains(top.Devices, bc) {
		t.Errorf("top finding blames %s, want its backing device %s", bc, hdd)
	}
	var freezer, submitter bool
	for _, p := range top.Processes {
		freezer = freezer || (p.Role == "freezer" && slices.Contains(udevComms, p.Comm))
		submitter = submitter || (p.Role == "submitter" && p.Comm == "fio")
	}
	if !freezer || !submitter {
		t.Errorf("top finding's processes %+v: want a udev worker as freezer (%v) and fio as submitter (%v)", top.Processes, freezer, submitter)
	}
	if tr := top.Trigger; tr == nil {
		t.Error("top finding has no trigger")
	} else if tr.Comm != "arcconf" || tr.ParentComm != "raidmon" || int(tr.PPid) != mon.Pid {
		t.Errorf("trigger = %+v, want arcconf run by raidmon (pid %d)", tr, mon.Pid)
	}
	checkDirectPrecision(t, rep, top)

	tl, _, err := tracefile.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	checkEveryDeviceChanged(t, tl)
	// bcache0's submissions stalled while hdd's queue was frozen: fio's
	// calls on bcache0 that overlap a freeze of hdd, as the trace has them,
	// are what the finding must count and name.
	freezes := spansOf(tl.Freezes, func(f event.Freeze) (string, event.Mono, time.Duration) { return f.Dev.Name, f.Start, f.Duration }, hdd)
	stalled := overlapping(tl.SubmitCalls, freezes, bc)
	if len(freezes) == 0 || stalled == 0 {
		t.Errorf("the trace has %d freezes of %s and %d calls by fio on %s overlapping them: want both", len(freezes), hdd, stalled, bc)
	}
	n, _ := evidence(top, "upper_stalls").(float64)
	maxMs, _ := evidence(top, "upper_stall_max_ms").(float64)
	if n < 1 || maxMs < 1 || !slices.Contains(stringsOf(evidence(top, "upper_stalled")), bc) {
		t.Errorf("evidence upper_stalls %v, upper_stall_max_ms %v, upper_stalled %v: want %s's stalls during the freezes (the trace has %d by fio)",
			evidence(top, "upper_stalls"), evidence(top, "upper_stall_max_ms"), evidence(top, "upper_stalled"), bc, stalled)
	}
	if n < float64(stalled) {
		t.Errorf("evidence counts %v stalls of %s during the freezes, the trace has %d by fio alone", n, bc, stalled)
	}
	if want := fmt.Sprintf("%d submission", int(n)); !strings.Contains(top.Explanation, want) ||
		!strings.Contains(top.Explanation, fmt.Sprintf(" to %s, stacked on %s, stalled meanwhile, up to ", bc, hdd)) {
		t.Errorf("explanation does not say that %v submissions to %s stalled meanwhile (%q): %s", n, bc, want, top.Explanation)
	}
	// Nested in those calls, fio's submissions to hdd are timed on hdd.
	if k := overlapping(tl.SubmitCalls, freezes, hdd); k == 0 {
		t.Errorf("no call by fio on %s overlapping its freezes: nested submissions are not timed on their own device", hdd)
	}

	// whyslow trace submit -d hdd shows them, live.
	p := startTrace(t, nil, "trace", "submit", "--json", "--min", "1ms", "-d", hdd)
	stop := writing()
	line := p.waitLine(t, 30*time.Second, "slow submission by fio on "+hdd, func(l string) bool {
		return strings.Contains(l, `"comm":"fio"`)
	})
	stop()
	p.stop(t)
	p.checkCleanEnd(t)
	if m := jsonLine(t, line); m["disk"] != hdd || num(m, "latency_ns") < 1e6 {
		t.Errorf("trace submit -d %s: %s", hdd, line)
	}
}

// checkEveryDeviceChanged: the monitor's command made a change uevent for
// every block device of the machine.
func checkEveryDeviceChanged(t *testing.T, tl *timeline.Timeline) {
	t.Helper()
	devs, _ := filepath.Glob("/sys/block/*")
	changed := map[string]bool{}
	for _, u := range tl.Uevents {
		if u.Action == "change" && u.Subsystem == "block" {
			changed[strings.TrimPrefix(u.DevName, "/dev/")] = true
		}
	}
	for _, d := range devs {
		if !changed[filepath.Base(d)] {
			t.Errorf("no change uevent for %s in the run (change uevents for %v)", filepath.Base(d), changed)
		}
	}
}

// span is a time interval on a device.
type span struct{ start, end event.Mono }

func spansOf[E any](evs []E, get func(E) (string, event.Mono, time.Duration), dev string) []span {
	var out []span
	for _, e := range evs {
		if name, start, d := get(e); name == dev {
			out = append(out, span{start, start.Add(d)})
		}
	}
	return out
}

// overlapping counts fio's calls on dev that overlap one of the spans.
func overlapping(calls []event.SubmitCall, spans []span, dev string) int {
	n := 0
	for _, c := range calls {
		if c.Dev.Name != dev || c.Task.Comm != "fio" {
			continue
		}
		end := c.Start.Add(c.Latency)
		for _, s := range spans {
			if c.Start <= s.end && s.start <= end {
				n++
				break
			}
		}
	}
	return n
}

func evidence(f report.Finding, name string) any {
	for _, e := range f.Evidence {
		if e.Name == name {
			return e.Value
		}
	}
	return nil
}

func stringsOf(v any) []string {
	var out []string
	l, _ := v.([]any)
	for _, x := range l {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// checkDirectPrecision: where the kernel allows fentry or kprobes
// (WHYSLOW_EXPECT_MECHANISMS, set by make vmtest), the finding must rest on
// the direct probes, not on inference from off-CPU stacks.
func checkDirectPrecision(t *testing.T, rep *report.Report, f report.Finding) {
	t.Helper()
	want := expectedMechanisms()
	if len(want) == 0 {
		return
	}
	for _, p := range rep.Probes {
		if p.Name == "freeze" || p.Name == "queueenter" || p.Name == "submitfn" {
			if p.Status != "ok" || p.Mechanism != want[0] {
				t.Errorf("probe %s on %s (%s), want %s", p.Name, p.Mechanism, p.Reason, want[0])
			}
		}
	}
	if !strings.Contains(f.Precision, want[0]) {
		t.Errorf("finding rests on %v, want the %s probes", f.Precision, want[0])
	}
}
