package diagnose

import (
	"sync"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/internal/trouble"
	"github.com/whyslow/whyslow/probes"
)

// collector is the probes.Sink of a live run: it puts everything on one
// timeline and counts events per probe for the progress display. It holds
// at most maxBytes of events (estimated, timeline.Bound): beyond, events
// are dropped and counted as lost ("timeline full"), so that a storm of
// events cannot make the run's memory grow without bound.
type collector struct {
	mu     sync.Mutex
	tl     *timeline.Timeline
	counts map[string]uint64 // events kept, by probe
	bound  timeline.Bound
	// watch, when set, is the trouble watcher the events are shown to.
	watch *trouble.Watcher
}

// DefaultMaxEventBytes is how much memory the events of a live run may take
// (estimated) before further ones are dropped and counted as lost: about a
// million events of the usual kinds. `whyslow analyze` reads a trace with
// the same bound.
const DefaultMaxEventBytes = timeline.DefaultMaxEventBytes

// timelineFull is the Loss.What of events dropped by the bound.
const timelineFull = timeline.FullLoss

func newCollector(tl *timeline.Timeline, maxBytes int64) *collector {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxEventBytes
	}
	return &collector{tl: tl, counts: map[string]uint64{}, bound: timeline.Bound{Max: maxBytes}}
}

var _ probes.Sink = (*collector)(nil)

func (c *collector) Event(e event.Event) {
	s := timeline.StreamOf(e)
	if s == nil {
		return // a kind no probe declares: nothing to keep it in
	}
	if c.watch != nil {
		c.watch.Observe(e)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bound.Admit(c.tl, e) {
		c.counts[s.Probe()]++
	} else {
		c.tl.AddLoss(event.Loss{Probe: s.Probe(), What: timelineFull, Count: 1})
	}
}

func (c *collector) Loss(l event.Loss) {
	c.mu.Lock()
	c.tl.AddLoss(l)
	c.mu.Unlock()
}

func (c *collector) Histogram(kind timeline.HistKind, dev event.Device, h *hist.Histogram) {
	c.mu.Lock()
	c.tl.MergeHistogram(kind, dev, h)
	c.mu.Unlock()
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
