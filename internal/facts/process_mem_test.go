package facts

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// TestProcessOnOneDevice: a process on one device shares its sums there
// with its sums over all (no second set is kept); one on two devices has
// each device's own. Merging them (ProcessesOn) twice gives the same
// totals: the shared sums are not written to.
func TestProcessOnOneDevice(t *testing.T) {
	ms := uint64(time.Millisecond)
	sdb := event.Device{Major: 8, Minor: 16, Name: "sdb"}
	at := event.Mono(10 * time.Second)
	tests := []struct {
		name  string
		stats []event.SyscallStats
		// want: the process's total, then each device's.
		total time.Duration
		on    map[string]time.Duration
	}{
		{"one device", []event.SyscallStats{
			{Time: at, Pid: 7, Comm: "db", Call: "pwrite64", Dev: loop0, Latency: latencies(2*ms, 3*ms)},
			{Time: at, Pid: 7, Comm: "db", Call: "fdatasync", Dev: loop0, Latency: latencies(10 * ms)},
		}, 15 * time.Millisecond, map[string]time.Duration{"loop0": 15 * time.Millisecond, "sdb": 0}},
		{"two devices", []event.SyscallStats{
			{Time: at, Pid: 7, Comm: "db", Call: "pwrite64", Dev: loop0, Latency: latencies(2*ms, 3*ms)},
			{Time: at, Pid: 7, Comm: "db", Call: "pwrite64", Dev: sdb, Latency: latencies(4 * ms)},
		}, 9 * time.Millisecond, map[string]time.Duration{"loop0": 5 * time.Millisecond, "sdb": 4 * time.Millisecond}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tl := &timeline.Timeline{Start: 0, End: at}
			for _, s := range tc.stats {
				tl.Add(s)
			}
			run := Build(tl, Options{})
			if len(run.Processes) != 1 {
				t.Fatalf("%d processes, want 1", len(run.Processes))
			}
			p := run.Processes[0]
			if p.Total != tc.total {
				t.Errorf("total %v, want %v", p.Total, tc.total)
			}
			for dev, want := range tc.on {
				if got := p.On(dev).Total; got != want {
					t.Errorf("on %s: total %v, want %v", dev, got, want)
				}
				if got := p.On(dev).Call("pwrite64").Latency.Count; want > 0 && got == 0 {
					t.Errorf("on %s: no pwrite64 latencies", dev)
				}
			}
			n := p.Call("pwrite64").Latency.Count
			all := map[string]bool{"loop0": true, "sdb": true}
			for i := 0; i < 2; i++ {
				m := ProcessesOn(run.Processes, all)
				if len(m) != 1 || m[0].Total != tc.total || m[0].Call("pwrite64").Latency.Count != p.Call("pwrite64").Latency.Count {
					t.Fatalf("merge %d: %+v, want total %v", i, m, tc.total)
				}
			}
			if p.Total != tc.total || p.Call("pwrite64").Latency.Count != n {
				t.Errorf("after merging: total %v, pwrite64 %d calls, want %v, %d", p.Total, p.Call("pwrite64").Latency.Count, tc.total, n)
			}
		})
	}
}

// manyProcesses is a timeline of n processes (a loaded build host: many
// short-lived ones), each with 2 system calls on one device, and every
// 10th also on a second device.
func manyProcesses(n int) *timeline.Timeline {
	ms := uint64(time.Millisecond)
	sdb := event.Device{Major: 8, Minor: 16, Name: "sdb"}
	at := event.Mono(60 * time.Second)
	tl := &timeline.Timeline{Start: 0, End: at}
	for i := range n {
		pid := uint32(1000 + i)
		comm := fmt.Sprintf("cc%d", i)
		tl.Add(event.SyscallStats{Time: at, Pid: pid, Comm: comm, Call: "read", Dev: loop0, Latency: latencies(ms, 2*ms)})
		tl.Add(event.SyscallStats{Time: at, Pid: pid, Comm: comm, Call: "write", Dev: loop0, Latency: latencies(3 * ms)})
		if i%10 == 0 {
			tl.Add(event.SyscallStats{Time: at, Pid: pid, Comm: comm, Call: "write", Dev: sdb, Latency: latencies(4 * ms)})
		}
	}
	return tl
}

// BenchmarkBuildManyProcesses: facts.Build of 3000 processes' system-call
// sums; live-MiB is what the run built holds (measured after a GC).
func BenchmarkBuildManyProcesses(b *testing.B) {
	tl := manyProcesses(3000)
	b.ReportAllocs()
	var live float64
	for b.Loop() {
		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		run := Build(tl, Options{})
		runtime.GC()
		runtime.ReadMemStats(&m1)
		live = float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc)) / (1 << 20)
		runtime.KeepAlive(run)
	}
	b.ReportMetric(live, "live-MiB")
}
