package flight

import (
	"cmp"
	"container/list"
	"slices"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// DescribedLoss is the loss cause (event.Loss.What) of a state forgotten
// because its kind had Options.MaxDescribed others, more recent, held.
const DescribedLoss = "flight recorder: states held for later windows over the bound (least recent forgotten)"

// DefaultMaxDescribed is Options.MaxDescribed's default.
const DefaultMaxDescribed = 4096

// The states of the system the probes described (timeline.Stream.Describes:
// cgroup limits and members, iocost, mounts, wbt targets, the dirty
// limits, processes' names) are delivered when a probe reads them or sees
// them change, often only at its start. A window or a dump of a long run
// needs those delivered before it, so the recorder keeps, besides the
// segments, the latest of each (by Stream.Key) that left the segments held
// (expired): the base. The states as of a time are the base with the
// describing events of the segments closed by then laid over it; an exit
// (event.Exit) forgets the states of its process. The base is bounded by
// Options.MaxDescribed per stream (the least recently described go first,
// counted as DescribedLoss); its events count in the memory bound.

// descTable is the base of one describing stream.
type descTable struct {
	byKey map[string]*list.Element // of *descEntry
	order *list.List               // least recently described first
}

type descEntry struct {
	s     timeline.Stream
	key   string
	pid   uint32
	e     event.Event
	seq   uint64 // arrival order
	bytes int64
}

// describingStreams are the streams whose events describe states.
var describingStreams = func() []timeline.Stream {
	var out []timeline.Stream
	for _, s := range timeline.Streams() {
		if s.Describes() {
			out = append(out, s)
		}
	}
	return out
}()

// fold lays the describing events of a segment that leaves the recorder
// over the base, and forgets the states of the processes that exited in
// it.
func (r *Recorder) fold(seg *segment) {
	for _, s := range describingStreams {
		s.Each(seg.tl, func(e event.Event) {
			r.held(s, e, -1)
			r.describe(s, e)
		})
	}
	for _, x := range seg.tl.Exits {
		r.forget(x)
	}
}

// held counts (n = 1) or uncounts (-1) a describing event of a process in
// the segments held.
func (r *Recorder) held(s timeline.Stream, e event.Event, n int) {
	if !s.Describes() {
		return
	}
	_, pid := s.Key(e)
	if pid == 0 {
		return
	}
	if r.heldPids == nil {
		r.heldPids = map[uint32]int{}
	}
	if r.heldPids[pid] += n; r.heldPids[pid] <= 0 {
		delete(r.heldPids, pid)
	}
}

// describe makes e the latest state of its key in the base.
func (r *Recorder) describe(s timeline.Stream, e event.Event) {
	if r.desc == nil {
		r.desc = map[timeline.Stream]*descTable{}
	}
	tb := r.desc[s]
	if tb == nil {
		tb = &descTable{byKey: map[string]*list.Element{}, order: list.New()}
		r.desc[s] = tb
	}
	key, pid := s.Key(e)
	r.seq++
	ent := &descEntry{s: s, key: key, pid: pid, e: e, seq: r.seq, bytes: s.Bytes(e) + int64(len(key)) + 96}
	if el, ok := tb.byKey[key]; ok {
		old := el.Value.(*descEntry)
		r.bytes -= old.bytes
		r.unown(old)
		el.Value = ent
		tb.order.MoveToBack(el)
	} else {
		for tb.order.Len() >= r.maxDesc {
			front := tb.order.Front()
			old := front.Value.(*descEntry)
			tb.order.Remove(front)
			delete(tb.byKey, old.key)
			r.bytes -= old.bytes
			r.unown(old)
			r.lose(r.open(), event.Loss{Probe: s.Probe(), What: DescribedLoss, Count: 1})
		}
		tb.byKey[key] = tb.order.PushBack(ent)
	}
	r.bytes += ent.bytes
	if pid != 0 {
		if r.owned == nil {
			r.owned = map[uint32][]*descEntry{}
		}
		r.owned[pid] = append(r.owned[pid], ent)
	}
}

// unown removes an entry from its process's list.
func (r *Recorder) unown(ent *descEntry) {
	if ent.pid == 0 {
		return
	}
	l := slices.DeleteFunc(r.owned[ent.pid], func(x *descEntry) bool { return x == ent })
	if len(l) == 0 {
		delete(r.owned, ent.pid)
	} else {
		r.owned[ent.pid] = l
	}
}

// forget drops the base's states of a process that exited (those
// described before its exit: a later one is of a new process with its
// pid).
func (r *Recorder) forget(x event.Exit) {
	for _, ent := range slices.Clone(r.owned[x.Pid]) {
		if ent.e.When() > x.Time {
			continue
		}
		tb := r.desc[ent.s]
		if el, ok := tb.byKey[ent.key]; ok && el.Value == ent {
			tb.order.Remove(el)
			delete(tb.byKey, ent.key)
			r.bytes -= ent.bytes
			r.unown(ent)
		}
	}
}

// describedAt returns the states as of at (a rotation's time): the base,
// with the describing events of the segments closed by at laid over it,
// each event set at at (Stream.At), in the order they were described; nil
// when there is none.
func (r *Recorder) describedAt(at event.Mono) *timeline.Timeline {
	type id struct {
		s   timeline.Stream
		key string
	}
	cur := map[id]*descEntry{}
	byPid := map[uint32][]id{}
	put := func(ent *descEntry) {
		k := id{ent.s, ent.key}
		cur[k] = ent
		if ent.pid != 0 {
			byPid[ent.pid] = append(byPid[ent.pid], k)
		}
	}
	for _, tb := range r.desc {
		for el := tb.order.Front(); el != nil; el = el.Next() {
			put(el.Value.(*descEntry))
		}
	}
	seq := r.seq
	for _, seg := range r.segs {
		if seg.end == 0 || seg.end > at {
			break
		}
		for _, s := range describingStreams {
			s.Each(seg.tl, func(e event.Event) {
				key, pid := s.Key(e)
				seq++
				put(&descEntry{s: s, key: key, pid: pid, e: e, seq: seq})
			})
		}
		for _, x := range seg.tl.Exits {
			for _, k := range byPid[x.Pid] {
				if ent, ok := cur[k]; ok && ent.pid == x.Pid && ent.e.When() <= x.Time {
					delete(cur, k)
				}
			}
		}
	}
	if len(cur) == 0 {
		return nil
	}
	ents := make([]*descEntry, 0, len(cur))
	for _, ent := range cur {
		ents = append(ents, ent)
	}
	slices.SortFunc(ents, func(a, b *descEntry) int { return cmp.Compare(a.seq, b.seq) })
	tl := &timeline.Timeline{}
	for _, ent := range ents {
		tl.Add(ent.s.At(ent.e, at))
	}
	return tl
}

// Described counts the states the recorder holds for later windows beyond
// the segments held (its base).
func (r *Recorder) Described() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, tb := range r.desc {
		n += tb.order.Len()
	}
	return n
}
