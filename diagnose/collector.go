package diagnose

import (
	"sync"
	"unsafe"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/probes"
)

// collector is the probes.Sink of a live run: it puts everything on one
// timeline and counts events per probe for the progress display. It holds
// at most maxBytes of events (estimated): beyond, events are dropped and
// counted as lost ("timeline full"), so that a storm of events cannot make
// the run's memory grow without bound.
type collector struct {
	mu       sync.Mutex
	tl       *timeline.Timeline
	counts   map[string]uint64 // events kept, by probe
	bytes    int64             // estimated size of the events held
	maxBytes int64
}

// DefaultMaxEventBytes is how much memory the events of a live run may take
// (estimated) before further ones are dropped and counted as lost: about a
// million events of the usual kinds.
const DefaultMaxEventBytes = 128 << 20

// timelineFull is the Loss.What of events dropped by the bound.
const timelineFull = "timeline full (memory bound of the run)"

func newCollector(tl *timeline.Timeline, maxBytes int64) *collector {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxEventBytes
	}
	return &collector{tl: tl, counts: map[string]uint64{}, maxBytes: maxBytes}
}

var _ probes.Sink = (*collector)(nil)

func (c *collector) Event(e event.Event) {
	n := eventBytes(e)
	c.mu.Lock()
	if c.bytes+n > c.maxBytes {
		c.tl.AddLoss(event.Loss{Probe: probeOf(e), What: timelineFull, Count: 1})
		c.mu.Unlock()
		return
	}
	c.bytes += n
	c.tl.Add(e)
	c.counts[probeOf(e)]++
	c.mu.Unlock()
}

// eventBytes estimates what an event takes on the timeline: its struct
// (times the slack of a growing slice) and the strings and frames it owns.
// Kernel stacks are shared between events of the same stack (the probes
// cache them) and count only as their slice header.
func eventBytes(e event.Event) int64 {
	const slack = 5 / 4.0
	frames := func(fs []event.Frame) int64 {
		n := int64(len(fs)) * int64(unsafe.Sizeof(event.Frame{}))
		for _, f := range fs {
			n += int64(len(f.Symbol) + len(f.Module))
		}
		return n
	}
	var n int64
	switch v := e.(type) {
	case event.SlowSubmit:
		n = int64(unsafe.Sizeof(v)) + int64(len(v.Task.Comm)+len(v.Dev.Name)+len(v.Op)+len(v.End))
	case event.OffCPU:
		n = int64(unsafe.Sizeof(v)) + int64(len(v.Task.Comm)+len(v.Waker.Comm)) + frames(v.UserStack)
	case event.Exec:
		n = int64(unsafe.Sizeof(v)) + int64(len(v.Task.Comm)+len(v.ParentComm)+len(v.Filename))
		for _, a := range v.Args {
			n += 16 + int64(len(a))
		}
	case event.Exit:
		n = int64(unsafe.Sizeof(v))
	case event.Uevent:
		n = int64(unsafe.Sizeof(v)) // its strings are interned by the probe
	case event.SysfsWrite:
		n = int64(unsafe.Sizeof(v)) + int64(len(v.Task.Comm)+len(v.Path)+len(v.Device)+len(v.Attr))
	case event.QueueEnter:
		n = int64(unsafe.Sizeof(v)) + int64(len(v.Task.Comm)+len(v.Dev.Name))
	case event.Freeze:
		n = int64(unsafe.Sizeof(v)) + int64(len(v.Task.Comm)+len(v.Unfreezer.Comm)+len(v.Dev.Name)) + frames(v.KernelStack) + frames(v.UserStack)
	case event.SubmitCall:
		n = int64(unsafe.Sizeof(v)) + int64(len(v.Task.Comm)+len(v.Dev.Name))
	default:
		n = 64
	}
	return int64(float64(n) * slack)
}

func (c *collector) Loss(l event.Loss) {
	c.mu.Lock()
	c.tl.AddLoss(l)
	c.mu.Unlock()
}

func (c *collector) Histogram(kind probes.HistKind, dev event.Device, h *hist.Histogram) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.tl.Device(dev)
	switch kind {
	case probes.HistSubmit:
		d.Submit.Merge(h)
	case probes.HistService:
		d.Service.Merge(h)
	case probes.HistSubmitCall:
		d.SubmitCall.Merge(h)
	}
}

// progress returns, for each probe named, the events it delivered and
// those lost so far (by the probe, or dropped here past the memory bound).
func (c *collector) progress(probes []string) (out []ProbeProgress, lost uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out = make([]ProbeProgress, len(probes))
	for i, name := range probes {
		out[i] = ProbeProgress{Name: name, Events: c.counts[name]}
		for _, l := range c.tl.Losses {
			if l.Probe == name {
				out[i].Lost += l.Count
			}
		}
	}
	return out, c.tl.LostEvents()
}

// probeOf names the probe that delivers a kind of event.
func probeOf(e event.Event) string {
	switch e.(type) {
	case event.SlowSubmit:
		return "submit"
	case event.OffCPU:
		return "offcpu"
	case event.Exec, event.Exit:
		return "exec"
	case event.Uevent:
		return "uevent"
	case event.SysfsWrite:
		return "sysfs"
	case event.QueueEnter:
		return event.ProbeQueueEnter
	case event.Freeze:
		return event.ProbeFreeze
	case event.SubmitCall:
		return event.ProbeSubmitCall
	}
	return "other"
}
