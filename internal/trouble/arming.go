package trouble

import (
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// Interval is a stretch of time an armed mode would have been armed: from
// the signal that armed it (By) to Hold after the last signal in it, or to
// the end of the run.
type Interval struct {
	From, To event.Mono
	By       Source // the source of the signal that armed it
	Signals  int    // signals seen in it, the first included
}

// Arming is the arm/disarm state machine with hysteresis: the first signal
// arms, and the state disarms once Hold has passed without a signal. It is
// pure logic, and not safe for concurrent use (Watcher locks it).
type Arming struct {
	// Hold is how long the state stays armed after the last signal.
	Hold time.Duration

	intervals []Interval
	last      event.Mono // the last signal of the open interval
	open      bool
}

// Signal records a signal of source at time at. Signals must come in time
// order; one older than the open interval's last signal only counts in it.
func (a *Arming) Signal(src Source, at event.Mono) {
	if a.open && at.Sub(a.last) <= a.Hold {
		if at > a.last {
			a.last = at
		}
		a.intervals[len(a.intervals)-1].Signals++
		return
	}
	if a.open {
		a.intervals[len(a.intervals)-1].To = a.last.Add(a.Hold)
	}
	a.intervals = append(a.intervals, Interval{From: at, By: src, Signals: 1})
	a.last, a.open = at, true
}

// Armed says whether the state is armed at now.
func (a *Arming) Armed(now event.Mono) bool {
	return a.open && now >= a.intervals[len(a.intervals)-1].From && now.Sub(a.last) <= a.Hold
}

// Intervals returns the armed intervals up to end: the open one ends Hold
// after its last signal, or at end if that is sooner.
func (a *Arming) Intervals(end event.Mono) []Interval {
	out := append([]Interval(nil), a.intervals...)
	if a.open {
		to := a.last.Add(a.Hold)
		if to > end {
			to = end
		}
		out[len(out)-1].To = to
	}
	for i := range out {
		if out[i].To > end {
			out[i].To = end
		}
		if out[i].To < out[i].From {
			out[i].To = out[i].From
		}
	}
	return out
}

// Covered says whether any part of [start, end] lies in one of the
// intervals: an armed probe would have seen it, or (started before it
// armed) found it in flight.
func Covered(ivs []Interval, start, end event.Mono) bool {
	for _, iv := range ivs {
		if start <= iv.To && end >= iv.From {
			return true
		}
	}
	return false
}
