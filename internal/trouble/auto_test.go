package trouble

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// fakeSwitch counts the armings and disarmings it is asked for (armed mode
// auto's logic alone; the real switch, probes.Group, is tested on the
// kernel: probes' TestArmedMode, cmd/whyslow's TestArmedAuto*).
type fakeSwitch struct {
	mu            sync.Mutex
	armed         bool
	arms, disarms int
	failArm       error
}

func (f *fakeSwitch) Arm() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failArm != nil {
		return f.failArm
	}
	f.arms++
	f.armed = true
	return nil
}

func (f *fakeSwitch) Disarm() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.disarms++
	f.armed = false
	return nil
}

func (f *fakeSwitch) state() (armed bool, arms, disarms int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.armed, f.arms, f.disarms
}

// waitFor polls cond for up to 10 s (a bound on a hung controller, not
// a measure of its speed).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("not %s after 10 s", what)
}

func slow(dev string) event.Event {
	return event.ThrottleWait{Dev: event.Device{Name: dev}, Duration: 5 * time.Millisecond}
}

// A signal arms, the hold without one disarms, a later signal arms again;
// the coverage has both spans, by the source that armed them, and the
// disarmed rest.
func TestAutoArmsAndDisarms(t *testing.T) {
	sw := &fakeSwitch{}
	auto := NewAuto(nil)
	w := New(Config{Hold: 50 * time.Millisecond, BusyEvery: -1, OnSignal: auto.Signal})
	start, _ := event.Now()
	auto.Run(w, sw, start, []string{"submit", "syscall"}, []string{"syscall"})
	if armed, _, _ := sw.state(); armed {
		t.Fatal("armed before any signal")
	}
	for round := 1; round <= 2; round++ {
		w.Observe(slow("loop0"))
		waitFor(t, "armed by the signal", func() bool { a, _, _ := sw.state(); return a })
		if !auto.Armed() {
			t.Error("the switch is armed, the controller says it is not")
		}
		waitFor(t, "disarmed after the hold", func() bool { a, _, _ := sw.state(); return !a })
		if _, arms, disarms := sw.state(); arms != round || disarms != round {
			t.Errorf("round %d: %d armings, %d disarmings", round, arms, disarms)
		}
	}
	end, _ := event.Now()
	c := auto.Stop(end)
	if len(c.Armed) != 2 || c.Armed[0].By != ThrottleWait || c.Mode != ModeAuto {
		t.Fatalf("coverage %+v: want 2 spans armed by throttle_wait", c)
	}
	if c.ArmedTime() <= 0 || c.DisarmedTime() <= 0 || c.ArmedTime()+c.DisarmedTime() != end.Sub(start) {
		t.Errorf("armed %v + disarmed %v, want the run's %v", c.ArmedTime(), c.DisarmedTime(), end.Sub(start))
	}
	if len(c.Gated) != 1 || c.Gated[0] != "syscall" || len(c.Probes) != 2 {
		t.Errorf("probes %v gated %v", c.Probes, c.Gated)
	}
}

// A run scoped to one disk is not armed by the slow bios or faults of
// another; they are counted out of scope, with their disk. An event of
// no known disk still arms (it cannot be told apart).
func TestScopedSignals(t *testing.T) {
	w := New(Config{Hold: time.Hour, BusyEvery: -1, Devices: []string{"sdb"}})
	w.Observe(slow("sda"))
	w.Observe(event.SlowSubmit{Dev: event.Device{Name: "sda"}, Latency: 5 * time.Millisecond})
	w.Observe(event.DeviceFault{Dev: event.Device{Name: "sda"}, Kind: event.FaultError})
	now, _ := event.Now()
	if armed, _, _ := w.State(now); armed {
		t.Fatal("armed by another disk's signals")
	}
	w.Observe(event.QueueEnter{Dev: event.Device{Name: ""}, Duration: 5 * time.Millisecond})
	now, _ = event.Now()
	if armed, _, by := w.State(now); !armed || by != QueueEnter {
		t.Fatalf("an event of no known disk: armed %v by %q, want armed by queue_enter", armed, by)
	}
	s := w.Stop(now)
	if s.OutOfScope[ThrottleWait] != 1 || s.OutOfScope[SlowSubmit] != 1 || s.OutOfScope[DeviceFault] != 1 {
		t.Errorf("out of scope %v, want one of each", s.OutOfScope)
	}
	if len(s.OutOfScopeDisks) != 1 || s.OutOfScopeDisks[0] != "sda" || len(s.Devices) != 1 {
		t.Errorf("out of scope disks %v, scope %v", s.OutOfScopeDisks, s.Devices)
	}
	w2 := New(Config{Hold: time.Hour, BusyEvery: -1, Devices: []string{"sdb"}})
	w2.Observe(slow("sdb"))
	now, _ = event.Now()
	if armed, _, _ := w2.State(now); !armed {
		t.Error("not armed by a signal of the disk in scope")
	}
	w2.Stop(now)
}

// A failed arming leaves the switch disarmed and is in the coverage's
// errors; the stop with the switch armed closes its span at the end.
func TestAutoArmFailsAndStopsArmed(t *testing.T) {
	sw := &fakeSwitch{failArm: errors.New("arming the probes: syscall: no")}
	var logged []string
	var mu sync.Mutex
	auto := NewAuto(func(s string) { mu.Lock(); logged = append(logged, s); mu.Unlock() })
	w := New(Config{Hold: time.Hour, BusyEvery: -1, OnSignal: auto.Signal})
	start, _ := event.Now()
	auto.Run(w, sw, start, []string{"syscall"}, []string{"syscall"})
	w.Observe(slow("loop0"))
	waitFor(t, "the failure noted", func() bool { now, _ := event.Now(); return len(auto.Coverage(now).Errors) == 1 })
	if auto.Armed() {
		t.Error("armed although the arming failed")
	}
	sw.mu.Lock()
	sw.failArm = nil
	sw.mu.Unlock()
	w.Observe(slow("loop0"))
	waitFor(t, "armed by the next signal", func() bool { a, _, _ := sw.state(); return a })
	end, _ := event.Now()
	c := auto.Stop(end)
	auto.Stop(end) // a second stop does nothing
	if len(c.Armed) != 1 || c.Armed[0].To != end {
		t.Errorf("stopped armed: spans %+v, want one to the end %d", c.Armed, end)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(logged) < 2 {
		t.Errorf("log %q: want the failure and the arming", logged)
	}
}

// Within clips the spans to a window of serve.
func TestCoverageWithin(t *testing.T) {
	c := &Coverage{Mode: ModeAuto, Start: 0, End: 100, Armed: []Span{{From: 10, To: 20, By: PSIIO}, {From: 40, To: 70, By: DiskBusy}}}
	for _, tc := range []struct {
		from, to event.Mono
		armed    time.Duration
		spans    int
	}{
		{0, 100, 40, 2},
		{15, 50, 15, 2},
		{21, 39, 0, 0},
		{60, 100, 10, 1},
	} {
		w := c.Within(tc.from, tc.to)
		if w.ArmedTime() != tc.armed || len(w.Armed) != tc.spans || w.DisarmedTime() != tc.to.Sub(tc.from)-tc.armed {
			t.Errorf("Within(%d, %d): %+v, armed %v, want %v in %d spans", tc.from, tc.to, w.Armed, w.ArmedTime(), tc.armed, tc.spans)
		}
	}
	var none *Coverage
	if none.Within(0, 1) != nil {
		t.Error("no coverage (the default mode) within a window is not nil")
	}
}

// A controller stopped without having run (its run failed before)
// returns at once.
func TestAutoStopWithoutRun(t *testing.T) {
	auto := NewAuto(nil)
	auto.Signal(Signal{})
	if c := auto.Stop(5); c.End != 5 || len(c.Armed) != 0 {
		t.Errorf("coverage %+v", c)
	}
}
