package diagnose

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/probes"
)

// callLog is a Recorder that notes its calls, and fails from call failAt on.
type callLog struct {
	mu     sync.Mutex
	calls  []string
	states int
	events []int // events the timeline held at each Append
	failAt int   // 0: never
}

func (c *callLog) note(what string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, what)
	if c.failAt > 0 && len(c.calls) >= c.failAt {
		return errors.New("disk full")
	}
	return nil
}

func (c *callLog) Begin(*timeline.Timeline) error { return c.note("begin") }
func (c *callLog) Append(tl *timeline.Timeline) error {
	c.mu.Lock()
	c.events = append(c.events, len(tl.Uevents))
	c.mu.Unlock()
	return c.note("append")
}
func (c *callLog) Checkpoint(state *timeline.Timeline, _ event.Mono) error {
	if state != nil {
		c.mu.Lock()
		c.states++
		c.mu.Unlock()
		return c.note("state")
	}
	return c.note("checkpoint")
}
func (c *callLog) Finish(*timeline.Timeline) error { return c.note("finish") }

// The recording begins with the state at the start, flushes the events
// added meanwhile, gives the state now and then, and finishes; events are
// admitted while it runs.
func TestRecording(t *testing.T) {
	tl := &timeline.Timeline{Start: 1}
	col := newCollector(tl, 0)
	log := &callLog{}
	g := probes.Start(probes.Config{}, col)
	rc := startRecording(Options{Record: log, FlushEvery: 10 * time.Millisecond, StateEvery: 40 * time.Millisecond}, col, g)
	deadline := time.Now().Add(400 * time.Millisecond)
	for i := 0; time.Now().Before(deadline); i++ {
		col.Event(event.Uevent{Time: event.Mono(i), Action: "change", Seqnum: uint64(i)})
		time.Sleep(time.Millisecond)
	}
	rc.stop()
	rc.finish(tl)
	log.mu.Lock()
	defer log.mu.Unlock()
	n := len(log.calls)
	if n < 10 || log.calls[0] != "begin" || log.calls[1] != "state" || log.calls[n-1] != "finish" {
		t.Fatalf("calls %v", log.calls)
	}
	// States go by wall time (every StateEvery), flushes by a ticker that
	// drops ticks on a busy machine: the state at the start and some more,
	// each with a flush (how many more depends on the machine's load).
	if flushes := (n - 3) / 2; log.states < 2 || log.states > flushes+1 {
		t.Errorf("%d states in %d flushes", log.states, flushes)
	}
	for i := 1; i < len(log.events); i++ {
		if log.events[i] < log.events[i-1] {
			t.Errorf("appends saw %v events", log.events)
		}
	}
	if last := log.events[len(log.events)-1]; last == 0 || last > len(tl.Uevents) {
		t.Errorf("the last append saw %d of %d events", last, len(tl.Uevents))
	}
}

// After a call fails, none is made: the run goes on without its recording.
func TestRecordingStopsAtAFailure(t *testing.T) {
	tl := &timeline.Timeline{Start: 1}
	col := newCollector(tl, 0)
	log := &callLog{failAt: 4}
	rc := startRecording(Options{Record: log, FlushEvery: 5 * time.Millisecond}, col, probes.Start(probes.Config{}, col))
	time.Sleep(60 * time.Millisecond)
	rc.stop()
	rc.finish(tl)
	if len(log.calls) != 4 {
		t.Errorf("calls %v, want none after the 4th failed", log.calls)
	}
}
