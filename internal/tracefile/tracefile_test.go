package tracefile

import (
	"bytes"
	"compress/gzip"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"testing/quick"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/internal/trouble"
)

var info = Info{Version: "1.2.3-test", StartedAt: time.Date(2026, 11, 3, 10, 0, 0, 123456789, time.UTC), Duration: 20 * time.Second, Devices: []string{"loop0"}}

// sample is a small timeline with every stream and some host strings that
// JSON alone could not carry (invalid UTF-8, control characters).
func sample() *timeline.Timeline {
	tl := &timeline.Timeline{Start: 1_000_000_000, End: 21_000_000_000, Kernel: "6.18.0", Hostname: "lab1", MinLatency: time.Millisecond}
	tl.Probes = []event.ProbeStatus{
		{Name: "offcpu", Mechanism: event.MechTPBTF, Status: event.StatusOK, Skipped: []event.Skip{{Mechanism: event.MechFentry, Reason: "EPERM"}}},
		{Name: "sysfs", Status: event.StatusUnavailable, Reason: "no tracefs"},
	}
	tl.AddLoss(event.Loss{Probe: "offcpu", What: "ring buffer full", Count: 3})
	tl.Holders = []event.Holder{{Upper: "bcache0", Lower: "vdb"}}
	d := tl.Device(event.Device{Major: 7, Minor: 0, Name: "loop0"})
	d.Submit.Add(1500)
	d.Submit.Add(19_000_000)
	d.Service.Add(600_000)
	dev := event.Device{Major: 7, Minor: 0, Name: "loop0"}
	fio := event.Task{Pid: 200, Tgid: 200, Comm: "fio"}
	tl.Add(event.SlowSubmit{Start: 3_000_000_000, Latency: 19 * time.Millisecond, Task: fio, Dev: dev, Op: "WS", End: "getrq", Sector: 8, Bytes: 4096})
	tl.Add(event.OffCPU{Start: 3_000_000_100, Duration: 18 * time.Millisecond, Task: fio, Waker: event.Task{Pid: 300, Comm: "(udev-worker)"},
		KernelStack: []event.Frame{{Addr: 0xffffffff81000010, Symbol: "__bio_queue_enter", Offset: 0x149, Module: "kernel"}},
		UserStack:   []event.Frame{{Addr: 0x7f0000001000, Symbol: "pwrite", Offset: 0x57, Module: "/usr/lib/libc.so.6"}}})
	tl.Add(event.Exec{Time: 2_000_000_000, Forked: 1_999_000_000, Task: event.Task{Pid: 400, Tgid: 400, Comm: "arc\xffconf"}, PPid: 100, ParentComm: "raidmon",
		Filename: "/tmp/arcconf", Args: []string{"arcconf", "</script><img src=x onerror=alert(1)>", "a\nb", "\x1b[31m", ""}, ArgsTruncated: true})
	tl.Add(event.Exit{Time: 2_100_000_000, Pid: 400, ExitCode: 256})
	tl.Add(event.Uevent{Time: 2_050_000_000, Action: "change", DevPath: "/devices/virtual/block/loop0", Subsystem: "block", DevName: "loop0", DevType: "disk", Seqnum: 42})
	tl.Add(event.SysfsWrite{Time: 2_060_000_000, Task: event.Task{Pid: 300, Comm: "(udev-worker)"}, Path: "/sys/devices/virtual/block/loop0/queue/scheduler", Device: "loop0", Attr: "queue/scheduler"})
	tl.Sort()
	return tl
}

func roundTrip(t *testing.T, tl *timeline.Timeline, in Info) (*timeline.Timeline, Info) {
	t.Helper()
	var b bytes.Buffer
	if err := Write(&b, tl, in); err != nil {
		t.Fatalf("Write: %v", err)
	}
	got, gotInfo, err := Read(&b)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return got, gotInfo
}

func TestRoundTripSample(t *testing.T) {
	tl := sample()
	got, gotInfo := roundTrip(t, tl, info)
	if !reflect.DeepEqual(got, tl) {
		t.Errorf("timeline read back differs:\nwrote %+v\nread  %+v", tl, got)
	}
	if !gotInfo.StartedAt.Equal(info.StartedAt) || gotInfo.Version != info.Version || gotInfo.Duration != info.Duration || !reflect.DeepEqual(gotInfo.Devices, info.Devices) {
		t.Errorf("info read back %+v, want %+v", gotInfo, info)
	}
	if gotInfo.Ignored() != "" {
		t.Errorf("a trace of this version reports ignored data: %s", gotInfo.Ignored())
	}
}

// Every field of the timeline, of every event and of every type they hold
// must survive a round trip: a field someone adds later is recorded without
// a change here, or this test fails.
func TestRoundTripEveryField(t *testing.T) {
	rnd := rand.New(rand.NewSource(1))
	for i := 0; i < 30; i++ {
		v, ok := quick.Value(timelineType, rnd)
		if !ok {
			t.Fatal("quick cannot generate a Timeline")
		}
		tl := v.Addr().Interface().(*timeline.Timeline)
		// Top-level streams with no element come back nil.
		tv := reflect.ValueOf(tl).Elem()
		for _, s := range streams() {
			if f := tv.Field(s.field); f.Len() == 0 {
				f.Set(reflect.Zero(f.Type()))
			}
		}
		possible(tv)
		// The window holds every time possible gives (events outside it
		// are refused).
		tl.Start, tl.End = event.Mono(rnd.Int63n(1<<20)), event.Mono(1<<48+rnd.Int63n(1<<20))
		tl.Sort()
		got, _ := roundTrip(t, tl, info)
		if !reflect.DeepEqual(got, tl) {
			t.Fatalf("random timeline %d read back differs", i)
		}
	}
}

// possible makes the times, durations and histogram maxima of a random
// value ones a run can have (Read refuses the others): not negative,
// durations below MaxWindow, and small enough that no span ends beyond
// the clock's range; times below 2^48 ns, for a window of 2^48 ns.
func possible(v reflect.Value) {
	switch {
	case v.Type() == monoType || v.Type() == durationType:
		v.SetInt(v.Int() & (1<<48 - 1))
		return
	case v.Type() == reflect.TypeFor[hist.Histogram]():
		v.FieldByName("MaxNs").SetUint(v.FieldByName("MaxNs").Uint() & (1<<48 - 1))
	}
	switch v.Kind() {
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				possible(v.Field(i))
			}
		}
	case reflect.Slice, reflect.Array:
		for i := 0; i < v.Len(); i++ {
			possible(v.Index(i))
		}
	}
}

func TestWriteIsDeterministic(t *testing.T) {
	var a, b bytes.Buffer
	if err := Write(&a, sample(), info); err != nil {
		t.Fatal(err)
	}
	if err := Write(&b, sample(), info); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two writes of the same timeline differ")
	}
}

// The hand-written trace in testdata is the documented example of version 1:
// it must keep reading, whatever the code becomes.
func TestReadsVersion1Example(t *testing.T) {
	tl, in, err := ReadFile(filepath.Join("testdata", "v1-example.trace"))
	if err != nil {
		t.Fatal(err)
	}
	if in.Version != "0.1.0" || in.Duration != 20*time.Second || !in.StartedAt.Equal(time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)) {
		t.Errorf("info = %+v", in)
	}
	if tl.Duration() != 20*time.Second || tl.Kernel != "6.18.0" || tl.MinLatency != time.Millisecond {
		t.Errorf("timeline scalars = %v %q %v", tl.Duration(), tl.Kernel, tl.MinLatency)
	}
	if len(tl.Probes) != 1 || len(tl.Devices) != 1 || len(tl.SlowSubmits) != 1 || len(tl.OffCPU) != 1 || len(tl.Execs) != 1 || len(tl.Uevents) != 1 {
		t.Fatalf("streams: %d probes, %d devices, %d submits, %d offcpu, %d execs, %d uevents", len(tl.Probes), len(tl.Devices), len(tl.SlowSubmits), len(tl.OffCPU), len(tl.Execs), len(tl.Uevents))
	}
	h := tl.Devices[0].Submit
	if h.Count != 3 || h.Counts[hist.Slot(1500)] != 2 || h.MaxNs != 19_000_000 {
		t.Errorf("submit histogram = count %d, slot %d = %d, max %d", h.Count, hist.Slot(1500), h.Counts[hist.Slot(1500)], h.MaxNs)
	}
	if got := tl.Execs[0].Task.Comm; got != "arc\xffconf" {
		t.Errorf("comm = %q, want the invalid byte kept", got)
	}
	if got := tl.SlowSubmits[0].Latency; got != 19*time.Millisecond {
		t.Errorf("latency = %v", got)
	}
}

// The example of version 2 (docs/trace-format.md) is the run of the
// version 1 example, streamed: both read as the same timeline.
func TestReadsVersion2Example(t *testing.T) {
	v1, in1, err := ReadFile(filepath.Join("testdata", "v1-example.trace"))
	if err != nil {
		t.Fatal(err)
	}
	v2, in2, err := ReadFile(filepath.Join("testdata", "v2-example.trace"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(v1, v2) || !reflect.DeepEqual(in1, in2) || in2.Incomplete {
		t.Errorf("the version 2 example reads differently:\nv1 %+v\nv2 %+v", v1, v2)
	}
}

func gz(s string) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write([]byte(s))
	zw.Close()
	return b.Bytes()
}

func plain(t *testing.T) string {
	t.Helper()
	var b bytes.Buffer
	if err := Write(&b, sample(), info); err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(&b)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := out.ReadFrom(zr); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

func TestReadErrors(t *testing.T) {
	good := plain(t)
	lines := strings.SplitAfter(good, "\n")
	compressed := gz(good)
	replace := func(old, new string) string {
		if !strings.Contains(good, old) {
			t.Fatalf("sample trace lacks %q", old)
		}
		return strings.Replace(good, old, new, 1)
	}
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "empty file: not a whyslow trace"},
		{"text file", []byte("hello world\n"), "not a whyslow trace"},
		{"png", []byte("\x89PNG\r\n\x1a\n...."), "not a whyslow trace"},
		{"gzip of something else", gz("hello\n"), `not a whyslow trace: line 1 is not a "whyslow.trace" header`},
		{"JSON of something else", []byte(`{"schema":"whyslow.report/v1"}` + "\n"), "not a whyslow trace"},
		{"future version", gz(`{"format":"whyslow.trace","version":3,"writer":"whyslow 9.0"}` + "\n"), "trace format version 3 is newer than this whyslow reads (2): it was written by whyslow 9.0"},
		// A trace written at once has one checkpoint, at its end: cut
		// before, it holds nothing of the run.
		{"cut compressed", compressed[:len(compressed)/2], "truncated"},
		{"corrupt compressed", func() []byte {
			b := bytes.Clone(compressed)
			b[len(b)/2] ^= 0xff
			return b
		}(), "line "},
		{"no checkpoint nor end record", gz(strings.Join(lines[:len(lines)-3], "")), "truncated: the trace ends after line 14 without its end record, before its first checkpoint"},
		{"end without its checkpoint", gz(strings.Join(append(slicesClone(lines[:len(lines)-3]), `{"type":"end","records":13}`+"\n"), "")), "the end record does not follow a checkpoint"},
		{"checkpoint back in time", gz(replace(`"time":21000000000`, `"time":5`)), "line 15: checkpoint record: field time: 5 is before the previous checkpoint or the start (1000000000)"},
		{"cut inside a record", gz(good[:len(good)-40]), "truncated: the file ends inside a record"},
		{"record missing", gz(strings.Join(append(slicesClone(lines[:5]), lines[6:]...), "")), "the end record counts"},
		{"wrong field type", gz(replace(`"latency":19000000`, `"latency":"slow"`)), "slow_submit record: field latency: want an integer, got a string"},
		{"nested field", gz(replace(`"pid":200`, `"pid":-1`)), "field task.pid: want an unsigned integer of 32 bits, got -1"},
		{"slot out of range", gz(replace(`"slots":[[`, `"slots":[[99999,1],[`)), "slot 99999 out of range"},
		{"not JSON", gz(lines[0] + lines[1] + "not json\n"), "line 3: not a JSON object"},
		{"no type", gz(lines[0] + lines[1] + "{}\n"), `line 3: record has no "type"`},
		{"event before run", gz(lines[0] + `{"type":"exec"}` + "\n"), "exec record before the run and timeline records"},
		{"data after end", gz(good + "{}\n"), "data after the end record"},
		{"bad base64", gz(replace(`{"base64":"`, `{"base64":"!!`)), "bad base64"},
		// Values no run can have.
		{"negative latency", gz(replace(`"latency":19000000`, `"latency":-1`)), "line 9: slow_submit record: field latency: a duration cannot be negative, got -1"},
		{"negative time", gz(replace(`"time":2050000000`, `"time":-9223372036854775808`)), "uevent record: field time: a time (nanoseconds of CLOCK_MONOTONIC) cannot be negative"},
		{"negative min latency", gz(replace(`"min_latency":1000000`, `"min_latency":-9223372036854775808`)), "line 3: timeline record: field min_latency: a duration cannot be negative"},
		{"negative requested duration", gz(replace(`"requested_duration":20000000000`, `"requested_duration":-5`)), "line 2: run record: field requested_duration: a duration cannot be negative"},
		{"window ends before it starts", gz(replace(`"end":1000000000`, `"end":5`)), "timeline record: field end: the window ends (5) before it starts (1000000000)"},
		{"span beyond the clock", gz(replace(`"duration":18000000`, `"duration":9223372036854775807`)), "offcpu record: field duration: 9223372036854775807 ns (106751 days) is longer than any run (at most 366 days)"},
		{"histogram max beyond the clock", gz(replace(`"max_ns":19000000`, `"max_ns":18446744073709551615`)), "device record: field submit.max_ns: 18446744073709551615 ns is beyond the clock's range"},
		{"a latency of 2^62 ns", gz(replace(`"latency":19000000`, `"latency":4611686018427387904`)), "line 9: slow_submit record: field latency: 4611686018427387904 ns (53375 days) is longer than any run (at most 366 days)"},
		{"histogram max of 2^62 ns", gz(replace(`"max_ns":19000000`, `"max_ns":4611686018427387904`)), "line 14: device record: field submit.max_ns: 4611686018427387904 ns (53375 days) is longer than any run (at most 366 days)"},
		{"a 292-year window", gz(replace(`"time":21000000000`, `"time":9223372036854775807`)), "line 15: checkpoint record: field time: a window of 106751 days (1000000000 to 9223372036854775807) is longer than any run (at most 366 days)"},
		{"a year-long requested duration", gz(replace(`"requested_duration":20000000000`, `"requested_duration":31708800000000000`)), "line 2: run record: field requested_duration: 31708800000000000 ns (367 days) is longer than any run (at most 366 days)"},
		{"an event long after the window", gz(replace(`"time":2050000000`, `"time":4611686018427387904`)), "line 6: uevent record: field time: 4611686018427387904 is outside the run's window (1000000000 to 21000000000) by more than 1h0m0s"},
		{"a version as a string", gz(replace(`"version":2,`, `"version":"2",`)), "line 1: trace header: field version: want an integer, got string"},
		{"cut compressed, at a line's end", func() []byte {
			// gzip of the whole trace but its checkpoint and end, with no trailer
			b := gz(strings.Join(lines[:len(lines)-3], ""))
			return b[:len(b)-8]
		}(), "after line 14: truncated: the compressed data ends early"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Read(bytes.NewReader(tt.in))
			if err == nil {
				t.Fatalf("Read accepted it")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
		})
	}
}

// A trace whose compressed stream lacks only its trailer has every record,
// its end record included: it reads whole.
func TestReadCutTrailer(t *testing.T) {
	var b bytes.Buffer
	if err := Write(&b, sample(), info); err != nil {
		t.Fatal(err)
	}
	tl, in, err := Read(bytes.NewReader(b.Bytes()[:b.Len()-4]))
	if err != nil || in.Incomplete || !reflect.DeepEqual(tl, sample()) {
		t.Errorf("err %v, incomplete %v", err, in.Incomplete)
	}
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

func TestReadFileNamesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.trace.gz")
	if err := os.WriteFile(path, []byte("GIF89a"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err := ReadFile(path)
	if err == nil || !strings.HasPrefix(err.Error(), path+": not a whyslow trace") {
		t.Errorf("error %v, want it to start with the path", err)
	}
}

// A newer writer's additions are skipped and reported, not fatal.
func TestUnknownRecordsAndFields(t *testing.T) {
	lines := strings.SplitAfter(strings.TrimSuffix(plain(t), "\n"), "\n")
	body := lines[:len(lines)-1] // without the end record
	var b strings.Builder
	for i, l := range body {
		b.WriteString(strings.Replace(l, `"seqnum":42`, `"seqnum":42,"diskseq":7`, 1))
		if i == 2 {
			b.WriteString(`{"type":"gpu_stall","ms":3}` + "\n")
		}
	}
	b.WriteString(`{"type":"end","records":` + strconv.Itoa(len(body)) + "}\n") // header not counted, gpu_stall is
	_, got, err := Read(strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if got.UnknownRecords["gpu_stall"] != 1 || len(got.UnknownFields) != 1 || got.UnknownFields[0] != "uevent.diskseq" {
		t.Errorf("unknown records %v, fields %v", got.UnknownRecords, got.UnknownFields)
	}
	if !strings.Contains(got.Ignored(), `1 "gpu_stall" records`) {
		t.Errorf("Ignored() = %q", got.Ignored())
	}
}

func FuzzRead(f *testing.F) {
	var b bytes.Buffer
	if err := Write(&b, sample(), info); err != nil {
		f.Fatal(err)
	}
	f.Add(b.Bytes())
	var empty bytes.Buffer
	if err := Write(&empty, &timeline.Timeline{}, Info{}); err != nil {
		f.Fatal(err)
	}
	f.Add(empty.Bytes())
	for _, name := range []string{"v1-example.trace", "v2-example.trace"} {
		if ex, err := os.ReadFile(filepath.Join("testdata", name)); err == nil {
			f.Add(ex)
			f.Add(ex[:len(ex)*2/3]) // cut
		}
	}
	f.Add([]byte(`{"format":"whyslow.trace","version":1}` + "\n" + `{"type":"run"}` + "\n" + `{"type":"timeline","start":1,"end":0}` + "\n" + `{"type":"end","records":2}` + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tl, in, err := Read(bytes.NewReader(data))
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("multi-line error %q", err)
			}
			return
		}
		// What was read must write and read back the same.
		var out bytes.Buffer
		if err := Write(&out, tl, in); err != nil {
			t.Fatalf("Write of a read trace: %v", err)
		}
		tl2, _, err := Read(&out)
		if err != nil {
			t.Fatalf("reading back a written trace: %v", err)
		}
		if !reflect.DeepEqual(normalize(tl), normalize(tl2)) {
			t.Fatalf("trace changed on a second round trip")
		}
	})
}

// normalize makes empty top-level streams nil, as Read leaves them.
func normalize(tl *timeline.Timeline) *timeline.Timeline {
	tv := reflect.ValueOf(tl).Elem()
	for _, s := range streams() {
		if f := tv.Field(s.field); f.Len() == 0 {
			f.Set(reflect.Zero(f.Type()))
		}
	}
	return tl
}

// A directory is not an empty file.
func TestReadFileOfADirectory(t *testing.T) {
	dir := t.TempDir()
	_, _, err := ReadFile(dir)
	if err == nil || err.Error() != dir+": a directory, not a trace file" {
		t.Errorf("ReadFile(dir) = %v", err)
	}
}

// v1 is the example trace of format version 1 (written at once, the window
// in the timeline record, the state before the events).
func v1(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "v1-example.trace"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Version 1 traces keep their checks: the window is known from the start.
func TestReadErrorsVersion1(t *testing.T) {
	good := v1(t)
	replace := func(old, new string) string {
		if !strings.Contains(good, old) {
			t.Fatalf("example trace lacks %q", old)
		}
		return strings.Replace(good, old, new, 1)
	}
	for _, tt := range []struct{ name, in, want string }{
		{"an event long after the window", replace(`"time":6010000000`, `"time":4611686018427387904`), "line 7: uevent record: field time: 4611686018427387904 is outside the run's window (5000000000 to 25000000000) by more than 1h0m0s"},
		{"a 292-year window", replace(`"end":25000000000`, `"end":9223372036854775807`), "line 3: timeline record: field end: a window of 106751 days"},
		{"a checkpoint is no version 1 record", replace(`{"type":"end","records":8}`, `{"type":"checkpoint","time":1}`+"\n"+`{"type":"end","records":9}`), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, in, err := Read(strings.NewReader(tt.in))
			switch {
			case tt.want == "" && (err != nil || in.UnknownRecords["checkpoint"] != 1):
				t.Errorf("err %v, unknown records %v: want the checkpoint skipped as unknown", err, in.UnknownRecords)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// What the trouble watcher saw is known only when the run ends, after the
// timeline record: the trace keeps it in a trouble record written at the
// end, so that analyze gives the live report's trouble section.
func TestTroubleKnownAtTheEnd(t *testing.T) {
	tl := sample()
	var b bytes.Buffer
	rec := NewRecorder(&b, info)
	if err := rec.Begin(tl); err != nil {
		t.Fatal(err)
	}
	tl.Trouble = &trouble.Summary{
		Start: tl.Start, End: tl.End, Hold: 5 * time.Second, Stall: 5 * time.Millisecond, Window: time.Second, Busy: 0.9,
		Sources:   []trouble.SourceStatus{{Source: trouble.PSIIO, On: true, Reason: "unprivileged: 10ms in 2s"}, {Source: trouble.DiskBusy}},
		Signals:   []trouble.Signal{{Source: trouble.SlowSubmit, At: tl.Start + 1000, Detail: "loop0 submission (Q2G) 3ms, fio"}},
		Counts:    map[trouble.Source]uint64{trouble.SlowSubmit: 3, trouble.PSIIO: 1},
		First:     map[trouble.Source]event.Mono{trouble.SlowSubmit: tl.Start + 1000},
		Intervals: []trouble.Interval{{From: tl.Start + 1000, To: tl.End, By: trouble.SlowSubmit, Signals: 4}},
		PSI:       trouble.PSITotals{Known: true, IOSome: 12 * time.Millisecond, IOFull: time.Millisecond},
	}
	if err := rec.Finish(tl); err != nil {
		t.Fatal(err)
	}
	got, gotInfo, err := Read(&b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Trouble, tl.Trouble) {
		t.Errorf("trouble read back %+v, want %+v", got.Trouble, tl.Trouble)
	}
	if gotInfo.Ignored() != "" {
		t.Errorf("the trouble record is reported ignored: %s", gotInfo.Ignored())
	}
}

// An armed mode's coverage, known at Begin (serve's /trace dump of a
// stretch) or at the end (a diagnosis), is a record of its own at the
// end, read back as it was, with the trouble summary's scope.
func TestCoverageRecorded(t *testing.T) {
	for _, atBegin := range []bool{true, false} {
		tl := sample()
		cov := &trouble.Coverage{Mode: trouble.ModeAuto, Start: tl.Start, End: tl.End,
			Armed:  []trouble.Span{{From: tl.Start + 1000, To: tl.End, By: trouble.ThrottleWait}},
			Gated:  []string{"offcpu", "syscall"},
			Probes: []string{"offcpu", "submit", "syscall"}}
		if atBegin {
			tl.Coverage = cov
		}
		var b bytes.Buffer
		rec := NewRecorder(&b, info)
		if err := rec.Begin(tl); err != nil {
			t.Fatalf("at begin %v: %v", atBegin, err)
		}
		tl.Coverage = cov
		tl.Trouble = &trouble.Summary{Start: tl.Start, End: tl.End, Hold: 5 * time.Second, Devices: []string{"loop0"},
			OutOfScope: map[trouble.Source]uint64{trouble.DiskBusy: 2}, OutOfScopeDisks: []string{"vda"}}
		if err := rec.Finish(tl); err != nil {
			t.Fatal(err)
		}
		got, gotInfo, err := Read(&b)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.Coverage, cov) {
			t.Errorf("at begin %v: coverage read back %+v, want %+v", atBegin, got.Coverage, cov)
		}
		if !reflect.DeepEqual(got.Trouble, tl.Trouble) {
			t.Errorf("trouble read back %+v, want %+v", got.Trouble, tl.Trouble)
		}
		if gotInfo.Ignored() != "" {
			t.Errorf("the coverage record is reported ignored: %s", gotInfo.Ignored())
		}
	}
}
