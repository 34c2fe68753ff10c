package diagnose

import (
	"sync"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/probes"
)

// recording drives a Recorder during a run: Begin and a first checkpoint
// as the probes have started, then Append and Checkpoint every FlushEvery
// from a goroutine, Finish at the end.
type recording struct {
	r      Recorder
	failed bool // a call failed: no more calls
	quit   chan struct{}
	done   sync.WaitGroup
}

// startRecording begins the recording of a run, if it has a Recorder; the
// returned recording (nil without one) must be stopped.
func startRecording(opts Options, col *collector, g *probes.Group) *recording {
	if opts.Record == nil {
		return nil
	}
	rc := &recording{r: opts.Record, quit: make(chan struct{})}
	flushEvery, stateEvery := opts.FlushEvery, opts.StateEvery
	if flushEvery <= 0 {
		flushEvery = time.Second
	}
	if stateEvery <= 0 {
		stateEvery = 10 * time.Second
	}
	stateEvery = max(stateEvery, flushEvery)
	col.mu.Lock()
	start := col.tl.Start
	col.mu.Unlock()
	if !rc.call(func() error { return rc.r.Begin(col.tl) }) ||
		!rc.call(func() error { return rc.r.Checkpoint(col.state(g), start) }) {
		return rc
	}
	rc.done.Add(1)
	go func() {
		defer rc.done.Done()
		tick := time.NewTicker(flushEvery)
		defer tick.Stop()
		// The state (histograms above all) at 1, 3, 7, 15 s, then every
		// stateEvery: a short run killed early still has some, a long one
		// does not read every probe's maps every second.
		began, step := time.Now(), flushEvery
		next := step
		for {
			select {
			case <-rc.quit:
				return
			case <-tick.C:
			}
			view, at := col.view()
			var state *timeline.Timeline
			if time.Since(began) >= next-flushEvery/2 {
				state = col.state(g)
				step = min(2*step, stateEvery)
				next += step
			}
			if !rc.call(func() error { return rc.r.Append(view) }) || !rc.call(func() error { return rc.r.Checkpoint(state, at) }) {
				return
			}
		}
	}()
	return rc
}

// call calls fn unless an earlier call failed, and says whether it passed.
func (rc *recording) call(fn func() error) bool {
	if rc.failed {
		return false
	}
	if err := fn(); err != nil {
		rc.failed = true
	}
	return !rc.failed
}

// stop ends the periodic flushes (before the probes stop).
func (rc *recording) stop() {
	if rc == nil {
		return
	}
	close(rc.quit)
	rc.done.Wait()
}

// finish records the rest of the run, once the probes have stopped and
// before the timeline is sorted.
func (rc *recording) finish(tl *timeline.Timeline) {
	if rc == nil {
		return
	}
	rc.call(func() error { return rc.r.Finish(tl) })
}

// view is the timeline as it is, a shallow copy (the events of a stream do
// not change once added), and the time it is taken at: what a checkpoint
// at that time holds.
func (c *collector) view() (*timeline.Timeline, event.Mono) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := *c.tl
	now, err := event.Now()
	if err != nil {
		now = c.tl.Start
	}
	return &v, now
}

// state is the state of the run so far, for a checkpoint: the probes'
// statuses, the losses counted so far (those the probes deliver only as
// they stop, and those of the memory bound) and the histograms of the
// probes that can tell them while they run.
func (c *collector) state(g *probes.Group) *timeline.Timeline {
	st := &timeline.Timeline{}
	c.mu.Lock()
	st.Probes = append(st.Probes, c.tl.Probes...)
	for _, l := range c.tl.Losses {
		st.AddLoss(l)
	}
	c.mu.Unlock()
	_ = g.Checkpoint(stateSink{st}) // a probe that cannot tell its state leaves it out
	return st
}

// stateSink gathers the state the probes deliver at a checkpoint.
type stateSink struct{ tl *timeline.Timeline }

// Event keeps the sums a probe delivers whole (timeline.Sums streams);
// its other events went to the timeline as they came.
func (s stateSink) Event(e event.Event) {
	if st := timeline.StreamOf(e); st != nil && st.State() {
		s.tl.Add(e)
	}
}
func (s stateSink) Loss(l event.Loss) { s.tl.AddLoss(l) }
func (s stateSink) Histogram(kind timeline.HistKind, dev event.Device, h *hist.Histogram) {
	s.tl.MergeHistogram(kind, dev, h)
}
