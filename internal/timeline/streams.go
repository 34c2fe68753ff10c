package timeline

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"sort"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
)

// Source is one probe and what it puts on the timeline.
type Source struct {
	Probe   string   // an event.Probe* name
	Streams []Stream // the event kinds it emits
	Hists   []Hist   // the per-device histograms it delivers
}

// HistKind names a per-device latency histogram.
type HistKind string

// Hist is a histogram kind and the field of DeviceHistograms that holds it.
type Hist struct {
	Kind HistKind
	Of   func(*DeviceHistograms) *hist.Histogram
}

// Stream is one event kind's place on the timeline: the typed slice of
// Timeline that holds its events (so that facts read them directly, with
// no boxing), its record type in trace files, the probe that emits it and
// its documentation. Make one with Events, in Sources.
type Stream interface {
	// Record is the kind's record type in trace files, e.g. "slow_submit".
	Record() string
	// Probe is the name of the probe that emits it.
	Probe() string
	// Doc is the kind's row in the trace format's record table: its fields.
	Doc() string
	// Type is the event's Go type.
	Type() reflect.Type
	// Field is the index of the stream's slice in Timeline.
	Field() int
	// State says the stream holds sums a probe keeps over the run (made
	// with Sums), not events as they happen: each delivery of them is the
	// whole of them so far, and replaces the previous one (a trace's
	// checkpoints hold them as they were then).
	State() bool
	// Describes says the stream's events describe a state of the system
	// (a limit, a mount, a sysctl, a process's names) rather than
	// something that happened: a probe delivers one when it reads the
	// state or sees it change, often only at its start, and the latest of
	// each Key holds until the next. A stretch of a long run needs those
	// delivered before it: the flight recorder keeps them (made with
	// Describing).
	Describes() bool
	// Key identifies what a describing event describes (a later event of
	// the same key replaces it), and the process it belongs to (0: none),
	// whose events are forgotten when it exits. "" for other streams.
	Key(e event.Event) (key string, pid uint32)
	// At returns a describing event as of a later time: e with its time
	// set to at (the state it describes still held then).
	At(e event.Event, at event.Mono) event.Event
	// Each calls f with each of the stream's events in t, in order.
	Each(t *Timeline, f func(event.Event))
	// Len is the number of events the stream holds in t.
	Len(t *Timeline) int
	// Bytes estimates the memory an event of this kind takes on the
	// timeline: its struct, with the slack of a growing slice, and the
	// strings and slices it owns. Fields tagged `mem:"shared"` share their
	// contents with other events (strings the timeline keeps once, kernel
	// stacks a probe caches) and count as their header only; Admit counts
	// each shared string once.
	Bytes(e event.Event) int64

	add(t *Timeline, e event.Event)
	// concat appends the stream's events of o to t's.
	concat(t, o *Timeline)
	// dropBefore removes the stream's events of t that began before at,
	// into a new slice (t's is shared), and says how many.
	dropBefore(t *Timeline, at event.Mono) int
	// admitLast bounds the last event of the stream (see Bound.Admit).
	admitLast(t *Timeline, b *Bound) bool
	sort(t *Timeline)
	setup(probe string)
}

// Events declares the stream of event type E: record is its trace record
// type, of returns the Timeline field that holds it and doc its fields.
func Events[E event.Event](record string, of func(*Timeline) *[]E, doc string) Stream {
	return &stream[E]{record: record, of: of, doc: doc}
}

// Sums declares a stream of sums a probe keeps in the kernel over the run
// and delivers whole, at its checkpoints and when it stops (a State
// stream); otherwise as Events.
func Sums[E event.Event](record string, of func(*Timeline) *[]E, doc string) Stream {
	return &stream[E]{record: record, of: of, doc: doc, state: true}
}

// Describing declares a stream of events that describe a state of the
// system (Stream.Describes): key says what each describes, and the process
// it belongs to (0: none). E must have a Time field, its time.
func Describing[E event.Event](record string, of func(*Timeline) *[]E, key func(E) (string, uint32), doc string) Stream {
	return &stream[E]{record: record, of: of, doc: doc, key: key}
}

type stream[E event.Event] struct {
	state              bool
	key                func(E) (string, uint32)
	timeField          int // Describing: the index of E's Time field
	record, probe, doc string
	of                 func(*Timeline) *[]E
	field              int
	mem                *memPlan
}

func (s *stream[E]) Record() string     { return s.record }
func (s *stream[E]) Probe() string      { return s.probe }
func (s *stream[E]) Doc() string        { return s.doc }
func (s *stream[E]) Type() reflect.Type { return reflect.TypeFor[E]() }
func (s *stream[E]) Field() int         { return s.field }
func (s *stream[E]) State() bool        { return s.state }
func (s *stream[E]) Describes() bool    { return s.key != nil }
func (s *stream[E]) Key(e event.Event) (string, uint32) {
	v, ok := e.(E)
	if !ok || s.key == nil {
		return "", 0
	}
	return s.key(v)
}
func (s *stream[E]) At(e event.Event, at event.Mono) event.Event {
	v, ok := e.(E)
	if !ok || s.key == nil {
		return e
	}
	reflect.ValueOf(&v).Elem().Field(s.timeField).Set(reflect.ValueOf(at))
	return v
}
func (s *stream[E]) Len(t *Timeline) int { return len(*s.of(t)) }
func (s *stream[E]) Each(t *Timeline, f func(event.Event)) {
	for _, e := range *s.of(t) {
		f(e)
	}
}
func (s *stream[E]) add(t *Timeline, e event.Event) {
	p := s.of(t)
	*p = append(*p, e.(E))
}
func (s *stream[E]) sort(t *Timeline) { sortBy(*s.of(t)) }
func (s *stream[E]) dropBefore(t *Timeline, at event.Mono) int {
	p := s.of(t)
	n := 0
	for _, e := range *p {
		if e.When() < at {
			n++
		}
	}
	if n == 0 {
		return 0
	}
	kept := make([]E, 0, len(*p)-n)
	for _, e := range *p {
		if e.When() >= at {
			kept = append(kept, e)
		}
	}
	*p = kept
	return n
}

func (s *stream[E]) concat(t, o *Timeline) {
	if src := *s.of(o); len(src) > 0 {
		p := s.of(t)
		*p = append(*p, src...)
	}
}

func (s *stream[E]) admitLast(t *Timeline, b *Bound) bool {
	p := s.of(t)
	last := len(*p) - 1
	v := reflect.ValueOf(&(*p)[last]).Elem()
	n := s.size(v)
	shared, fresh := s.mem.intern(v, b.strs)
	if b.bytes+n+shared > b.max() {
		var zero E
		(*p)[last] = zero
		*p = (*p)[:last]
		b.drop(s.probe)
		return false
	}
	b.bytes += n + shared
	if len(fresh) > 0 {
		if b.strs == nil {
			b.strs = map[string]string{}
		}
		for _, f := range fresh {
			b.strs[f] = f
		}
	}
	return true
}

func (s *stream[E]) Bytes(e event.Event) int64 {
	v, ok := e.(E)
	if !ok {
		return 0
	}
	return s.size(reflect.ValueOf(&v).Elem())
}

// size is Bytes of the event v holds.
func (s *stream[E]) size(v reflect.Value) int64 {
	const slack = 5 / 4.0
	n := int64(s.mem.size) + s.mem.content(v)
	return int64(float64(n) * slack)
}

// setup finds the stream's field in Timeline and plans its size estimate.
func (s *stream[E]) setup(probe string) {
	s.probe = probe
	s.mem = planMem(reflect.TypeFor[E]())
	var zero Timeline
	tv := reflect.ValueOf(&zero).Elem()
	p := reflect.ValueOf(s.of(&zero))
	s.field = -1
	for i := range tv.NumField() {
		if f := tv.Field(i); f.Type() == p.Elem().Type() && f.Addr().Pointer() == p.Pointer() {
			s.field = i
		}
	}
	if s.field < 0 {
		panic(fmt.Sprintf("timeline: stream %q does not return a field of Timeline", s.record))
	}
	if s.key != nil {
		f, ok := reflect.TypeFor[E]().FieldByName("Time")
		if !ok || f.Type != reflect.TypeFor[event.Mono]() || len(f.Index) != 1 {
			panic(fmt.Sprintf("timeline: describing stream %q: its events have no Time field", s.record))
		}
		s.timeField = f.Index[0]
	}
}

// The registry's indexes, built once from Sources.
var (
	streams      []Stream // in Timeline field order
	streamByType = map[reflect.Type]Stream{}
	histOf       = map[HistKind]Hist{}
	probeNames   []string
)

func init() {
	records := map[string]bool{}
	for _, src := range Sources {
		if slices.Contains(probeNames, src.Probe) {
			panic("timeline: probe " + src.Probe + " listed twice in Sources")
		}
		probeNames = append(probeNames, src.Probe)
		for _, s := range src.Streams {
			s.setup(src.Probe)
			if records[s.Record()] || streamByType[s.Type()] != nil {
				panic("timeline: stream " + s.Record() + " declared twice")
			}
			records[s.Record()] = true
			streamByType[s.Type()] = s
			streams = append(streams, s)
		}
		for _, h := range src.Hists {
			if _, dup := histOf[h.Kind]; dup {
				panic("timeline: histogram " + string(h.Kind) + " declared twice")
			}
			histOf[h.Kind] = h
		}
	}
	slices.SortFunc(streams, func(a, b Stream) int { return a.Field() - b.Field() })
}

// Streams returns every event stream, in the order of Timeline's fields.
func Streams() []Stream { return slices.Clone(streams) }

// StreamOf returns the stream of an event's kind, or nil for a type no
// source declares.
func StreamOf(e event.Event) Stream { return streamByType[reflect.TypeOf(e)] }

// ProbeNames returns the name of every probe of Sources, in order.
func ProbeNames() []string { return slices.Clone(probeNames) }

// SourceOf returns the entry of Sources of a probe; ok is false for a name
// no source has.
func SourceOf(probe string) (Source, bool) {
	for _, s := range Sources {
		if s.Probe == probe {
			return s, true
		}
	}
	return Source{}, false
}

// Add appends one event to its stream. Events of a type no source
// declares are ignored.
func (t *Timeline) Add(e event.Event) {
	if s := StreamOf(e); s != nil {
		s.add(t, e)
	}
}

// AppendEvents appends every event of o to t's streams, each after t's
// own (the events are copied; what they share, strings and stacks, stays
// shared).
func (t *Timeline) AppendEvents(o *Timeline) {
	for _, s := range streams {
		s.concat(t, o)
	}
}

// AppendDescribing appends the events of o's describing streams
// (Stream.Describes) to t's, as AppendEvents.
func (t *Timeline) AppendDescribing(o *Timeline) {
	for _, s := range streams {
		if s.Describes() {
			s.concat(t, o)
		}
	}
}

// DropBefore removes the events that began before at from t's streams
// (a stream that has any gets a new slice: one t shares with another
// timeline is left as it is) and returns their count by probe.
func (t *Timeline) DropBefore(at event.Mono) map[string]uint64 {
	out := map[string]uint64{}
	for _, s := range streams {
		if n := s.dropBefore(t, at); n > 0 {
			out[s.Probe()] += uint64(n)
		}
	}
	return out
}

// Events counts the events t holds, by the probe that emits them; probes
// with none are left out.
func (t *Timeline) Events() map[string]uint64 {
	out := map[string]uint64{}
	for _, s := range streams {
		if n := s.Len(t); n > 0 {
			out[s.Probe()] += uint64(n)
		}
	}
	return out
}

// DefaultMaxEventBytes is how much memory the events of a timeline may take
// (estimated) before further ones are dropped and counted as lost, in a
// live run and in the analysis of a trace: about a million events of the
// usual kinds.
const DefaultMaxEventBytes = 128 << 20

// FullLoss is the Loss.What of the events Admit dropped.
const FullLoss = "timeline full (memory bound of the run)"

// Bound is the memory bound of a timeline's events: a live run's
// collector and the reader of a trace each keep one, with the same Max,
// so that both keep and count the same.
type Bound struct {
	// Max is the memory the events may take (estimated); 0 means
	// DefaultMaxEventBytes.
	Max     int64
	bytes   int64
	strs    map[string]string // the one copy of each shared string
	dropped []event.Loss      // by probe, in the order of their first drop
}

func (b *Bound) drop(probe string) {
	for i := range b.dropped {
		if b.dropped[i].Probe == probe {
			b.dropped[i].Count++
			return
		}
	}
	b.dropped = append(b.dropped, event.Loss{Probe: probe, What: FullLoss, Count: 1})
}

// Dropped are the events Admit dropped, by probe (What is FullLoss).
func (b *Bound) Dropped() []event.Loss { return slices.Clone(b.dropped) }

func (b *Bound) max() int64 {
	if b.Max <= 0 {
		return DefaultMaxEventBytes
	}
	return b.Max
}

// Admit adds e to its stream in t if the events admitted stay within the
// bound (estimated: Stream.Bytes, and each string of the fields tagged
// `mem:"shared"` once, for the events share the bound's copy, which Admit
// puts in their place); past the bound e is dropped, and counted in
// Dropped: the caller adds it to the timeline's losses. It says whether e
// was kept; an event of a type no source declares is not.
func (b *Bound) Admit(t *Timeline, e event.Event) bool {
	s := StreamOf(e)
	if s == nil {
		return false
	}
	s.add(t, e)
	return b.AdmitLast(t, s)
}

// AdmitLast is Admit for the event just appended to stream s of t, for a
// reader that decodes in place: past the bound it is removed again.
func (b *Bound) AdmitLast(t *Timeline, s Stream) bool {
	if s.Len(t) == 0 {
		return false
	}
	return s.admitLast(t, b)
}

// Bytes is the estimated memory of the events admitted so far.
func (b *Bound) Bytes() int64 { return b.bytes }

// MergeHistogram adds h to the histogram of that kind of device dev; a
// kind no source declares is ignored.
func (t *Timeline) MergeHistogram(kind HistKind, dev event.Device, h *hist.Histogram) {
	if k, ok := histOf[kind]; ok {
		k.Of(t.Device(dev)).Merge(h)
	}
}

// AddLoss adds to the loss count of a probe and cause. A count that would
// pass the largest uint64 stays there: a total never wraps to a small one.
func (t *Timeline) AddLoss(l event.Loss) {
	if l.Count == 0 {
		return
	}
	for i := range t.Losses {
		if t.Losses[i].Probe == l.Probe && t.Losses[i].What == l.What {
			t.Losses[i].Count = SaturatingSum(t.Losses[i].Count, l.Count)
			return
		}
	}
	t.Losses = append(t.Losses, l)
}

// LostEvents is how many events were lost, each counted once: losses of
// several probes that count the same happenings (an overlap class,
// event.Distinct) count once, at the largest probe's count. The largest
// uint64 when it would be more.
func (t *Timeline) LostEvents() uint64 { return event.Distinct(t.Losses) }

// SaturatingSum is a+b, or the largest uint64 when the sum would wrap.
func SaturatingSum(a, b uint64) uint64 {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxUint64
}

// Device returns the histograms of a device, creating them if needed.
func (t *Timeline) Device(d event.Device) *DeviceHistograms {
	for i := range t.Devices {
		if t.Devices[i].Dev.Major == d.Major && t.Devices[i].Dev.Minor == d.Minor {
			if t.Devices[i].Dev.Name == "" {
				t.Devices[i].Dev.Name = d.Name
			}
			return &t.Devices[i]
		}
	}
	t.Devices = append(t.Devices, DeviceHistograms{Dev: d})
	return &t.Devices[len(t.Devices)-1]
}

// Sort orders every stream by time (stable, so equal times keep arrival
// order) and devices by name.
func (t *Timeline) Sort() {
	for _, s := range streams {
		s.sort(t)
	}
	sort.SliceStable(t.Devices, func(i, j int) bool { return t.Devices[i].Dev.String() < t.Devices[j].Dev.String() })
}

func sortBy[E event.Event](s []E) {
	slices.SortStableFunc(s, func(a, b E) int {
		switch {
		case a.When() < b.When():
			return -1
		case a.When() > b.When():
			return 1
		}
		return 0
	})
}

// Window returns the sub-slice of a time-sorted stream whose start times lie
// in [from, to).
func Window[E event.Event](s []E, from, to event.Mono) []E {
	lo := sort.Search(len(s), func(i int) bool { return s[i].When() >= from })
	hi := sort.Search(len(s), func(i int) bool { return s[i].When() >= to })
	if hi < lo {
		hi = lo
	}
	return s[lo:hi]
}
