// Package flight is the flight recorder of `whyslow serve`: everything the
// probes delivered over the last minutes, within one memory bound, from
// which serve reads the window it evaluates and the traces /trace dumps.
//
// Events are kept in segments, one per Rotate (serve rotates every second),
// in the order they arrived; checkpoints of the probes' counters (State:
// their histograms and loss counters, cumulative since they started) are
// kept beside them, taken at rotations. A stretch of the run is the
// segments between two states: its events, the losses delivered while
// they arrived, and the histograms and counted losses by the difference of
// the two states (Delta); its sums are counted along the states in it
// (AddSumsChain), or checkpoint by checkpoint as they come, within a bound
// of their own (WindowSums: serve's windows and dumps).
//
// The bound: the events held (estimated as a run's, timeline.Stream.Bytes,
// each shared string once per segment) and the packed states together take
// at most Options.MaxBytes. Segments older than Options.Keep are dropped
// as they expire. Before that, when the bound is reached, the oldest
// states are dropped while the states take over half of it (they hold the
// syscall probe's sums whole, megabytes when its maps are full; a window
// needs none of them, a dump starts later), then the oldest segment's
// events are evicted to make room (the other states only when no event is
// left to evict): the segment stays, holding the count of the events it lost
// by probe (EvictedLoss), so that a window or a dump that covers it says
// so. When nothing is left to evict, new events are dropped and counted
// (FullLoss). Everything evicted or dropped is in Totals.
//
// The events that describe a state of the system (a cgroup's limit, a
// mount, a process's names: timeline.Stream.Describes) are not evicted,
// and the latest of each outlives its segment, within a bound of its own
// (Options.MaxDescribed): each window and dump starts with the states as
// they were at its start, however long ago they were described.
package flight

import (
	"slices"
	"sync"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
)

// Loss causes of the flight recorder (event.Loss.What).
const (
	// EvictedLoss: events evicted before Keep had passed, to make room
	// for newer ones (a storm filled the recorder).
	EvictedLoss = "flight recorder full (evicted before --flight-recorder passed)"
	// FullLoss: events dropped as they came, the recorder holding nothing
	// older that it could evict.
	FullLoss = "flight recorder full (memory bound)"
)

// Defaults of Options.
const (
	DefaultMaxBytes = 128 << 20
	DefaultKeep     = 10 * time.Minute
)

// Options bound a Recorder.
type Options struct {
	// MaxBytes bounds the events and states held (estimated); 0 means
	// DefaultMaxBytes.
	MaxBytes int64
	// Keep is how long segments and states are held; 0 means DefaultKeep.
	Keep time.Duration
	// MaxDescribed bounds the states of the system (describing events)
	// held past their segments, per kind; 0 means DefaultMaxDescribed.
	MaxDescribed int
}

// Recorder holds the run's recent events and states. It is a probes.Sink
// (Event, Loss; Histogram is ignored: histograms come in States) and safe
// for concurrent use.
type Recorder struct {
	mu     sync.Mutex
	max    int64
	keep   time.Duration
	segs   []*segment // oldest first; the last is open
	states []*packed  // oldest first
	bytes  int64      // held: the events of every segment, the states, the described states
	// stateBytes is what the states take of bytes.
	stateBytes int64
	totals     timeline.Timeline

	// The states described before the segments held (described.go).
	maxDesc int
	desc    map[timeline.Stream]*descTable
	owned   map[uint32][]*descEntry // by the process they belong to
	seq     uint64
	// heldPids counts the describing events of each process in the
	// segments held: their exits are kept when the segments' events are
	// evicted.
	heldPids map[uint32]int
}

// segment is the events that arrived between two rotations, and the losses
// delivered or counted meanwhile.
type segment struct {
	start, end event.Mono // end is 0 while the segment is open
	tl         *timeline.Timeline
	bound      timeline.Bound
	evicted    bool
	kept       int64 // evicted: the bytes of the describing events kept
}

// New returns a recorder whose first segment opens at start.
func New(o Options, start event.Mono) *Recorder {
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.Keep <= 0 {
		o.Keep = DefaultKeep
	}
	if o.MaxDescribed <= 0 {
		o.MaxDescribed = DefaultMaxDescribed
	}
	r := &Recorder{max: o.MaxBytes, keep: o.Keep, maxDesc: o.MaxDescribed}
	r.segs = []*segment{newSegment(start)}
	return r
}

func newSegment(start event.Mono) *segment {
	return &segment{start: start, tl: &timeline.Timeline{}}
}

func (r *Recorder) open() *segment { return r.segs[len(r.segs)-1] }

// Event keeps e in the open segment, evicting older events when the bound
// needs it, or drops it and counts it (FullLoss).
func (r *Recorder) Event(e event.Event) {
	s := timeline.StreamOf(e)
	if s == nil {
		return
	}
	est := s.Bytes(e)
	r.mu.Lock()
	defer r.mu.Unlock()
	seg := r.open()
	if r.bytes+est > r.max {
		r.makeRoom(est)
	}
	room := r.max - (r.bytes - seg.bound.Bytes())
	if room >= est {
		seg.bound.Max = room
		before := seg.bound.Bytes()
		if seg.bound.Admit(seg.tl, e) {
			r.bytes += seg.bound.Bytes() - before
			r.held(s, e, 1)
			return
		}
	}
	r.lose(seg, event.Loss{Probe: s.Probe(), What: FullLoss, Count: 1})
}

// Histogram ignores a histogram a probe delivers as it stops: the
// recorder's histograms are the probes' States.
func (r *Recorder) Histogram(timeline.HistKind, event.Device, *hist.Histogram) {}

// Loss counts a loss a probe delivered as it ran, in the open segment.
func (r *Recorder) Loss(l event.Loss) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lose(r.open(), l)
}

func (r *Recorder) lose(seg *segment, l event.Loss) {
	seg.tl.AddLoss(l)
	r.totals.AddLoss(l)
}

// makeRoom drops the oldest states while they take over half the bound,
// then evicts the oldest events, then the oldest states, until need more
// bytes fit, or nothing is left to evict but the open segment and the
// newest state. States go last when they are small: a dump that starts
// from one says what was evicted after it; but the syscall probe's sums
// are whole in each, megabytes when its maps are full, and a storm of
// them must not evict every window's events (a window needs no state of
// the recorder: serve keeps those at its ends).
func (r *Recorder) makeRoom(need int64) {
	for r.bytes+need > r.max {
		var seg *segment
		for _, s := range r.segs[:len(r.segs)-1] {
			if !s.evicted && s.bound.Bytes() > 0 {
				seg = s
				break
			}
		}
		var st *packed
		if len(r.states) > 1 {
			st = r.states[0]
		}
		switch {
		case st != nil && r.stateBytes > r.max/2:
			r.dropState()
		case seg != nil:
			r.evict(seg)
		case st != nil:
			r.dropState()
		default:
			return
		}
	}
}

// dropState drops the oldest state.
func (r *Recorder) dropState() {
	r.bytes -= r.states[0].bytes
	r.stateBytes -= r.states[0].bytes
	r.states[0] = nil
	r.states = r.states[1:]
}

// evict drops a segment's events, keeping their count as losses; the
// events that describe states are kept.
func (r *Recorder) evict(seg *segment) {
	r.bytes -= seg.bound.Bytes()
	counts := seg.tl.Events()
	kept := &timeline.Timeline{Losses: seg.tl.Losses}
	kept.AppendDescribing(seg.tl)
	for _, s := range describingStreams {
		s.Each(kept, func(e event.Event) {
			seg.kept += s.Bytes(e)
			counts[s.Probe()]--
		})
	}
	// The exits of processes with states described, which forget them.
	if exit := timeline.StreamOf(event.Exit{}); exit != nil {
		for _, x := range seg.tl.Exits {
			if r.owned[x.Pid] != nil || r.heldPids[x.Pid] > 0 {
				kept.Exits = append(kept.Exits, x)
				seg.kept += exit.Bytes(x)
				counts[exit.Probe()]--
			}
		}
	}
	r.bytes += seg.kept
	for _, p := range timeline.ProbeNames() {
		if n := counts[p]; n > 0 {
			l := event.Loss{Probe: p, What: EvictedLoss, Count: n}
			kept.AddLoss(l)
			r.totals.AddLoss(l)
		}
	}
	seg.tl, seg.bound, seg.evicted = kept, timeline.Bound{}, true
}

// Rotate closes the open segment at at, opens the next, and drops the
// segments that ended Keep or more before at (the latest of the states
// their events described are kept), with the states older than the
// oldest segment left.
func (r *Recorder) Rotate(at event.Mono) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.open().end = at
	r.segs = append(r.segs, newSegment(at))
	cut := at.Add(-r.keep)
	n := 0
	for n < len(r.segs)-1 && r.segs[n].end <= cut {
		r.bytes -= r.segs[n].bound.Bytes() + r.segs[n].kept
		r.fold(r.segs[n])
		n++
	}
	if n > 0 {
		clear(r.segs[:n])
		r.segs = slices.Delete(r.segs, 0, n)
	}
	oldest := r.segs[0].start
	m := 0
	for m < len(r.states) && r.states[m].at < oldest {
		r.bytes -= r.states[m].bytes
		r.stateBytes -= r.states[m].bytes
		m++
	}
	if m > 0 {
		r.states = slices.Delete(r.states, 0, m)
	}
}

// AddState keeps a checkpoint of the probes' counters, taken at the time
// of a rotation (st.At), as a start for dumps (Since).
func (r *Recorder) AddState(st State) {
	p := pack(st)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.states = append(r.states, p)
	r.bytes += p.bytes
	r.stateBytes += p.bytes
	if r.bytes > r.max {
		r.makeRoom(0)
	}
}

// Window returns the stretch of the run from one state to another: the
// states of the system described before it, as they were at from.At
// (set at from.At), then the events of the segments that opened at or
// after from.At and closed by to.At (copied, in arrival order: Sort the
// timeline before analyzing it), the losses delivered or counted meanwhile, and the histograms and
// counted losses by Delta. The caller fills in the rest of the timeline
// (kernel, host, probes, holders).
//
// The sums (AddSumsChain) are counted along from, between (the states
// taken in between, in order) and to; with no between given, along the
// states the recorder holds in between (Chain), which it may have dropped
// for room: a caller that prunes the probes' sums (probes.Pruner) passes
// every state it took.
func (r *Recorder) Window(from, to State, between ...State) *timeline.Timeline {
	tl := r.Events(from, to)
	chain := r.Chain(from, to)
	if len(between) > 0 {
		chain = append(append([]State{from}, between...), to)
	}
	AddSumsChain(tl, chain)
	return tl
}

// Events is Window without the sums: the caller that counted them along
// its checkpoints (WindowSums) sets them. Of from and to it reads only
// the times, histograms and loss counters.
func (r *Recorder) Events(from, to State) *timeline.Timeline {
	tl := &timeline.Timeline{Start: from.At, End: to.At}
	r.mu.Lock()
	if d := r.describedAt(from.At); d != nil {
		tl.AppendEvents(d)
	}
	for _, seg := range r.segs {
		if seg.start >= from.At && seg.end != 0 && seg.end <= to.At {
			tl.AppendEvents(seg.tl)
			for _, l := range seg.tl.Losses {
				tl.AddLoss(l)
			}
		}
	}
	r.mu.Unlock()
	devs, losses := Delta(to, from)
	tl.Devices = devs
	for _, l := range losses {
		tl.AddLoss(l)
	}
	return tl
}

// Chain is from, the states held taken after it and before to, and to,
// in that order: what AddSumsChain counts a window's sums along.
func (r *Recorder) Chain(from, to State) []State {
	chain := []State{from}
	r.mu.Lock()
	var held []*packed
	for _, s := range r.states {
		if s.at > from.At && s.at < to.At {
			held = append(held, s)
		}
	}
	r.mu.Unlock()
	for _, s := range held {
		chain = append(chain, s.unpack())
	}
	return append(chain, to)
}

// EachState calls fn with each state held taken after from and before to,
// in order, unpacked one at a time (a caller that counts sums along them
// with WindowSums holds one at a time).
func (r *Recorder) EachState(from, to State, fn func(State)) {
	r.mu.Lock()
	var held []*packed
	for _, s := range r.states {
		if s.at > from.At && s.at < to.At {
			held = append(held, s)
		}
	}
	r.mu.Unlock()
	for _, s := range held {
		fn(s.unpack())
	}
}

// Since returns the recent run from the newest state at or before at (or
// the oldest state held, when none is that old: then the run held is
// shorter than asked): that state, and the segments from it on, the open
// one included, as parts, after a first part of the states of the system
// described before it as they were then (set at its time) (shallow copies: the events are shared, and a
// part holds on to them while it is used), and the losses delivered or
// counted while they arrived. ok is false when no state is held.
func (r *Recorder) Since(at event.Mono) (from State, parts []*timeline.Timeline, losses []event.Loss, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.states) == 0 {
		return State{}, nil, nil, false
	}
	st := r.states[0]
	for _, s := range r.states {
		if s.at <= at {
			st = s
		}
	}
	var sum timeline.Timeline
	if d := r.describedAt(st.at); d != nil {
		parts = append(parts, d)
	}
	for _, seg := range r.segs {
		if seg.start < st.at {
			continue
		}
		part := *seg.tl
		part.Losses = nil
		parts = append(parts, &part)
		for _, l := range seg.tl.Losses {
			sum.AddLoss(l)
		}
	}
	return st.unpack(), parts, sum.Losses, true
}

// Totals are every loss the recorder was told of or counted since it
// started: delivered by the probes as they ran, evicted and dropped.
func (r *Recorder) Totals() []event.Loss {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.totals.Losses)
}

// Stats describe what the recorder holds.
type Stats struct {
	Bytes, MaxBytes int64         // held (estimated), and the bound
	Held            time.Duration // from the oldest segment's start to the open one's
	Events          uint64        // events held
}

// Stats returns what the recorder holds now.
func (r *Recorder) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := Stats{Bytes: r.bytes, MaxBytes: r.max, Held: r.open().start.Sub(r.segs[0].start)}
	for _, seg := range r.segs {
		for _, n := range seg.tl.Events() {
			st.Events += n
		}
	}
	return st
}
