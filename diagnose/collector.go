package diagnose

import (
	"sync"

	"github.com/whyslow/whyslow/event"
	"github.com/whyslow/whyslow/hist"
	"github.com/whyslow/whyslow/probes"
	"github.com/whyslow/whyslow/timeline"
)

// collector is the probes.Sink of a live run: it puts everything on one
// timeline and counts events per probe kind for progress display.
type collector struct {
	mu     sync.Mutex
	tl     *timeline.Timeline
	counts map[string]uint64
}

func newCollector(tl *timeline.Timeline) *collector {
	return &collector{tl: tl, counts: map[string]uint64{}}
}

var _ probes.Sink = (*collector)(nil)

func (c *collector) Event(e event.Event) {
	c.mu.Lock()
	c.tl.Add(e)
	c.counts[kindOf(e)]++
	c.mu.Unlock()
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

// Counts returns a copy of the number of events received per kind.
func (c *collector) Counts() map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]uint64, len(c.counts))
	for k, v := range c.counts {
		out[k] = v
	}
	return out
}

func kindOf(e event.Event) string {
	switch e.(type) {
	case event.SlowSubmit:
		return "slow submits"
	case event.OffCPU:
		return "blocked spans"
	case event.Exec:
		return "execs"
	case event.Exit:
		return "exits"
	case event.Uevent:
		return "uevents"
	case event.SysfsWrite:
		return "sysfs writes"
	case event.QueueEnter:
		return "queue-enter waits"
	case event.Freeze:
		return "queue freezes"
	case event.SubmitCall:
		return "slow submit calls"
	}
	return "other"
}
