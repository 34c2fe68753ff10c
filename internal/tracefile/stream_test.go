package tracefile

import (
	"bytes"
	"compress/gzip"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
)

// streamed records a run of 10 s as a live run does: events as they come,
// a checkpoint every second with the losses so far (k at second k), the
// final state at the end. It returns the trace, the timeline the live run
// ends with, and where the trace ended after each checkpoint's flush.
func streamed(t *testing.T) (trace []byte, live *timeline.Timeline, flushed []int) {
	t.Helper()
	const second = event.Mono(time.Second)
	tl := &timeline.Timeline{Start: 10 * second, Kernel: "6.18.0", Hostname: "lab1", MinLatency: time.Millisecond}
	tl.Holders = []event.Holder{{Upper: "bcache0", Lower: "vdb"}}
	tl.Probes = []event.ProbeStatus{{Name: "uevent", Mechanism: event.MechNetlink, Status: event.StatusOK}, {Name: "submit", Mechanism: event.MechTPBTF, Status: event.StatusOK}}
	var buf bytes.Buffer
	rec := NewRecorder(&buf, info)
	rec.Sync = func() error { flushed = append(flushed, buf.Len()); return nil }
	if err := rec.Begin(tl); err != nil {
		t.Fatal(err)
	}
	if err := rec.Checkpoint(&timeline.Timeline{Probes: tl.Probes}, tl.Start); err != nil {
		t.Fatal(err)
	}
	dev := event.Device{Major: 7, Name: "loop0"}
	for k := 1; k <= 10; k++ {
		at := tl.Start + event.Mono(k)*second
		for i := range 50 {
			// Out of time order within a second, as probes deliver.
			tl.Add(event.SlowSubmit{Start: at - event.Mono(i)*event.Mono(time.Millisecond), Latency: 2 * time.Millisecond, Task: event.Task{Pid: uint32(k), Comm: "fio"}, Dev: dev, Op: "W", End: "getrq"})
		}
		tl.Add(event.Uevent{Time: at - 1, Action: "change", DevPath: "/devices/virtual/block/loop0", Subsystem: "block", DevName: "loop0", Seqnum: uint64(k)})
		view := *tl
		if err := rec.Append(&view); err != nil {
			t.Fatal(err)
		}
		state := &timeline.Timeline{Probes: tl.Probes, Losses: []event.Loss{{Probe: "submit", What: "ring buffer full", Count: uint64(k)}}}
		if err := rec.Checkpoint(state, at); err != nil {
			t.Fatal(err)
		}
	}
	tl.End = tl.Start + 10*second + second/2
	tl.Add(event.Exit{Time: tl.End - 1, Pid: 7})
	tl.Losses = []event.Loss{{Probe: "submit", What: "ring buffer full", Count: 11}}
	tl.Device(dev).Submit.Add(1500)
	if err := rec.Finish(tl); err != nil {
		t.Fatal(err)
	}
	tl.Sort()
	return buf.Bytes(), tl, flushed
}

// A complete streamed trace reads back as the live run's timeline.
func TestStreamedTraceComplete(t *testing.T) {
	trace, live, _ := streamed(t)
	got, in, err := Read(bytes.NewReader(trace))
	if err != nil {
		t.Fatal(err)
	}
	if in.Incomplete || in.Cut != "" {
		t.Errorf("a complete trace reads as incomplete: %q", in.Cut)
	}
	if !reflect.DeepEqual(normalize(got), normalize(live)) {
		t.Errorf("read back differs:\nlive %+v\nread %+v", live, got)
	}
}

// A streamed trace cut anywhere after its first checkpoint (the run was
// killed, the machine lost power) reads up to its last complete record,
// with the state and the end of its last checkpoint, and says so.
func TestStreamedTraceCut(t *testing.T) {
	trace, live, flushed := streamed(t)
	// flushed[0] is the first checkpoint (the start); flushed[k] the k-th
	// second's.
	for k := 0; k < 10; k++ {
		for _, extra := range []int{0, 1, 17, (flushed[k+1] - flushed[k]) / 2, flushed[k+1] - flushed[k] - 1} {
			cases := map[string][]byte{
				"cut": trace[:flushed[k]+extra],
				// What a file system can leave after a power loss.
				"zeros after": append(bytes.Clone(trace[:flushed[k]+extra]), make([]byte, 4096)...),
				"junk after":  append(bytes.Clone(trace[:flushed[k]+extra]), bytes.Repeat([]byte{0xff, 0x13, 0x00, 0x7a}, 64)...),
			}
			for name, b := range cases {
				tl, in, err := Read(bytes.NewReader(b))
				if err != nil {
					t.Errorf("second %d + %d bytes, %s: %v", k, extra, name, err)
					continue
				}
				// Cut in the flush of the next checkpoint, the decompressor
				// may still get that one.
				second := k
				if tl.End == live.Start+event.Mono(k+1)*event.Mono(time.Second) && extra > 0 {
					second = k + 1
				}
				wantEnd := live.Start + event.Mono(second)*event.Mono(time.Second)
				if !in.Incomplete || in.Cut == "" || tl.End != wantEnd {
					t.Errorf("second %d + %d bytes, %s: incomplete %v (%q), end %d, want %d", k, extra, name, in.Incomplete, in.Cut, tl.End, wantEnd)
				}
				if second > 0 && (len(tl.Losses) != 1 || tl.Losses[0].Count != uint64(second)) {
					t.Errorf("second %d + %d bytes, %s: losses %+v, want those of its last checkpoint", k, extra, name, tl.Losses)
				}
				if len(tl.Probes) != 2 || len(tl.Holders) != 1 {
					t.Errorf("second %d + %d bytes, %s: %d probes, %d holders", k, extra, name, len(tl.Probes), len(tl.Holders))
				}
				if n := len(tl.SlowSubmits); n < 50*k || n > 50*(k+1) {
					t.Errorf("second %d + %d bytes, %s: %d slow submissions, want those of %d seconds at least", k, extra, name, n, k)
				}
			}
		}
	}
}

// A damaged record followed by more checkpoints is an error, not a cut:
// only the end of a trace can be torn.
func TestStreamedTraceDamagedInside(t *testing.T) {
	trace, _, _ := streamed(t)
	text := string(ungzip(t, trace))
	bad := strings.Replace(text, `"latency":2000000`, `"latency":"x"`, 1)
	if _, _, err := Read(strings.NewReader(bad)); err == nil || !strings.Contains(err.Error(), "field latency: want an integer") {
		t.Errorf("a damaged record inside: %v", err)
	}
	// Damage after a checkpoint, at the end of a trace torn there: read
	// up to that checkpoint.
	at := 0
	for range 5 {
		at += strings.Index(text[at:], `{"type":"checkpoint"`) + 1
	}
	at += strings.Index(text[at:], "\n") + 1
	last := text[:at] + `{"type":"exit","time":1,"pid":"x"}` + "\n" + `{"typ`
	_, in, err := Read(strings.NewReader(last))
	if err != nil || !in.Incomplete || !strings.Contains(in.Cut, "field pid") {
		t.Errorf("a damaged record at the torn end: %v, %+v", err, in)
	}
}

// A trace written at once (version 1) cut in its events reads up to the
// last event read.
func TestVersion1TraceCut(t *testing.T) {
	text := v1(t)
	cut := text[:strings.Index(text, `{"type":"offcpu"`)+30]
	tl, in, err := Read(strings.NewReader(cut))
	if err != nil {
		t.Fatal(err)
	}
	if !in.Incomplete || !strings.Contains(in.Cut, "line 8: truncated: the file ends inside a record") {
		t.Errorf("incomplete %v, %q", in.Incomplete, in.Cut)
	}
	if tl.End != 6_010_000_000 || len(tl.Uevents) != 1 || len(tl.Execs) != 1 || len(tl.OffCPU) != 0 {
		t.Errorf("end %d, %d uevents, %d execs, %d offcpu", tl.End, len(tl.Uevents), len(tl.Execs), len(tl.OffCPU))
	}
}

// A trace holds at most what a live run would: past the memory bound, events
// are dropped and counted as lost ("timeline full"), per probe.
func TestReadBound(t *testing.T) {
	trace, live, _ := streamed(t)
	// What the live run's events take.
	var b timeline.Bound
	kept := &timeline.Timeline{}
	for _, s := range []event.Event{live.SlowSubmits[0], live.Uevents[0]} {
		b.Admit(kept, s)
	}
	per := timeline.StreamOf(live.SlowSubmits[0]).Bytes(live.SlowSubmits[0])
	max := b.Bytes() + 99*per // the first uevent and 100 slow submissions
	tl, _, err := ReadWith(bytes.NewReader(trace), Options{MaxEventBytes: max})
	if err != nil {
		t.Fatal(err)
	}
	lost := map[string]uint64{}
	for _, l := range tl.Losses {
		if l.What == timeline.FullLoss {
			lost[l.Probe] = l.Count
		}
	}
	total := len(tl.SlowSubmits) + len(tl.Uevents) + len(tl.Exits)
	if len(tl.SlowSubmits) >= len(live.SlowSubmits) || total+int(lost["submit"]+lost["uevent"]+lost["exec"]) != len(live.SlowSubmits)+len(live.Uevents)+len(live.Exits) {
		t.Errorf("kept %d slow submissions, %d uevents, %d exits; lost %v", len(tl.SlowSubmits), len(tl.Uevents), len(tl.Exits), lost)
	}
	// The default bound, a live run's, keeps all of a live run's trace.
	tl, _, err = Read(bytes.NewReader(trace))
	if err != nil || len(tl.SlowSubmits) != len(live.SlowSubmits) || tl.LostEvents() != live.LostEvents() {
		t.Errorf("default bound: %v, %d slow submissions, %d lost", err, len(tl.SlowSubmits), tl.LostEvents())
	}
}

func ungzip(t *testing.T, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sums are the syscall probe's sums (a timeline.Sums stream) at a
// checkpoint: k calls so far.
func sums(at event.Mono, k int) event.SyscallStats {
	s := event.SyscallStats{Time: at, Pid: 900, Comm: "fio", Call: "pwrite64", Dev: event.Device{Major: 7, Name: "loop0"}}
	var h hist.Histogram
	for range k {
		h.Add(40000)
	}
	s.Latency = hist.Compact(&h)
	return s
}

// The sums a probe keeps over the run (timeline.Sums) are state: each
// checkpoint's replace the last ones, a complete trace has the final ones
// only, and a trace cut after a checkpoint has that checkpoint's.
func TestStreamedSums(t *testing.T) {
	const second = event.Mono(time.Second)
	tl := &timeline.Timeline{Start: 10 * second, Kernel: "6.18.0", Hostname: "lab1"}
	tl.Probes = []event.ProbeStatus{{Name: "syscall", Mechanism: event.MechTPBTF, Status: event.StatusOK}}
	var buf bytes.Buffer
	var flushed []int
	rec := NewRecorder(&buf, info)
	rec.Sync = func() error { flushed = append(flushed, buf.Len()); return nil }
	if err := rec.Begin(tl); err != nil {
		t.Fatal(err)
	}
	for k := 1; k <= 3; k++ {
		at := tl.Start + event.Mono(k)*second
		tl.Add(event.Syscall{Start: at - 1, Duration: time.Millisecond, Task: event.Task{Pid: 901, Tgid: 900, Comm: "fio"}, Call: "pwrite64", Dev: event.Device{Major: 7, Name: "loop0"}})
		view := *tl
		if err := rec.Append(&view); err != nil {
			t.Fatal(err)
		}
		if err := rec.Checkpoint(&timeline.Timeline{Probes: tl.Probes, SyscallStats: []event.SyscallStats{sums(at, k)}}, at); err != nil {
			t.Fatal(err)
		}
	}
	tl.End = tl.Start + 4*second
	tl.Add(sums(tl.End, 4))
	if err := rec.Finish(tl); err != nil {
		t.Fatal(err)
	}
	got, in, err := Read(bytes.NewReader(buf.Bytes()))
	if err != nil || in.Incomplete {
		t.Fatalf("complete trace: %v, incomplete %v", err, in.Incomplete)
	}
	if len(got.SyscallStats) != 1 || got.SyscallStats[0].Latency.Count != 4 || len(got.Syscalls) != 3 {
		t.Errorf("complete trace: %d sums (want the final one, of 4 calls: %+v), %d calls", len(got.SyscallStats), got.SyscallStats, len(got.Syscalls))
	}
	for k := 1; k <= 3; k++ {
		got, in, err := Read(bytes.NewReader(buf.Bytes()[:flushed[k-1]]))
		if err != nil || !in.Incomplete {
			t.Fatalf("cut after checkpoint %d: %v, incomplete %v", k, err, in.Incomplete)
		}
		if len(got.SyscallStats) != 1 || got.SyscallStats[0].Latency.Count != uint64(k) {
			t.Errorf("cut after checkpoint %d: sums %+v, want that checkpoint's (%d calls)", k, got.SyscallStats, k)
		}
	}
}
