package trouble

import (
	"fmt"
	"sync"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// Armed modes: what a run did with the programs on the hot hooks
// (sys_enter, sys_exit, sched_switch, sched_waking).
const (
	// ModeAuto starts disarmed, arms on the first trouble signal and
	// disarms after Hold without one (--armed-mode=auto, experimental).
	ModeAuto = "auto"
	// ModeTestDisarmed disarms before the run is ready and never arms
	// (--armed-mode=test-disarmed, for measurements).
	ModeTestDisarmed = "test-disarmed"
)

// Switch is what an armed mode gates: probes.Group's Arm and Disarm.
type Switch interface {
	Arm() error
	Disarm() error
}

// Span is a stretch of a run the hot-hook programs were attached: From
// once Arm had returned, To as Disarm was called (or the end of the run).
type Span struct {
	From, To event.Mono
	// By is the source of the signal that armed it (empty for a run
	// that was never disarmed to begin with).
	By Source `json:",omitempty"`
}

// Coverage says what an armed mode took off the hot hooks of a run, and
// when they were on. It is nil for a run in the default mode, where
// every program stays attached all the time.
type Coverage struct {
	Mode       string
	Start, End event.Mono
	// Armed are the spans the hot-hook programs were attached, in time
	// order; the rest of [Start, End] they were not.
	Armed []Span
	// Gated are the running probes whose programs on the hot hooks were
	// taken off while disarmed; Probes every running probe.
	Gated, Probes []string
	// Errors are the arming and disarming that failed (the state stayed
	// as it was), the first few.
	Errors []string `json:",omitempty"`
}

// ArmedTime is the time the hot-hook programs were attached.
func (c *Coverage) ArmedTime() time.Duration {
	var d time.Duration
	for _, s := range c.Armed {
		d += s.To.Sub(s.From)
	}
	return d
}

// DisarmedTime is the rest of the run.
func (c *Coverage) DisarmedTime() time.Duration {
	return max(c.End.Sub(c.Start)-c.ArmedTime(), 0)
}

// Within is the coverage of [start, end] alone: its spans clipped to it
// (a window of serve).
func (c *Coverage) Within(start, end event.Mono) *Coverage {
	if c == nil {
		return nil
	}
	out := *c
	out.Start, out.End = start, end
	out.Armed = nil
	for _, s := range c.Armed {
		if s.To < start || s.From > end {
			continue
		}
		s.From, s.To = max(s.From, start), min(s.To, end)
		out.Armed = append(out.Armed, s)
	}
	return &out
}

// maxErrors is how many failures a Coverage keeps.
const maxErrors = 5

// Auto is armed mode auto: it arms a Switch on the first signal of its
// Watcher and disarms it once the watcher's state has been disarmed (Hold
// without a signal), from a goroutine of its own, so that a signal (which
// may come from a probe's reader) never waits for an arming. Its methods
// are safe for concurrent use.
type Auto struct {
	w    *Watcher
	sw   Switch
	log  func(string)
	kick chan struct{}
	quit chan struct{}
	done chan struct{}

	mu    sync.Mutex
	cov   Coverage
	armed bool
	open  Span // the span being armed, when armed
	fails int
	// started says Run was called (Stop then waits for its goroutine).
	started bool
}

// NewAuto returns a controller; log, when set, is told of every change
// and failure. Wire a Watcher's Config.OnSignal to its Signal, then call
// Run once the switch is disarmed.
func NewAuto(log func(string)) *Auto {
	return &Auto{log: log, kick: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{}),
		cov: Coverage{Mode: ModeAuto}}
}

// Signal wakes the controller; it never blocks. A signal before Run
// is looked at as Run starts.
func (a *Auto) Signal(Signal) {
	select {
	case a.kick <- struct{}{}:
	default: // one is pending
	}
}

// Run starts the controller's goroutine: it arms sw (disarmed now) while
// w's state is armed, for a run that began at start with the running
// probes, those of them gated by sw. Call it once.
func (a *Auto) Run(w *Watcher, sw Switch, start event.Mono, probes, gated []string) {
	a.mu.Lock()
	a.w, a.sw, a.started = w, sw, true
	a.cov.Start, a.cov.Probes, a.cov.Gated = start, probes, gated
	a.mu.Unlock()
	go a.loop()
}

func (a *Auto) loop() {
	defer close(a.done)
	var timer *time.Timer
	var timerC <-chan time.Time
	for {
		select {
		case <-a.quit:
			if timer != nil {
				timer.Stop()
			}
			return
		case <-a.kick:
		case <-timerC:
		}
		now, err := event.Now()
		if err != nil {
			continue
		}
		want, until, by := a.w.State(now)
		a.mu.Lock()
		armed := a.armed
		a.mu.Unlock()
		switch {
		case want && !armed:
			a.set(true, by)
		case !want && armed:
			a.set(false, "")
		}
		// While armed, look again when the hold runs out (a later signal
		// moves it on; the next look finds that).
		if timer != nil {
			timer.Stop()
			timerC = nil
		}
		a.mu.Lock()
		armed = a.armed
		a.mu.Unlock()
		if armed {
			wait := until.Sub(now) + 10*time.Millisecond
			if !want || wait < 10*time.Millisecond {
				wait = 10 * time.Millisecond
			}
			if wait > time.Second && !want {
				wait = time.Second
			}
			timer = time.NewTimer(wait)
			timerC = timer.C
		}
	}
}

// set arms or disarms the switch and notes the span.
func (a *Auto) set(on bool, by Source) {
	var err error
	if on {
		t0 := time.Now()
		err = a.sw.Arm()
		now, cerr := event.Now()
		if err == nil && cerr == nil {
			a.mu.Lock()
			a.armed, a.open = true, Span{From: now, By: by}
			a.mu.Unlock()
			a.say(fmt.Sprintf("armed by %s in %v", by, time.Since(t0).Round(100*time.Microsecond)))
		}
	} else {
		now, cerr := event.Now()
		if cerr != nil {
			return
		}
		err = a.sw.Disarm()
		a.mu.Lock()
		// The programs are off from the call on, whether or not all of
		// them could be: a failure is in Errors.
		a.armed = false
		a.open.To = now
		a.cov.Armed = append(a.cov.Armed, a.open)
		a.mu.Unlock()
		if err == nil {
			a.say("disarmed: no trouble signal for the hold")
		}
	}
	if err != nil {
		a.mu.Lock()
		if len(a.cov.Errors) < maxErrors {
			a.cov.Errors = append(a.cov.Errors, err.Error())
		}
		a.fails++
		a.mu.Unlock()
		a.say(err.Error())
	}
}

func (a *Auto) say(s string) {
	if a.log != nil {
		a.log("armed mode auto: " + s)
	}
}

// Armed says whether the hot-hook programs are attached now.
func (a *Auto) Armed() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.armed
}

// Stats are an armed mode's state at a time: whether the hot-hook
// programs are attached, how long they were in all, and how many times
// they were attached (each arming; none for a run never disarmed).
type Stats struct {
	Armed     bool
	ArmedTime time.Duration
	Armings   int
}

// Stats is the state at now (an open span counts up to now).
func (a *Auto) Stats(now event.Mono) Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := Stats{Armed: a.armed, Armings: len(a.cov.Armed)}
	for _, s := range a.cov.Armed {
		st.ArmedTime += s.To.Sub(s.From)
	}
	if a.armed {
		st.Armings++
		st.ArmedTime += max(now.Sub(a.open.From), 0)
	}
	return st
}

// Coverage is the coverage so far, up to now (an open span ends at now).
func (a *Auto) Coverage(now event.Mono) *Coverage {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.cov
	c.Armed = append([]Span(nil), a.cov.Armed...)
	c.Errors = append([]string(nil), a.cov.Errors...)
	if a.armed {
		s := a.open
		s.To = now
		c.Armed = append(c.Armed, s)
	}
	c.End = now
	return &c
}

// Stop ends the controller's goroutine, waiting for an arming or
// disarming under way (a controller never Run has none); the switch
// stays as it is (the caller stops the probes). It returns the coverage
// up to end. Only the first call stops.
func (a *Auto) Stop(end event.Mono) *Coverage {
	a.mu.Lock()
	select {
	case <-a.quit:
	default:
		close(a.quit)
	}
	started := a.started
	a.mu.Unlock()
	if started {
		<-a.done
	}
	return a.Coverage(end)
}
