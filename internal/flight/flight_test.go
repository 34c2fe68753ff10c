package flight

import (
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
)

const sec = event.Mono(time.Second)

var loop0 = event.Device{Major: 7, Minor: 0, Name: "loop0"}

func submit(at event.Mono, lat time.Duration) event.SlowSubmit {
	return event.SlowSubmit{Start: at, Latency: lat, Dev: loop0, Task: event.Task{Pid: 1, Tgid: 1, Comm: "fio"}}
}

func uevent(at event.Mono) event.Uevent {
	return event.Uevent{Time: at, Action: "change", DevPath: "/devices/virtual/block/loop0", Subsystem: "block", DevName: "loop0"}
}

// state builds a cumulative state with a submit histogram of the values.
func state(at event.Mono, losses uint64, values ...uint64) State {
	d := timeline.DeviceHistograms{Dev: loop0}
	for _, v := range values {
		d.Submit.Add(v)
	}
	st := State{At: at, Devices: []timeline.DeviceHistograms{d}}
	if losses > 0 {
		st.Losses = []event.Loss{{Probe: event.ProbeSubmit, What: "ring buffer full", Count: losses}}
	}
	return st
}

// A window is the segments between its two states: the events that
// arrived in them, the losses delivered meanwhile, and the histograms and
// counted losses by difference.
func TestWindow(t *testing.T) {
	r := New(Options{}, 10*sec)
	s0 := state(10*sec, 2, 1000, 2000)
	r.AddState(s0)
	r.Event(submit(10*sec+1, 5*time.Millisecond)) // before the window
	r.Rotate(11 * sec)
	s1 := state(11*sec, 2, 1000, 2000)
	r.AddState(s1)
	r.Event(submit(11*sec+1, 7*time.Millisecond))
	r.Event(uevent(11*sec + 2))
	r.Loss(event.Loss{Probe: event.ProbeUevent, What: "netlink overrun", Count: 3})
	r.Rotate(12 * sec)
	r.Event(submit(12*sec+1, 9*time.Millisecond))
	r.Rotate(13 * sec)
	s3 := state(13*sec, 5, 1000, 2000, 3_000_000, 9_000_000)
	r.AddState(s3)
	r.Event(submit(13*sec+1, 11*time.Millisecond)) // after the window

	tl := r.Window(s1, s3)
	if tl.Start != 11*sec || tl.End != 13*sec {
		t.Errorf("window %d..%d, want 11s..13s", tl.Start, tl.End)
	}
	if len(tl.SlowSubmits) != 2 || tl.SlowSubmits[0].Latency != 7*time.Millisecond || tl.SlowSubmits[1].Latency != 9*time.Millisecond {
		t.Errorf("slow submits %+v, want those of 7 and 9 ms", tl.SlowSubmits)
	}
	if len(tl.Uevents) != 1 {
		t.Errorf("uevents %d, want 1", len(tl.Uevents))
	}
	want := map[string]uint64{"uevent/netlink overrun": 3, "submit/ring buffer full": 3}
	got := map[string]uint64{}
	for _, l := range tl.Losses {
		got[l.Probe+"/"+l.What] += l.Count
	}
	if len(got) != len(want) || got["uevent/netlink overrun"] != 3 || got["submit/ring buffer full"] != 3 {
		t.Errorf("losses %v, want %v", got, want)
	}
	if len(tl.Devices) != 1 {
		t.Fatalf("devices %+v, want loop0's", tl.Devices)
	}
	h := tl.Devices[0].Submit
	if h.Count != 2 || h.SumNs != 12_000_000 || h.MaxNs != 9_000_000 {
		t.Errorf("submit histogram count %d sum %d max %d, want 2, 12ms, 9ms", h.Count, h.SumNs, h.MaxNs)
	}
}

func TestDelta(t *testing.T) {
	for _, tc := range []struct {
		name          string
		before, now   []uint64
		count, maxNs  uint64
		sumNs         uint64
		wantDeviceOut bool
	}{
		{name: "nothing new", before: []uint64{1000}, now: []uint64{1000}, wantDeviceOut: true},
		{name: "a new maximum is exact", before: []uint64{1000}, now: []uint64{1000, 5000}, count: 1, sumNs: 5000, maxNs: 5000},
		{name: "below the old maximum: the top of its slot", before: []uint64{9000}, now: []uint64{9000, 1000}, count: 1, sumNs: 1000, maxNs: 1023},
		{name: "from nothing", now: []uint64{300, 400}, count: 2, sumNs: 700, maxNs: 400},
		{name: "a counter that restarted counts anew", before: []uint64{1000, 2000, 3000}, now: []uint64{5000}, count: 1, sumNs: 5000, maxNs: 5000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			devs, _ := Delta(state(2*sec, 0, tc.now...), state(sec, 0, tc.before...))
			if tc.wantDeviceOut {
				if len(devs) != 0 {
					t.Fatalf("devices %+v, want none", devs)
				}
				return
			}
			if len(devs) != 1 {
				t.Fatalf("devices %+v, want one", devs)
			}
			h := devs[0].Submit
			if h.Count != tc.count || h.SumNs != tc.sumNs || h.MaxNs != tc.maxNs {
				t.Errorf("count %d sum %d max %d, want %d %d %d", h.Count, h.SumNs, h.MaxNs, tc.count, tc.sumNs, tc.maxNs)
			}
			var n uint64
			for _, c := range h.Counts {
				n += c
			}
			if n != h.Count {
				t.Errorf("slots sum to %d, count %d", n, h.Count)
			}
		})
	}
	_, losses := Delta(state(2*sec, 7), state(sec, 3))
	if len(losses) != 1 || losses[0].Count != 4 {
		t.Errorf("losses %+v, want 4", losses)
	}
	_, losses = Delta(state(2*sec, 2), state(sec, 3))
	if len(losses) != 1 || losses[0].Count != 2 {
		t.Errorf("a loss counter that went down: %+v, want its value, 2", losses)
	}
}

// The bound holds: a storm evicts the oldest segments (counted in what
// covers them), then drops what cannot fit; what is held never passes the
// bound.
func TestBound(t *testing.T) {
	one := timeline.StreamOf(submit(0, 0)).Bytes(submit(0, time.Millisecond))
	max := 100 * one
	r := New(Options{MaxBytes: max}, 0)
	r.AddState(state(0, 0))
	at := event.Mono(0)
	var sent uint64
	for s := range 5 {
		for range 60 {
			at++
			r.Event(submit(at, time.Millisecond))
			sent++
			if st := r.Stats(); st.Bytes > max {
				t.Fatalf("second %d: %d bytes held, bound %d", s, st.Bytes, max)
			}
		}
		r.Rotate(event.Mono(s+1) * sec)
		r.AddState(state(event.Mono(s+1)*sec, 0))
	}
	st := r.Stats()
	var lost uint64
	byWhat := map[string]uint64{}
	for _, l := range r.Totals() {
		lost += l.Count
		byWhat[l.What] += l.Count
	}
	if st.Events+lost != sent {
		t.Errorf("held %d + lost %d != sent %d", st.Events, lost, sent)
	}
	if byWhat[EvictedLoss] == 0 {
		t.Errorf("losses %v: want evictions", byWhat)
	}
	// A dump from the oldest state held says what was evicted since.
	from, parts, losses, ok := r.Since(0)
	if !ok {
		t.Fatal("no state")
	}
	var held, dumpLost uint64
	for _, p := range parts {
		held += uint64(len(p.SlowSubmits))
	}
	for _, l := range losses {
		dumpLost += l.Count
	}
	if want := 60 * uint64(5-from.At/sec); held+dumpLost != want || dumpLost == 0 {
		t.Errorf("dump from %v: %d events + %d lost, want %d in all, some lost", from.At, held, dumpLost, want)
	}

	// One segment's storm with nothing older to evict: dropped and counted.
	r = New(Options{MaxBytes: 10 * one}, 0)
	for i := range 30 {
		r.Event(submit(event.Mono(i), time.Millisecond))
	}
	byWhat = map[string]uint64{}
	for _, l := range r.Totals() {
		byWhat[l.What] += l.Count
	}
	if st := r.Stats(); st.Events+byWhat[FullLoss] != 30 || st.Bytes > 10*one {
		t.Errorf("held %d (%d bytes), dropped %d: want 30 in all within %d bytes", st.Events, st.Bytes, byWhat[FullLoss], 10*one)
	}
}

// Segments and states older than Keep go; the memory they held is given
// back.
func TestKeep(t *testing.T) {
	r := New(Options{Keep: 3 * time.Second}, 0)
	for s := range 10 {
		at := event.Mono(s) * sec
		r.AddState(state(at, 0, 1000))
		r.Event(submit(at+1, time.Millisecond))
		r.Rotate(at + sec)
	}
	st := r.Stats()
	if st.Held > 3*time.Second || st.Events > 3 {
		t.Errorf("held %v, %d events, want at most 3s and 3", st.Held, st.Events)
	}
	from, parts, _, ok := r.Since(0)
	if !ok || from.At < 7*sec {
		t.Errorf("oldest state at %v (ok %v), want 7s or later", from.At, ok)
	}
	if len(parts) > 4 {
		t.Errorf("%d parts, want at most 4", len(parts))
	}
	// Since picks the newest state at or before the time asked.
	from, _, _, _ = r.Since(8*sec + 500)
	if from.At != 8*sec {
		t.Errorf("since 8.0000005s: from %v, want 8s", from.At)
	}
}

// A packed state unpacks to the same histograms.
func TestPack(t *testing.T) {
	st := state(sec, 4, 1, 1000, 1000, 5_000_000, 1<<39)
	st.Devices[0].Service.Add(777)
	got := pack(st).unpack()
	if got.At != st.At || len(got.Devices) != 1 || got.Devices[0].Submit != st.Devices[0].Submit ||
		got.Devices[0].Service != st.Devices[0].Service || got.Devices[0].SubmitCall != (hist.Histogram{}) ||
		len(got.Losses) != 1 || got.Losses[0] != st.Losses[0] {
		t.Errorf("unpacked %+v, want %+v", got, st)
	}
}

// States as big as the syscall probe's sums make them when its maps are
// full (thousands of processes' histograms, whole in every checkpoint)
// take at most half of a full recorder: the oldest go first, and the
// events of the last window are all held.
func TestBigStates(t *testing.T) {
	big := func(at event.Mono) State {
		st := state(at, 0, 1000)
		for pid := range uint32(2048) {
			s := event.SyscallStats{Time: at, Pid: pid, Comm: "worker", Call: "pwrite64", Dev: loop0, Sleep: time.Duration(at)}
			var h hist.Histogram
			h.Add(uint64(pid) + 1000)
			s.Latency = hist.Compact(&h)
			st.Stats = append(st.Stats, s)
		}
		return st
	}
	one := pack(big(0)).bytes
	max := 8 * one // room for 8 states, or half as many and the events
	r := New(Options{MaxBytes: max}, 0)
	r.AddState(big(0))
	perSecond := int(one / timeline.StreamOf(submit(0, 0)).Bytes(submit(0, time.Millisecond)) / 4)
	var states []State
	for s := 1; s <= 120; s++ {
		for i := range perSecond {
			r.Event(submit(event.Mono(s-1)*sec+event.Mono(i), time.Millisecond))
		}
		at := event.Mono(s) * sec
		r.Rotate(at)
		if s%2 == 0 { // a checkpoint every 2 s
			st := big(at)
			r.AddState(st)
			states = append(states, st)
		}
		if b := r.Stats().Bytes; b > max {
			t.Fatalf("second %d: %d bytes held, bound %d", s, b, max)
		}
	}
	if r.stateBytes > max/2+one {
		t.Errorf("states take %d bytes of %d: want at most half (and one)", r.stateBytes, max)
	}
	// The last window (6 s) is whole.
	tl := r.Window(states[len(states)-4], states[len(states)-1])
	if got, want := len(tl.SlowSubmits), 6*perSecond; got != want {
		t.Errorf("the last window holds %d events, want all %d", got, want)
	}
	for _, l := range tl.Losses {
		if l.What == EvictedLoss || l.What == FullLoss {
			t.Errorf("the last window lost %d events: %s", l.Count, l.What)
		}
	}
	if _, _, _, ok := r.Since(0); !ok {
		t.Error("no state left for a dump")
	}
}
