package facts

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// KindTimeout is a request that timed out: from its start to when the
// driver's timeout handling gave it back (probe devfault).
const KindTimeout = "timeout"

// Sources of the fault facts.
const (
	SourceRequeueDeadline  = "tracepoints: block_rq_requeue after the request's deadline"
	SourceCompleteDeadline = "tracepoints: block_rq_complete with an error after the request's deadline"
)

// failureStatuses are the errors that say the device (or its path) failed
// the request; "no space" is a thin-provisioned device (a thin pool, a
// loop device's file, a thin LUN) whose backing store is full. The others
// answer the request without the device failing: not supported,
// reservation conflict, out of resources, try again (non-blocking I/O),
// device busy.
var failureStatuses = map[string]bool{
	"timeout": true, "transport error": true, "target error": true, "medium error": true,
	"protection error": true, "I/O error": true, "device offline": true, "no space": true,
}

// failure reports whether an error of this status is the device failing;
// an errno or status whyslow does not know counts as one.
func failure(status string) bool {
	if failureStatuses[status] {
		return true
	}
	for _, s := range []string{"not supported", "reservation conflict", "out of resources", "try again", "device busy"} {
		if status == s {
			return false
		}
	}
	return true
}

// faults builds each device's Errors, Timeouts, Requeues, IOTimeout,
// SCSITimeouts and Recoveries
// from the devfault probe's events.
func (b *builder) faults() {
	for _, f := range b.tl.DeviceFaults {
		name := b.name(f.Dev)
		d := b.deviceOf(name, f.Dev)
		if f.Timeout > 0 {
			d.IOTimeout = f.Timeout
		}
		at := b.rel(f.Time)
		timeout := func(source string) {
			start := at
			if f.InFlight > 0 && f.InFlight < at {
				start = at - f.InFlight
			}
			d.Timeouts = append(d.Timeouts, Span{Start: start, End: at, Kind: KindTimeout, Device: name,
				Attr: f.Op, Source: source})
		}
		switch f.Kind {
		case event.FaultSCSITimeout:
			d.SCSITimeouts = append(d.SCSITimeouts, f.Op)
		case event.FaultErrorHandler:
			d.Recoveries++
		case event.FaultTimeout:
			timeout(SourceRequeueDeadline)
		case event.FaultError:
			if !failure(f.Status) {
				continue
			}
			d.Errors = append(d.Errors, Point{At: at, Device: name, What: f.Status})
			if f.TimedOut {
				timeout(SourceCompleteDeadline)
			}
		}
	}
	for _, q := range b.tl.Requeues {
		d := b.deviceOf(b.name(q.Dev), q.Dev)
		d.Requeues += q.Count
	}
	for _, d := range b.byName {
		sortPoints(d.Errors)
	}
}

func sortPoints(ps Points) {
	slices.SortStableFunc(ps, func(a, c Point) int { return cmp.Compare(a.At, c.At) })
}

// ErrorKinds counts the device's failed requests by error, the most first:
// "12 medium error".
func (d *Device) ErrorKinds() []string {
	if d == nil || len(d.Errors) == 0 {
		return []string{}
	}
	n := map[string]int{}
	for _, e := range d.Errors {
		n[e.What]++
	}
	kinds := make([]string, 0, len(n))
	for k := range n {
		kinds = append(kinds, k)
	}
	slices.SortFunc(kinds, func(a, c string) int {
		if x := cmp.Compare(n[c], n[a]); x != 0 {
			return x
		}
		return cmp.Compare(a, c)
	})
	out := make([]string, len(kinds))
	for i, k := range kinds {
		out[i] = fmt.Sprintf("%d %s", n[k], k)
	}
	return out
}

// FaultVictims are the processes whose storage calls to the device the
// failures hit: those with a slow call (above --min-latency) overlapping
// a timeout, or around a failed request (within window), the most time
// first; when no slow call met a failure, every process that made calls
// to the device. None when the device had no failure.
func (d *Device) FaultVictims(window time.Duration) []*Process {
	if d == nil || len(d.Errors) == 0 && len(d.Timeouts) == 0 {
		return []*Process{}
	}
	var hit []*Process
	for _, p := range d.Processes {
		if p.Slow.Overlapping(d.Timeouts, window).Count() > 0 || errorInside(d.Errors, p.Slow, window) {
			hit = append(hit, p)
		}
	}
	if len(hit) == 0 {
		hit = append(hit, d.Processes...)
	}
	if hit == nil {
		return []*Process{}
	}
	return hit
}

// errorInside reports whether a point of errs falls inside a span of
// calls widened by window.
func errorInside(errs Points, calls Spans, window time.Duration) bool {
	for _, c := range calls {
		i, _ := slices.BinarySearchFunc(errs, c.Start-window, func(p Point, t time.Duration) int { return cmp.Compare(p.At, t) })
		if i < len(errs) && errs[i].At <= c.End+window {
			return true
		}
	}
	return false
}

// Task is the process as a task with a role, for a rule's processes:
// map(Device.FaultVictims(Run.Window), .Task("victim")).
func (p *Process) Task(role string) Task {
	if p == nil {
		return Task{}
	}
	return Task{Pid: p.Pid, Tgid: p.Pid, Comm: p.Comm, Role: role}
}
