package flight

import (
	"slices"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

func ioLimit(at event.Mono, value uint64) event.IOLimit {
	return event.IOLimit{Time: at, Cgroup: "/thr", V1: true, Dev: loop0, Limit: "wiops", Value: value}
}

func process(at event.Mono, pid uint32, comm string) event.Process {
	return event.Process{Time: at, Pid: pid, Comm: comm, Cgroup: "/user.slice", Blkio: "/thr"}
}

func pids(ps []event.Process) []uint32 {
	var out []uint32
	for _, p := range ps {
		out = append(out, p.Pid)
	}
	return out
}

// The states the probes describe once, at their start (a cgroup's limit,
// its members, the dirty limits, a mount, the wbt target, a process's
// names), are in every later window, set at its start, long after their
// segments left the recorder; a later change replaces them, an exit
// forgets the process's.
func TestDescribedOutlivesKeep(t *testing.T) {
	r := New(Options{Keep: 5 * time.Second}, 10*sec)
	states := map[event.Mono]State{}
	checkpoint := func(at event.Mono) {
		st := State{At: at}
		r.AddState(st)
		states[at] = st
	}
	checkpoint(10 * sec)
	r.Event(ioLimit(10*sec+1, 40))
	r.Event(event.CgroupMember{Time: 10*sec + 2, Cgroup: "/thr", V1: true, Pid: 100, Comm: "fio"})
	r.Event(event.DirtyLimits{Time: 10*sec + 3, Ratio: 20, BackgroundRatio: 10, PageSize: 4096})
	r.Event(event.Mount{Time: 10*sec + 4, Dev: loop0, FsDev: "loop0", FSType: "ext4", Point: "/mnt/a"})
	r.Event(event.WbtLat{Time: 10*sec + 5, Dev: loop0, Lat: 2 * time.Millisecond, From: "sysfs"})
	r.Event(process(10*sec+6, 100, "fio"))
	r.Event(process(10*sec+7, 200, "dd"))
	for at := 11 * sec; at <= 40*sec; at += sec {
		r.Rotate(at)
		checkpoint(at)
		r.Event(submit(at+1, 5*time.Millisecond))
		switch at {
		case 20 * sec:
			r.Event(event.WbtLat{Time: at + 2, Dev: loop0, Lat: 0, From: "wbt_lat"})
		case 25 * sec:
			r.Event(event.Exit{Time: at + 2, Pid: 200})
		}
		if at == 22*sec {
			// A window over the change: the target as it was at the
			// start, then the change.
			tl := r.Window(states[19*sec], states[22*sec])
			tl.Sort()
			if len(tl.WbtLats) != 2 || tl.WbtLats[0].Lat != 2*time.Millisecond || tl.WbtLats[0].Time != 19*sec || tl.WbtLats[1].Lat != 0 {
				t.Errorf("wbt targets of the window 19s..22s %+v, want 2ms at 19s then 0", tl.WbtLats)
			}
			if len(tl.IOLimits) != 1 || tl.IOLimits[0].Time != 19*sec {
				t.Errorf("limits of the window 19s..22s %+v, want the one read at 10s, set at 19s", tl.IOLimits)
			}
		}
	}

	tl := r.Window(states[38*sec], states[40*sec])
	tl.Sort()
	if len(tl.SlowSubmits) != 2 {
		t.Errorf("slow submits %d, want the window's 2", len(tl.SlowSubmits))
	}
	if len(tl.IOLimits) != 1 || tl.IOLimits[0].Value != 40 || tl.IOLimits[0].Cgroup != "/thr" || tl.IOLimits[0].Time != 38*sec {
		t.Errorf("limits %+v, want wiops=40 on /thr set at the window's start", tl.IOLimits)
	}
	if len(tl.CgroupMembers) != 1 || tl.CgroupMembers[0].Pid != 100 {
		t.Errorf("cgroup members %+v, want pid 100", tl.CgroupMembers)
	}
	if len(tl.DirtyLimits) != 1 || tl.DirtyLimits[0].Ratio != 20 {
		t.Errorf("dirty limits %+v, want the ratio 20", tl.DirtyLimits)
	}
	if len(tl.Mounts) != 1 || tl.Mounts[0].Point != "/mnt/a" {
		t.Errorf("mounts %+v, want /mnt/a", tl.Mounts)
	}
	if len(tl.WbtLats) != 1 || tl.WbtLats[0].Lat != 0 {
		t.Errorf("wbt targets %+v, want the latest (0)", tl.WbtLats)
	}
	if got := pids(tl.Processes); !slices.Equal(got, []uint32{100}) {
		t.Errorf("processes %v, want 100 (200 exited)", got)
	}
	for _, e := range tl.Exits {
		t.Errorf("exit %+v carried into a later window", e)
	}

	// A dump starts with them too, at its start.
	from, parts, _, ok := r.Since(37 * sec)
	if !ok || from.At != 37*sec || len(parts) == 0 {
		t.Fatalf("Since(37s): %v, from %d, %d parts", ok, from.At, len(parts))
	}
	if d := parts[0]; len(d.IOLimits) != 1 || d.IOLimits[0].Time != 37*sec || len(d.Processes) != 1 {
		t.Errorf("the dump's first part %+v, want the states at 37s", d)
	}
	if n := r.Described(); n != 6 {
		t.Errorf("described states held %d, want 6 (limit, member, dirty limits, mount, wbt target, process 100)", n)
	}
}

// A storm that evicts the events of old segments keeps the states they
// described, and counts only the other events as lost.
func TestDescribedSurviveEviction(t *testing.T) {
	r := New(Options{MaxBytes: 8 << 10, Keep: time.Hour}, 0)
	r.AddState(State{At: 0})
	r.Event(ioLimit(1, 40))
	r.Event(submit(2, time.Millisecond))
	r.Rotate(sec)
	r.AddState(State{At: sec})
	for i := range 500 {
		r.Event(submit(sec+event.Mono(i), time.Millisecond))
	}
	r.Rotate(2 * sec)
	r.AddState(State{At: 2 * sec})
	var evicted uint64
	for _, l := range r.Totals() {
		if l.What == EvictedLoss {
			if l.Probe != event.ProbeSubmit {
				t.Errorf("evicted %d events of %s: want only the submit probe's", l.Count, l.Probe)
			}
			evicted += l.Count
		}
	}
	if evicted == 0 {
		t.Fatalf("nothing evicted: %+v (the test needs a storm past the bound)", r.Totals())
	}
	tl := r.Window(State{At: sec}, State{At: 2 * sec})
	if len(tl.IOLimits) != 1 || tl.IOLimits[0].Time != sec {
		t.Errorf("limits %+v after the eviction, want the one of the first segment, set at 1s", tl.IOLimits)
	}
	if st := r.Stats(); st.Bytes > st.MaxBytes {
		t.Errorf("held %d bytes, over the bound %d", st.Bytes, st.MaxBytes)
	}
}

// The states held past their segments are bounded per kind: the least
// recently described are forgotten first, and counted.
func TestDescribedBound(t *testing.T) {
	r := New(Options{Keep: 2 * time.Second, MaxDescribed: 3}, 0)
	for pid := uint32(1); pid <= 5; pid++ {
		r.Event(process(event.Mono(pid), pid, "p"))
	}
	r.Event(ioLimit(6, 40))
	for at := sec; at <= 5*sec; at += sec {
		r.Rotate(at)
	}
	if n := r.Described(); n != 4 {
		t.Errorf("described states %d, want 3 processes and the limit", n)
	}
	var lost uint64
	for _, l := range r.Totals() {
		if l.What == DescribedLoss && l.Probe == event.ProbeSyscall {
			lost += l.Count
		}
	}
	if lost != 2 {
		t.Errorf("forgotten states counted %d, want 2: %+v", lost, r.Totals())
	}
	tl := r.Window(State{At: 4 * sec}, State{At: 5 * sec})
	if got := pids(tl.Processes); !slices.Equal(got, []uint32{3, 4, 5}) {
		t.Errorf("processes %v, want the 3 described last", got)
	}
}

// Every kind of state a probe describes once is declared so: those the
// analysis needs in every window.
func TestDescribingStreams(t *testing.T) {
	var got []string
	for _, s := range describingStreams {
		got = append(got, s.Record())
	}
	want := []string{"process", "io_limit", "cgroup_member", "io_cost", "mount", "wbt_lat", "dirty_limits"}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("describing streams %v, want %v", got, want)
	}
}

// The exit of a process with states described survives the eviction of
// its segment's events, and forgets them; other exits are evicted.
func TestDescribedExitSurvivesEviction(t *testing.T) {
	r := New(Options{MaxBytes: 8 << 10, Keep: 3 * time.Second}, 0)
	r.Event(process(1, 100, "fio"))
	r.Rotate(sec)
	r.Event(event.Exit{Time: sec + 1, Pid: 100})
	r.Event(event.Exit{Time: sec + 2, Pid: 999}) // nothing described of it
	r.Rotate(2 * sec)
	for i := range 500 { // a storm evicts the first two segments' events
		r.Event(submit(2*sec+event.Mono(i), time.Millisecond))
	}
	var evictedExits uint64
	for _, l := range r.Totals() {
		if l.What == EvictedLoss && l.Probe == event.ProbeExec {
			evictedExits += l.Count
		}
	}
	if evictedExits != 1 {
		t.Errorf("exits evicted %d, want 1 (pid 999's): %+v", evictedExits, r.Totals())
	}
	for at := 3 * sec; at <= 8*sec; at += sec {
		r.Rotate(at)
	}
	if n := r.Described(); n != 0 {
		t.Errorf("%d states held after the process exited, want none", n)
	}
	if tl := r.Window(State{At: 7 * sec}, State{At: 8 * sec}); len(tl.Processes) != 0 {
		t.Errorf("processes %+v in a window after the exit", tl.Processes)
	}
}
