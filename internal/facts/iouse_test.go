package facts

import (
	"math"
	"slices"
	"testing"

	"github.com/whyslow/whyslow/internal/event"
)

func usage(tk event.Task, cgroup string, id uint64, dev event.Device, op string, sync bool, ios, bytes uint64, inFlightMs float64) event.IOUsage {
	return event.IOUsage{Time: at(10_000), Task: tk, Cgroup: cgroup, CgroupID: id, Dev: dev, Op: op, Sync: sync,
		IOs: ios, Requests: ios, Bytes: bytes, InFlight: msd(inFlightMs)}
}

// A device's I/O per process and per cgroup: sums, shares, the order (most
// time in flight first), a process's cgroup (its heaviest), a cgroup's
// processes.
func TestIOBy(t *testing.T) {
	reader := event.Task{Pid: 10, Tgid: 10, Comm: "scan"}
	writer := event.Task{Pid: 20, Tgid: 20, Comm: "db"}
	kworker := event.Task{Pid: 30, Tgid: 30, Comm: "kworker/u8:1"}
	k := usage(kworker, "/b", 7, loop0, "write", false, 40, 40<<12, 200)
	k.Kthread = true
	run := Build(newTimeline(
		usage(reader, "/batch", 5, loop0, "read", true, 9000, 9000<<12, 27000),
		usage(writer, "/", 1, loop0, "write", true, 900, 900<<12, 2400),
		usage(writer, "/", 1, loop0, "flush", true, 100, 0, 200),
		usage(kworker, "/batch", 5, loop0, "write", false, 10, 10<<12, 100),
		k,
		usage(writer, "", 99, loop1, "write", true, 5, 5<<12, 1),
	), Options{})
	d := run.Find("loop0")
	if d == nil {
		t.Fatal("no loop0")
	}
	if d.IO.IOs != 10050 || d.IO.InFlightMs != 29900 || d.IO.Reads != 9000 || d.IO.Writes != 950 ||
		d.IO.SyncWrites != 900 || d.IO.Flushes != 100 || d.IO.TimeShare != 1 {
		t.Errorf("device totals %+v", d.IO)
	}
	if want := []string{"scan", "db", "kworker/u8:1"}; !slices.Equal(d.IO.Comms, want) {
		t.Errorf("device comms %v, want %v", d.IO.Comms, want)
	}
	var pids []uint32
	for _, u := range d.IOBy {
		pids = append(pids, u.Pid)
	}
	if !slices.Equal(pids, []uint32{10, 20, 30}) {
		t.Fatalf("IOBy order %v, want 10 20 30", pids)
	}
	top := d.IOBy.Top()
	if top.Comm != "scan" || top.Cgroup != "/batch" || math.Abs(top.TimeShare-27000.0/29900) > 1e-9 ||
		math.Abs(top.IOShare-9000.0/10050) > 1e-9 || top.MeanInFlightMs() != 3 {
		t.Errorf("top %+v", *top)
	}
	kw := d.IOBy[2]
	if !kw.Kthread || kw.Cgroup != "/b" || kw.IOs != 50 {
		t.Errorf("kworker row %+v: want a kernel thread charged mostly to /b", kw)
	}
	var cgs []string
	for _, u := range d.IOByCgroup {
		cgs = append(cgs, u.Cgroup)
	}
	if !slices.Equal(cgs, []string{"/batch", "/", "/b"}) {
		t.Errorf("IOByCgroup order %v", cgs)
	}
	if c := d.IOByCgroup[0]; !slices.Equal(c.Comms, []string{"scan", "kworker/u8:1"}) || c.Pid != 0 || c.IOs != 9010 {
		t.Errorf("cgroup /batch %+v", c)
	}
	if got := d.IOBy.Except(Tasks{{Pid: 10, Tgid: 10}}).Tasks().Comms(); !slices.Equal(got, []string{"db", "kworker/u8:1"}) {
		t.Errorf("Except the reader: %v", got)
	}
	if got := d.IOBy.Take(1).Tasks(); len(got) != 1 || got[0].Cgroup != "/batch" || got[0].Tgid != 10 {
		t.Errorf("Take(1).Tasks() = %+v", got)
	}
	if got := run.Find("loop1").IOBy.Top(); got == nil || got.Cgroup != "#99" {
		t.Errorf("a gone cgroup is named by id: %+v", got)
	}
	if (IOUses{}).Top() != nil || (IOUses{}).Take(3) != nil && len((IOUses{}).Take(3)) != 0 {
		t.Error("empty rows")
	}
}

func TestTaskParts(t *testing.T) {
	ts := Tasks{{Pid: 1, Tgid: 1, Comm: "a"}, {Pid: 2, Tgid: 1, Comm: "a"}, {Pid: 3, Tgid: 3, Comm: "b"}}
	if c := ts.AsCause("freezer"); c[0].Part != PartCause || c[0].Role != "freezer" {
		t.Errorf("AsCause: %+v", c[0])
	}
	if v := ts.AsVictim(""); v[2].Part != PartVictim || v[2].Role != PartVictim {
		t.Errorf("AsVictim: %+v", v[2])
	}
	if v := ts.As("victim"); v[0].Part != PartVictim {
		t.Errorf("As(victim) sets no part: %+v", v[0])
	}
	if s := ts.As("submitter"); s[0].Part != "" {
		t.Errorf("As(submitter) set a part: %+v", s[0])
	}
	if got := ts.NotIn(Tasks{{Pid: 1, Tgid: 1}}); len(got) != 1 || got[0].Pid != 3 {
		t.Errorf("NotIn: %+v", got)
	}
}
