package live

import (
	"slices"
	"sync"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/facts"
	"github.com/whyslow/whyslow/internal/timeline"
)

// Freezes turns the events of a live trace into queue freezes, attributed
// the way a diagnosis attributes them: it keeps the last seconds of the
// events that name a freeze's device (the freezer's sysfs writes, the
// queue-enter waits it woke, the stalls it overlapped) and runs facts.Build
// over them. A freeze is returned once it has ended Settle ago, so that the
// events that name its device, which come after it, are in.
//
// On a kernel where the freeze probe runs directly (fentry or kprobe), the
// freezes are its event.Freeze spans, freeze start to unfreeze; otherwise
// they are the off-CPU spans of freezers blocked in blk_mq_freeze_queue_wait
// (facts.KindFreezeWait). Which one facts.Build picks depends on the probe
// statuses given to NewFreezes.
//
// Safe for concurrent use.
type Freezes struct {
	mu sync.Mutex
	tl timeline.Timeline
	// emitted are the spans already returned, by key, with their end.
	emitted map[spanKey]time.Duration
	pending int    // freeze events or freeze-wait spans added since the last build
	dropped uint64 // events not kept because the buffer was full

	// Settle is how long after its end a freeze waits for the events that
	// attribute it. Keep is how long events are kept after they end (sysfs
	// writes: Keep plus facts.DefaultSysfsLookback plus a margin). MaxEvents
	// bounds each buffered stream.
	Settle, Keep time.Duration
	MaxEvents    int
}

type spanKey struct {
	pid   uint32
	start time.Duration
	kind  string
}

// Defaults of Freezes.
const (
	DefaultSettle    = 250 * time.Millisecond
	DefaultKeep      = 3 * time.Second
	DefaultMaxEvents = 1 << 16
	// sysfsKeep is how long sysfs writes are kept: a long freeze-wait is
	// attributed from the write just before its start.
	sysfsKeep = time.Minute
)

// NewFreezes returns a tracker for a trace that started at start, whose
// probes run with these statuses and threshold.
func NewFreezes(start event.Mono, probes []event.ProbeStatus, minLatency time.Duration) *Freezes {
	return &Freezes{
		tl:        timeline.Timeline{Start: start, Probes: slices.Clone(probes), MinLatency: minLatency},
		emitted:   map[spanKey]time.Duration{},
		Settle:    DefaultSettle,
		Keep:      DefaultKeep,
		MaxEvents: DefaultMaxEvents,
	}
}

// SetProbes replaces the probe statuses facts.Build sees (they say whether
// the freeze probe ran directly). Call it once every probe has started.
func (f *Freezes) SetProbes(probes []event.ProbeStatus) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tl.Probes = slices.Clone(probes)
}

// Add keeps an event the attribution of freezes needs: a direct freeze, an
// off-CPU span in queue enter, a freeze wait or a tag wait, a sysfs write, a
// slow submission or submit call. Other events are ignored.
func (f *Freezes) Add(e event.Event) {
	keep, freeze := needed(e)
	if !keep {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if timeline.StreamOf(e).Len(&f.tl) >= f.MaxEvents {
		f.dropped++
		return
	}
	f.tl.Add(e)
	if freeze {
		f.pending++
	}
}

// needed says whether the attribution of freezes needs an event, and
// whether it is a freeze to print (timed directly, or a freezer's wait).
func needed(e event.Event) (keep, freeze bool) {
	switch v := e.(type) {
	case event.Freeze:
		return true, true
	case event.OffCPU:
		switch facts.Classify(v.KernelStack) {
		case facts.KindFreezeWait:
			return true, true
		case facts.KindQueueEnter, facts.KindTagWait:
			return true, false
		}
	case event.SysfsWrite, event.SlowSubmit, event.SubmitCall, event.QueueEnter:
		return true, false
	}
	return false, false
}

// Dropped is the number of events not kept because a buffer was full:
// freezes among them may be missing or unattributed.
func (f *Freezes) Dropped() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dropped
}

// Ready returns, in time order, the freezes that ended at least Settle
// before now and were not returned before; with final, every one not
// returned yet. It then forgets events older than Keep.
func (f *Freezes) Ready(now event.Mono, final bool) []facts.Span {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []facts.Span
	if f.pending > 0 {
		out = f.build(now, final)
	}
	f.prune(now)
	return out
}

func (f *Freezes) build(now event.Mono, final bool) []facts.Span {
	tl := f.tl // a copy of the slices' headers: Sort must not reorder what Add appends to
	tl.SlowSubmits = slices.Clone(tl.SlowSubmits)
	tl.OffCPU = slices.Clone(tl.OffCPU)
	tl.SysfsWrites = slices.Clone(tl.SysfsWrites)
	tl.QueueEnters = slices.Clone(tl.QueueEnters)
	tl.Freezes = slices.Clone(tl.Freezes)
	tl.SubmitCalls = slices.Clone(tl.SubmitCalls)
	tl.End = now
	tl.Sort()
	run := facts.Build(&tl, facts.Options{})

	var spans []facts.Span
	for _, d := range run.Devices {
		spans = append(spans, d.Freezes...)
	}
	for _, s := range run.Unattributed {
		if s.Kind == facts.KindFreeze || s.Kind == facts.KindFreezeWait {
			spans = append(spans, s)
		}
	}
	settled := now.Sub(f.tl.Start) - f.Settle
	var out []facts.Span
	waiting := 0
	for _, s := range spans {
		k := spanKey{s.Pid, s.Start, s.Kind}
		if _, done := f.emitted[k]; done {
			continue
		}
		if !final && s.End > settled {
			waiting++
			continue
		}
		f.emitted[k] = s.End
		out = append(out, s)
	}
	f.pending = waiting
	slices.SortStableFunc(out, func(a, b facts.Span) int {
		switch {
		case a.Start < b.Start:
			return -1
		case a.Start > b.Start:
			return 1
		}
		return 0
	})
	return out
}

// prune forgets the events (and returned spans) that ended more than Keep
// before now; sysfs writes are kept longer.
func (f *Freezes) prune(now event.Mono) {
	cut := now.Add(-f.Keep)
	ended := func(start event.Mono, d time.Duration) bool { return start.Add(max(d, 0)) < cut }
	f.tl.SlowSubmits = slices.DeleteFunc(f.tl.SlowSubmits, func(e event.SlowSubmit) bool { return ended(e.Start, e.Latency) })
	f.tl.OffCPU = slices.DeleteFunc(f.tl.OffCPU, func(e event.OffCPU) bool { return ended(e.Start, e.Duration) })
	f.tl.QueueEnters = slices.DeleteFunc(f.tl.QueueEnters, func(e event.QueueEnter) bool { return ended(e.Start, e.Duration) })
	f.tl.Freezes = slices.DeleteFunc(f.tl.Freezes, func(e event.Freeze) bool { return ended(e.Start, e.Duration) })
	f.tl.SubmitCalls = slices.DeleteFunc(f.tl.SubmitCalls, func(e event.SubmitCall) bool { return ended(e.Start, e.Latency) })
	sysCut := now.Add(-f.Keep - sysfsKeep)
	f.tl.SysfsWrites = slices.DeleteFunc(f.tl.SysfsWrites, func(e event.SysfsWrite) bool { return e.Time < sysCut })
	relCut := cut.Sub(f.tl.Start)
	for k, end := range f.emitted {
		if end < relCut {
			delete(f.emitted, k)
		}
	}
}
