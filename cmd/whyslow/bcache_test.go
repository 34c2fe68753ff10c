package main

// The seed's incident, for real, in the qemu kernel matrix (make vmtest):
// bcache0 over a slow "HDD" (a virtio disk qemu throttles) with a fast
// "NVMe" cache, a udev rule rewriting the HDD's queue attributes on every
// change uevent (as rules tuning rotational disks do), a monitoring daemon
// whose periodic command makes change uevents for every disk, and an
// fdatasync-heavy writer on bcache0, as Ceph's journal was. In writethrough
// mode each write goes to the HDD too, submitted from the writer's thread
// (the seed's flame graph had fdatasync's time in bio submission), and
// waits there while the HDD's queue is frozen. (In writeback mode
// bcache's workers would submit to the HDD instead.)

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/scenario"
	"github.com/whyslow/whyslow/report"
)

// bcacheDisks returns the matrix's two disks, or skips: only the guests of
// make vmtest have them (and bcache: this host's kernel has none).
func bcacheDisks(t *testing.T) (hdd, nvme string) {
	t.Helper()
	scenario.RequireRoot(t)
	hdd, nvme = scenario.DiskBySerial("hdd"), scenario.DiskBySerial("nvme")
	if hdd == "" || nvme == "" {
		t.Skip("needs the qemu kernel matrix's virtio disks \"hdd\" and \"nvme\" and bcache: run make vmtest")
	}
	return hdd, nvme
}

func TestBcacheIncident(t *testing.T) {
	hdd, nvme := bcacheDisks(t)
	bc := scenario.Bcache(t, hdd, nvme, "writethrough")
	scenario.QueueRule(t, hdd)
	mon := scenario.MonitorDevices(t, []string{hdd, nvme}, 3*time.Second)
	scenario.Writer(t, bc, 60*time.Second)
	time.Sleep(2 * time.Second)

	args := []string{"--duration", "20s"}
	// make vmtest brings this directory back: its trace of the incident is
	// what testdata/traces/bcache-*.trace.gz are.
	if dir := os.Getenv("WHYSLOW_RECORD_DIR"); dir != "" {
		args = append(args, "--record", filepath.Join(dir, "bcache-incident.trace.gz"))
	}
	rep := diagnoseJSON(t, args...)
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
	if !strings.Contains(top.Explanation, bc) {
		t.Errorf("explanation does not say that %s stalls with %s: %s", bc, hdd, top.Explanation)
	}
	var freezer, submitter bool
	for _, p := range top.Processes {
		freezer = freezer || (p.Role == "freezer" && slices.Contains(udevComms, p.Comm))
		submitter = submitter || (p.Role == "submitter" && p.Comm == "fio")
	}
	if !freezer || !submitter {
		t.Errorf("top finding's processes %+v: want a udev worker as freezer (%v) and fio as submitter (%v)", top.Processes, freezer, submitter)
	}
	tr := top.Trigger
	if tr == nil {
		t.Fatal("top finding has no trigger")
	}
	if tr.Comm != "arcconf" || tr.ParentComm != "raidmon" || int(tr.PPid) != mon.Pid {
		t.Errorf("trigger = %+v, want arcconf run by raidmon (pid %d)", tr, mon.Pid)
	}
	checkDirectPrecision(t, rep, top)
}

// TestBcacheControl: the same bcache, rule and writer, no monitoring
// daemon: nothing may blame a freeze or udev.
func TestBcacheControl(t *testing.T) {
	hdd, nvme := bcacheDisks(t)
	bc := scenario.Bcache(t, hdd, nvme, "writethrough")
	scenario.QueueRule(t, hdd)
	scenario.Writer(t, bc, 40*time.Second)
	time.Sleep(2 * time.Second)

	checkControl(t, diagnoseJSON(t, "--duration", "15s"), hdd)
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
