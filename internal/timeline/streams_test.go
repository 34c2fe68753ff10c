package timeline

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
)

var eventType = reflect.TypeFor[event.Event]()

// Every slice of events in Timeline is a stream of Sources, and every
// stream is one of them: a field without its line in Sources would be
// neither recorded, sized nor sorted.
func TestEveryEventSliceIsAStream(t *testing.T) {
	tt := reflect.TypeFor[Timeline]()
	byField := map[int]Stream{}
	for _, s := range Streams() {
		if prev, dup := byField[s.Field()]; dup {
			t.Errorf("streams %s and %s share field %s", prev.Record(), s.Record(), tt.Field(s.Field()).Name)
		}
		byField[s.Field()] = s
		if f := tt.Field(s.Field()); f.Type.Elem() != s.Type() {
			t.Errorf("stream %s: field %s holds %s, not %s", s.Record(), f.Name, f.Type.Elem(), s.Type())
		}
	}
	for i := range tt.NumField() {
		f := tt.Field(i)
		if f.Type.Kind() == reflect.Slice && f.Type.Elem().Implements(eventType) && byField[i] == nil {
			t.Errorf("Timeline.%s holds events but no entry of Sources declares it", f.Name)
		}
	}
	for _, s := range Streams() {
		if StreamOf(reflect.Zero(s.Type()).Interface().(event.Event)) != s {
			t.Errorf("StreamOf(%s) is not its stream", s.Type())
		}
		if s.Probe() == "" || s.Doc() == "" || s.Record() == "" {
			t.Errorf("stream %+v lacks its probe, record type or doc", s)
		}
	}
}

// Every histogram of DeviceHistograms is declared by one source.
func TestEveryHistogramIsDeclared(t *testing.T) {
	var d DeviceHistograms
	seen := map[*hist.Histogram]HistKind{}
	for _, src := range Sources {
		for _, h := range src.Hists {
			seen[h.Of(&d)] = h.Kind
		}
	}
	dv := reflect.ValueOf(&d).Elem()
	for i := range dv.NumField() {
		if f := dv.Field(i); f.Type() == reflect.TypeFor[hist.Histogram]() {
			if _, ok := seen[f.Addr().Interface().(*hist.Histogram)]; !ok {
				t.Errorf("DeviceHistograms.%s: no source declares it", dv.Type().Field(i).Name)
			}
		}
	}
}

func TestMergeHistogram(t *testing.T) {
	var tl Timeline
	var h hist.Histogram
	h.Add(1000)
	dev := event.Device{Major: 7, Minor: 1, Name: "loop1"}
	tl.MergeHistogram(HistSubmitCall, dev, &h)
	tl.MergeHistogram(HistSubmitCall, dev, &h)
	tl.MergeHistogram(HistService, dev, &h)
	tl.MergeHistogram("bogus", dev, &h)
	d := tl.Device(dev)
	if d.SubmitCall.Count != 2 || d.Service.Count != 1 || d.Submit.Count != 0 {
		t.Errorf("histograms %+v", d)
	}
}

// The estimate counts the struct with a growing slice's slack, and what it
// owns: strings, arguments, frames; not what is shared between events.
func TestStreamBytes(t *testing.T) {
	const frame = int64(unsafe.Sizeof(event.Frame{}))
	slack := func(n int64) int64 { return int64(float64(n) * 5 / 4) }
	frames := []event.Frame{{Symbol: "schedule", Module: "kernel"}, {Symbol: "io"}} // 14 + 2 bytes of text
	tests := []struct {
		name string
		e    event.Event
		want int64
	}{
		{"exit", event.Exit{Pid: 1}, slack(int64(unsafe.Sizeof(event.Exit{})))},
		{"exec: comms, file and arguments", event.Exec{Task: event.Task{Comm: "fio"}, ParentComm: "sh", Filename: "/bin/x", Args: []string{"a", "bc"}},
			slack(int64(unsafe.Sizeof(event.Exec{})) + 3 + 2 + 6 + (16 + 1) + (16 + 2))},
		{"off-CPU: user frames count, the cached kernel stack does not", event.OffCPU{Task: event.Task{Comm: "dd"}, KernelStack: frames, UserStack: frames},
			slack(int64(unsafe.Sizeof(event.OffCPU{})) + 2 + 2*frame + 16)},
		{"freeze: both stacks", event.Freeze{Task: event.Task{Comm: "dd"}, Func: "blk_freeze_queue_start", KernelStack: frames, UserStack: frames[:1]},
			slack(int64(unsafe.Sizeof(event.Freeze{})) + 2 + 2*frame + 16 + frame + 14)},
		{"uevent: interned strings", event.Uevent{Action: "change", DevPath: "/devices/virtual/block/loop0"},
			slack(int64(unsafe.Sizeof(event.Uevent{})))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := StreamOf(tt.e).Bytes(tt.e); got != tt.want {
				t.Errorf("%d bytes, want %d", got, tt.want)
			}
		})
	}
}

// Sources names each probe once, with an event.Probe* name.
func TestProbeNames(t *testing.T) {
	names := ProbeNames()
	if len(names) != len(Sources) {
		t.Fatalf("names %v", names)
	}
	for _, n := range names {
		if _, ok := SourceOf(n); !ok || n == "" {
			t.Errorf("probe %q", n)
		}
	}
}

// Admit keeps one copy of each shared string and counts it once: uevents
// that repeat their device cost their struct, each new string its bytes,
// so that a storm of distinct uevents is bounded like any other.
func TestAdmitCountsSharedStringsOnce(t *testing.T) {
	u := func(path string) event.Uevent {
		return event.Uevent{Action: "change", DevPath: strings.Clone(path), Subsystem: "block", DevName: "loop0"}
	}
	per := StreamOf(u("x")).Bytes(u("x"))
	var tl Timeline
	var b Bound
	b.Admit(&tl, u("/devices/virtual/block/loop0"))
	first := b.Bytes()
	strs := int64(len("change")+len("/devices/virtual/block/loop0")+len("block")+len("loop0")) + 4*internOverhead
	if first != per+strs {
		t.Errorf("first uevent: %d bytes, want %d (struct) + %d (its strings)", first, per, strs)
	}
	b.Admit(&tl, u("/devices/virtual/block/loop0"))
	if got := b.Bytes() - first; got != per {
		t.Errorf("a repeated uevent: %d bytes, want %d", got, per)
	}
	if unsafe.StringData(tl.Uevents[0].DevPath) != unsafe.StringData(tl.Uevents[1].DevPath) {
		t.Errorf("the two uevents hold two copies of their path")
	}
	before := b.Bytes()
	for i := range 100 {
		b.Admit(&tl, u(fmt.Sprintf("/devices/virtual/block/loop%d", 1000+i)))
	}
	if got, want := b.Bytes()-before, 100*(per+int64(len("/devices/virtual/block/loop1000"))+internOverhead); got != want {
		t.Errorf("100 uevents of new devices: %d bytes, want %d", got, want)
	}

	// Past the bound: dropped, counted, and their strings not kept.
	held := b.Bytes()
	b.Max = held + per
	if b.Admit(&tl, u("/devices/new")) {
		t.Errorf("admitted past the bound")
	}
	if n, d := len(tl.Uevents), b.Dropped(); n != 102 || b.Bytes() != held || len(d) != 1 || d[0] != (event.Loss{Probe: "uevent", What: FullLoss, Count: 1}) {
		t.Errorf("after a drop: %d uevents, %d bytes (was %d), dropped %+v", n, b.Bytes(), held, d)
	}
	if !b.Admit(&tl, u("/devices/virtual/block/loop0")) {
		t.Errorf("a uevent whose strings are kept did not fit in its struct's size")
	}
}
