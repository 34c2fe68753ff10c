package probes

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// writeTree makes files with their directories.
func writeTree(t *testing.T, files map[string]string) {
	t.Helper()
	for p, s := range files {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// The probe's reading of cgroupfs, on a tree of the files the kernel
// writes (as cat shows them on 6.18 for v1, 6.1 for v2): the limits of
// both hierarchies, the counters, the processes of a limited cgroup and of
// one below it, iocost's configuration; "max" and disabled devices are
// left out. (Against the real kernel: TestCgroupThrottle, TestIOCost.)
func TestIOLimitsReadsCgroupfs(t *testing.T) {
	root := t.TempDir()
	proc, sys := filepath.Join(root, "proc"), filepath.Join(root, "sys")
	v1, v2 := filepath.Join(root, "blkio"), filepath.Join(root, "unified")
	writeTree(t, map[string]string{
		filepath.Join(proc, "self", "mountinfo"): "35 28 0:30 / " + v1 + " rw,relatime shared:15 - cgroup cgroup rw,blkio\n" +
			"36 28 0:31 / " + v2 + " rw,relatime shared:16 - cgroup2 cgroup2 rw\n" +
			"37 28 0:30 /sub " + root + "/bind rw - cgroup cgroup rw,blkio\n",
		filepath.Join(proc, "4242", "comm"): "fio\n",
		// v1: a limited cgroup, a child with a process, an unlimited one
		filepath.Join(v1, "blkio.throttle.write_iops_device"):            "",
		filepath.Join(v1, "backup", "blkio.throttle.write_iops_device"):  "7:0 50\n",
		filepath.Join(v1, "backup", "blkio.throttle.read_bps_device"):    "7:0 1048576\n8:0 2097152\n",
		filepath.Join(v1, "backup", "blkio.throttle.io_serviced"):        "7:0 Read 3\n7:0 Write 802\n7:0 Sync 805\n7:0 Async 0\n7:0 Total 805\nTotal 805\n",
		filepath.Join(v1, "backup", "blkio.throttle.io_service_bytes"):   "7:0 Read 12288\n7:0 Write 3284992\nTotal 3297280\n",
		filepath.Join(v1, "backup", "cgroup.procs"):                      "",
		filepath.Join(v1, "backup", "job", "cgroup.procs"):               "4242\n",
		filepath.Join(v1, "backup", "job", "blkio.throttle.io_serviced"): "",
		filepath.Join(v1, "other", "blkio.throttle.write_iops_device"):   "",
		filepath.Join(v1, "other", "cgroup.procs"):                       "1\n",
		// v2: io.max with "max" values, io.stat, iocost at the root
		filepath.Join(v2, "thr", "io.max"):       "254:16 rbps=max wbps=2097152 riops=max wiops=50\n",
		filepath.Join(v2, "thr", "io.stat"):      "254:16 rbytes=0 wbytes=4096000 rios=0 wios=1000 dbytes=0 dios=0\n",
		filepath.Join(v2, "thr", "cgroup.procs"): "",
		filepath.Join(v2, "free", "io.max"):      "",
		// a read limit that has let no byte through: io.stat has no
		// line for the device yet
		filepath.Join(v2, "held", "io.max"):         "254:16 rbps=4096 wbps=max riops=max wiops=max\n",
		filepath.Join(v2, "held", "io.stat"):        "",
		filepath.Join(v2, "held", "cgroup.procs"):   "",
		filepath.Join(v2, "io.cost.qos"):            "254:16 enable=1 ctrl=user rpct=0.00 rlat=0 wpct=0.00 wlat=0 min=100.00 max=100.00\n254:0 enable=0 ctrl=auto rpct=0.00 rlat=250000 wpct=0.00 wlat=250000 min=1.00 max=10000.00\n",
		filepath.Join(v2, "io.cost.model"):          "254:16 ctrl=user model=linear rbps=20000000 rseqiops=100 rrandiops=100 wbps=20000000 wseqiops=100 wrandiops=100\n",
		filepath.Join(sys, "devices", "loop0", "x"): "",
		filepath.Join(sys, "devices", "vdb", "x"):   "",
	})
	for id, name := range map[string]string{"7:0": "loop0", "254:16": "vdb"} {
		if err := os.MkdirAll(filepath.Join(sys, "dev", "block"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join("..", "..", "devices", name), filepath.Join(sys, "dev", "block", id)); err != nil {
			t.Fatal(err)
		}
	}
	sink := &blkSink{}
	r, st := iolimitsProbe{}.Start(Config{ProcFS: proc, SysFS: sys}, sink)
	if st.Status != event.StatusOK || st.Mechanism != event.MechCgroupfs {
		t.Fatalf("status %+v", st)
	}
	// More I/O before the stop.
	writeTree(t, map[string]string{filepath.Join(v2, "thr", "io.stat"): "254:16 rbytes=0 wbytes=8192000 rios=0 wios=2000\n"})
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	var limits []event.IOLimit
	var counts []event.CgroupIO
	var members []event.CgroupMember
	var costs []event.IOCost
	for _, e := range sink.events {
		switch e := e.(type) {
		case event.IOLimit:
			e.Time = 0
			limits = append(limits, e)
		case event.CgroupIO:
			e.Time = 0
			counts = append(counts, e)
		case event.CgroupMember:
			e.Time = 0
			members = append(members, e)
		case event.IOCost:
			e.Time = 0
			costs = append(costs, e)
		}
	}
	loop0 := event.Device{Major: 7, Minor: 0, Name: "loop0"}
	vdb := event.Device{Major: 254, Minor: 16, Name: "vdb"}
	sda := event.Device{Major: 8, Minor: 0}
	wantLimits := []event.IOLimit{
		{Cgroup: "/backup", V1: true, Dev: loop0, Limit: "rbps", Value: 1048576},
		{Cgroup: "/backup", V1: true, Dev: sda, Limit: "rbps", Value: 2097152},
		{Cgroup: "/backup", V1: true, Dev: loop0, Limit: "wiops", Value: 50},
		{Cgroup: "/held", Dev: vdb, Limit: "rbps", Value: 4096},
		{Cgroup: "/thr", Dev: vdb, Limit: "wbps", Value: 2097152},
		{Cgroup: "/thr", Dev: vdb, Limit: "wiops", Value: 50},
	}
	if !slices.Equal(limits, wantLimits) {
		t.Errorf("limits:\n%+v\nwant\n%+v", limits, wantLimits)
	}
	wantCounts := []event.CgroupIO{
		{Cgroup: "/backup", V1: true, Dev: loop0, Reads: 3, Writes: 802, ReadBytes: 12288, WriteBytes: 3284992},
		{Cgroup: "/held", Dev: vdb},
		{Cgroup: "/thr", Dev: vdb, Writes: 1000, WriteBytes: 4096000},
		{Cgroup: "/backup", V1: true, Dev: loop0, Reads: 3, Writes: 802, ReadBytes: 12288, WriteBytes: 3284992},
		{Cgroup: "/held", Dev: vdb},
		{Cgroup: "/thr", Dev: vdb, Writes: 2000, WriteBytes: 8192000},
	}
	if !slices.Equal(counts, wantCounts) {
		t.Errorf("counters:\n%+v\nwant\n%+v", counts, wantCounts)
	}
	if want := []event.CgroupMember{{Cgroup: "/backup", V1: true, Pid: 4242, Comm: "fio"}}; !slices.Equal(members, want) {
		t.Errorf("members %+v, want %+v", members, want)
	}
	wantCosts := []event.IOCost{{Dev: vdb,
		QoS:   "enable=1 ctrl=user rpct=0.00 rlat=0 wpct=0.00 wlat=0 min=100.00 max=100.00",
		Model: "ctrl=user model=linear rbps=20000000 rseqiops=100 rrandiops=100 wbps=20000000 wseqiops=100 wrandiops=100"}}
	if !slices.Equal(costs, wantCosts) {
		t.Errorf("iocost %+v, want %+v", costs, wantCosts)
	}
	if len(sink.losses) != 0 {
		t.Errorf("losses %+v", sink.losses)
	}
}

// The counters a v2 cgroup's readings deliver, reading after reading
// (the start, polls every 500 ms, the stop): those that changed, and the
// reading before each change too, at the time it was taken, so that the
// analysis starts the cgroup's I/O there and not at the last reading
// delivered (the run's start for a cgroup idle until the middle of the
// run). A device of io.max that io.stat does not list yet reads as zero.
func TestIOLimitsCountersTimeTheChange(t *testing.T) {
	type reading struct {
		ms   int64
		stat string // io.stat
		all  bool   // the start or the stop
	}
	type delivered struct {
		ms     int64
		writes uint64
	}
	stat := func(wios int) string {
		return fmt.Sprintf("254:16 rbytes=0 wbytes=%d rios=0 wios=%d dbytes=0 dios=0\n", wios*4096, wios)
	}
	for _, tc := range []struct {
		name     string
		readings []reading
		want     []delivered
	}{
		{"no line until its I/O began", []reading{{0, "", true}, {500, "", false}, {1000, "", false}, {1500, stat(20), false}, {2000, stat(40), false}, {2500, stat(40), false}, {3000, stat(40), true}},
			[]delivered{{0, 0}, {1000, 0}, {1500, 20}, {2000, 40}, {3000, 40}}},
		{"idle, then I/O", []reading{{0, stat(100), true}, {500, stat(100), false}, {1000, stat(100), false}, {1500, stat(120), false}, {2000, stat(120), true}},
			[]delivered{{0, 100}, {1000, 100}, {1500, 120}, {2000, 120}}},
		{"I/O from the start", []reading{{0, stat(10), true}, {500, stat(30), false}, {1000, stat(50), false}, {1500, stat(50), true}},
			[]delivered{{0, 10}, {500, 30}, {1000, 50}, {1500, 50}}},
		{"a limit that let nothing through", []reading{{0, "", true}, {500, "", false}, {1000, "", true}},
			[]delivered{{0, 0}, {1000, 0}}},
		{"a pause between two bursts", []reading{{0, "", true}, {500, stat(10), false}, {1000, stat(10), false}, {1500, stat(10), false}, {2000, stat(30), false}, {2500, stat(30), true}},
			[]delivered{{0, 0}, {500, 10}, {1500, 10}, {2000, 30}, {2500, 30}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v2 := t.TempDir()
			writeTree(t, map[string]string{
				filepath.Join(v2, "late", "io.max"):  "254:16 rbps=max wbps=max riops=max wiops=40\n",
				filepath.Join(v2, "late", "io.stat"): "",
			})
			sink := &blkSink{}
			r := &iolimitsRunning{v2: v2, sysfs: t.TempDir(), procfs: t.TempDir(), sink: sink, names: map[string]event.Device{}, members: map[memberKey]bool{}, counters: map[counterKey]counterReading{}}
			r.readLimits(0)
			for _, rd := range tc.readings {
				writeTree(t, map[string]string{filepath.Join(v2, "late", "io.stat"): rd.stat})
				r.readCounters(event.Mono(rd.ms*int64(time.Millisecond)), rd.all)
			}
			var got []delivered
			for _, e := range sink.events {
				if c, ok := e.(event.CgroupIO); ok {
					if c.Cgroup != "/late" || c.Dev.Major != 254 || c.Dev.Minor != 16 || c.WriteBytes != c.Writes*4096 {
						t.Errorf("counters %+v, want /late's on 254:16", c)
					}
					got = append(got, delivered{int64(c.Time) / int64(time.Millisecond), c.Writes})
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("delivered (ms, writes) %v, want %v", got, tc.want)
			}
		})
	}
}

// Without a blkio or cgroup2 mount the probe is unavailable and says why.
func TestIOLimitsWithoutCgroups(t *testing.T) {
	proc := t.TempDir()
	writeTree(t, map[string]string{filepath.Join(proc, "self", "mountinfo"): "22 1 0:21 / /proc rw - proc proc rw\n"})
	r, st := iolimitsProbe{}.Start(Config{ProcFS: proc, SysFS: t.TempDir()}, &blkSink{})
	if r != nil || st.Status != event.StatusUnavailable || st.Reason == "" {
		t.Errorf("status %+v", st)
	}
}
