package facts

import (
	"cmp"
	"slices"
	"sort"
	"strings"
	"time"
)

// The methods below are what rules call from expr. They are pure, never
// modify their receiver, and work on nil and empty values. Windows below
// zero count as zero.

func msOf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Count is the number of spans.
func (s Spans) Count() int { return len(s) }

// TotalMs is the sum of the span durations in milliseconds; overlapping
// spans count twice.
func (s Spans) TotalMs() float64 {
	var t time.Duration
	for _, sp := range s {
		t = SaturatingAdd(t, max(sp.Duration(), 0))
	}
	return msOf(t)
}

// UnionMs is the time in milliseconds covered by at least one span.
func (s Spans) UnionMs() float64 {
	var t time.Duration
	for _, iv := range union(s, 0) {
		t = SaturatingAdd(t, iv.end-iv.start)
	}
	return msOf(t)
}

// MaxMs is the longest span in milliseconds, 0 when empty.
func (s Spans) MaxMs() float64 {
	var m time.Duration
	for _, sp := range s {
		m = max(m, sp.Duration())
	}
	return msOf(m)
}

type interval struct{ start, end time.Duration }

// union returns the spans widened by w on both sides, merged into disjoint
// intervals in time order.
func union(s Spans, w time.Duration) []interval {
	w = max(w, 0)
	ivs := make([]interval, 0, len(s))
	for _, sp := range s {
		ivs = append(ivs, interval{SaturatingAdd(sp.Start, -w), SaturatingAdd(max(sp.End, sp.Start), w)})
	}
	slices.SortFunc(ivs, func(a, b interval) int { return cmp.Compare(a.start, b.start) })
	var out []interval
	for _, iv := range ivs {
		if n := len(out); n > 0 && iv.start <= out[n-1].end {
			out[n-1].end = max(out[n-1].end, iv.end)
			continue
		}
		out = append(out, iv)
	}
	return out
}

// Overlapping returns the spans of s that overlap at least one span of o
// widened by window on both sides (touching counts).
func (s Spans) Overlapping(o Spans, window time.Duration) Spans {
	u := union(o, window)
	return s.filter(func(sp Span) bool {
		// first interval that ends at or after sp starts; ends increase.
		i := sort.Search(len(u), func(i int) bool { return u[i].end >= sp.Start })
		return i < len(u) && u[i].start <= max(sp.End, sp.Start)
	})
}

// filter returns the spans for which keep is true, in a slice of exactly
// their number (spans are large: growing a slice by appending copies them
// over and over).
func (s Spans) filter(keep func(Span) bool) Spans {
	n := 0
	var first, last int
	for i := range s {
		if keep(s[i]) {
			if n == 0 {
				first = i
			}
			last = i
			n++
		}
	}
	if n == 0 {
		return nil
	}
	out := make(Spans, 0, n)
	for i := first; i <= last; i++ {
		if keep(s[i]) {
			out = append(out, s[i])
		}
	}
	return out
}

// PrecededBy returns the spans of s that start within window after (or at)
// some point of p.
func (s Spans) PrecededBy(p Points, window time.Duration) Spans {
	at := pointTimes(p)
	var out Spans
	for _, sp := range s {
		if precededBy(at, sp.Start, window) {
			out = append(out, sp)
		}
	}
	return out
}

// pointTimes returns the times of the points, sorted.
func pointTimes(p Points) []time.Duration {
	at := make([]time.Duration, len(p))
	for i, pt := range p {
		at[i] = pt.At
	}
	slices.Sort(at)
	return at
}

// precededBy reports whether some time in the sorted list lies in [t-window, t].
func precededBy(sorted []time.Duration, t, window time.Duration) bool {
	i := sort.Search(len(sorted), func(i int) bool { return sorted[i] > t }) // first after t
	return i > 0 && t-sorted[i-1] <= max(window, 0)
}

// followedBy reports whether some time in the sorted list lies in [t, t+window].
func followedBy(sorted []time.Duration, t, window time.Duration) bool {
	i := sort.Search(len(sorted), func(i int) bool { return sorted[i] >= t })
	return i < len(sorted) && sorted[i]-t <= max(window, 0)
}

// ByComm returns the spans of tasks with any of the given comms.
func (s Spans) ByComm(comms ...string) Spans {
	var out Spans
	for _, sp := range s {
		if slices.Contains(comms, sp.Comm) {
			out = append(out, sp)
		}
	}
	return out
}

// WokenBy returns the spans woken by a task with any of the given comms.
func (s Spans) WokenBy(comms ...string) Spans {
	var out Spans
	for _, sp := range s {
		if sp.Waker.Pid != 0 && slices.Contains(comms, sp.Waker.Comm) {
			out = append(out, sp)
		}
	}
	return out
}

// Kind returns the spans of one kind (KindQueueEnter, ...).
func (s Spans) Kind(k string) Spans {
	var out Spans
	for _, sp := range s {
		if sp.Kind == k {
			out = append(out, sp)
		}
	}
	return out
}

// Plus returns the spans of s and o together, in time order.
func (s Spans) Plus(o Spans) Spans {
	out := make(Spans, 0, len(s)+len(o))
	out = append(append(out, s...), o...)
	sortSpans(out)
	return out
}

// Comms returns the distinct comms of the spans, sorted.
func (s Spans) Comms() []string {
	var out []string
	for _, sp := range s {
		out = append(out, sp.Comm)
	}
	return distinctSorted(out)
}

// Attrs returns the distinct sysfs attributes of the spans (freezes), sorted.
func (s Spans) Attrs() []string {
	var out []string
	for _, sp := range s {
		if sp.Attr != "" {
			out = append(out, sp.Attr)
		}
	}
	return distinctSorted(out)
}

// Sources returns the distinct ways the spans were measured (Span.Source),
// direct measurements first, then sorted: what a finding's precision rests on.
func (s Spans) Sources() []string {
	var out []string
	for _, sp := range s {
		if sp.Source != "" {
			out = append(out, sp.Source)
		}
	}
	out = distinctSorted(out)
	slices.SortStableFunc(out, func(a, b string) int {
		return cmp.Compare(sourceRank(a), sourceRank(b))
	})
	return out
}

// sourceRank orders sources from the most to the least precise.
func sourceRank(s string) int {
	switch {
	case strings.HasPrefix(s, "direct:"):
		return 0
	case strings.HasPrefix(s, "tracepoints:"):
		return 1
	}
	return 2
}

// Devices returns the distinct devices of the spans, sorted.
func (s Spans) Devices() []string {
	var out []string
	for _, sp := range s {
		if sp.Device != "" {
			out = append(out, sp.Device)
		}
	}
	return distinctSorted(out)
}

// Tasks returns the distinct tasks (by thread id) of the spans, in the order
// they were first seen.
func (s Spans) Tasks() Tasks {
	var out Tasks
	for _, sp := range s {
		out = out.add(Task{Pid: sp.Pid, Tgid: sp.Tgid, Comm: sp.Comm})
	}
	return out
}

// Wakers returns the distinct tasks that woke the spans, in the order they
// were first seen; spans whose wake-up was not seen have none.
func (s Spans) Wakers() Tasks {
	var out Tasks
	for _, sp := range s {
		if sp.Waker.Pid != 0 {
			out = out.add(Task{Pid: sp.Waker.Pid, Tgid: sp.Waker.Tgid, Comm: sp.Waker.Comm})
		}
	}
	return out
}

func distinctSorted(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

// add appends t unless a task with its pid and role is already there.
func (t Tasks) add(n Task) Tasks {
	for _, o := range t {
		if o.Pid == n.Pid && o.Role == n.Role {
			return t
		}
	}
	return append(t, n)
}

// Count is the number of tasks.
func (t Tasks) Count() int { return len(t) }

// As returns the tasks with their Role set to role.
func (t Tasks) As(role string) Tasks {
	out := make(Tasks, len(t))
	for i, x := range t {
		x.Role = role
		out[i] = x
	}
	return out
}

// Comms returns the distinct comms of the tasks, sorted.
func (t Tasks) Comms() []string {
	var out []string
	for _, x := range t {
		out = append(out, x.Comm)
	}
	return distinctSorted(out)
}

// Count is the number of points.
func (p Points) Count() int { return len(p) }

// What returns the points whose What is w (an attribute, filename or action).
func (p Points) What(w string) Points {
	var out Points
	for _, pt := range p {
		if pt.What == w {
			out = append(out, pt)
		}
	}
	return out
}

// Action returns the uevents with action a ("change", "add", ...); the same
// as What.
func (p Points) Action(a string) Points { return p.What(a) }

// ByComm returns the points of tasks with any of the given comms.
func (p Points) ByComm(comms ...string) Points {
	var out Points
	for _, pt := range p {
		if slices.Contains(comms, pt.Comm) {
			out = append(out, pt)
		}
	}
	return out
}

// Whats returns the distinct Whats of the points (attributes, actions), sorted.
func (p Points) Whats() []string {
	var out []string
	for _, pt := range p {
		out = append(out, pt.What)
	}
	return distinctSorted(out)
}

// Comms returns the distinct comms of the points, sorted; points without a
// task (uevents) have none.
func (p Points) Comms() []string {
	var out []string
	for _, pt := range p {
		if pt.Comm != "" {
			out = append(out, pt.Comm)
		}
	}
	return distinctSorted(out)
}

// Tasks returns the distinct tasks of the points, in the order first seen.
func (p Points) Tasks() Tasks {
	var out Tasks
	for _, pt := range p {
		if pt.Pid != 0 {
			out = out.add(Task{Pid: pt.Pid, Comm: pt.Comm})
		}
	}
	return out
}

// Preceding returns the points followed within window by the start of some
// span of s.
func (p Points) Preceding(s Spans, window time.Duration) Points {
	starts := make([]time.Duration, len(s))
	for i, sp := range s {
		starts[i] = sp.Start
	}
	slices.Sort(starts)
	var out Points
	for _, pt := range p {
		if followedBy(starts, pt.At, window) {
			out = append(out, pt)
		}
	}
	return out
}

// PrecededBy returns the points that come within window after (or at) some
// point of o.
func (p Points) PrecededBy(o Points, window time.Duration) Points {
	at := pointTimes(o)
	var out Points
	for _, pt := range p {
		if precededBy(at, pt.At, window) {
			out = append(out, pt)
		}
	}
	return out
}

// Bursts is the number of clusters of points, a point closer than or equal
// to gap to the previous one belonging to its cluster.
func (p Points) Bursts(gap time.Duration) int {
	at := pointTimes(p)
	n := 0
	for i, t := range at {
		if i == 0 || t-at[i-1] > gap {
			n++
		}
	}
	return n
}

// RatePerSec is the number of points per second over d, 0 when d <= 0.
func (p Points) RatePerSec(d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(len(p)) / d.Seconds()
}

// FollowedBy is the fraction (0..1) of the command's execs followed within
// window by at least one point of p; 0 for a nil command or no execs.
func (c *Command) FollowedBy(p Points, window time.Duration) float64 {
	if c == nil || len(c.Execs) == 0 {
		return 0
	}
	at := pointTimes(p)
	n := 0
	for _, e := range c.Execs {
		if followedBy(at, e.At, window) {
			n++
		}
	}
	return float64(n) / float64(len(c.Execs))
}

// EffectWindow is how long after an exec to look for its effects: half the
// period, so that the next run's effects do not count, capped at limit;
// limit when the command has no period.
func (c *Command) EffectWindow(limit time.Duration) time.Duration {
	if c == nil || c.Period <= 0 {
		return limit
	}
	return min(limit, c.Period/2)
}

// Line is the command line of the first exec: the filename, or args when known.
func (c *Command) Line() string {
	if c == nil {
		return ""
	}
	if len(c.Args) > 0 {
		return strings.Join(c.Args, " ")
	}
	return c.Filename
}

// Find returns the device of a name, or nil.
func (r *Run) Find(name string) *Device {
	if r == nil {
		return nil
	}
	for _, d := range r.Devices {
		if d != nil && d.Name == name {
			return d
		}
	}
	return nil
}

// IOs is the number of requests the devices completed (service histograms).
func (r *Run) IOs() uint64 {
	var n uint64
	if r == nil {
		return 0
	}
	for _, d := range r.Devices {
		if d != nil {
			n += d.Service.Count
		}
	}
	return n
}

// Worst returns the device with the highest service p99 (ties: the first by
// name), or nil when there is none.
func (r *Run) Worst() *Device {
	if r == nil {
		return nil
	}
	var w *Device
	for _, d := range r.Devices {
		if d != nil && (w == nil || d.Service.P99Us > w.Service.P99Us) {
			w = d
		}
	}
	return w
}

// In returns the tasks that belong to a process of o (same thread or same
// process id). It keeps, of the tasks that woke queue-enter waiters, the
// ones that also froze the queue or wrote its attributes: a wake-up from
// an interrupt names whatever task it interrupted, which is no cause.
func (t Tasks) In(o Tasks) Tasks {
	var out Tasks
	for _, x := range t {
		for _, y := range o {
			if x.Pid == y.Pid || (x.Tgid != 0 && (x.Tgid == y.Tgid || x.Tgid == y.Pid)) {
				out = append(out, x)
				break
			}
		}
	}
	return out
}

// Plus returns the tasks of t and then those of o not already in t.
func (t Tasks) Plus(o Tasks) Tasks {
	out := slices.Clone(t)
	for _, x := range o {
		out = out.add(x)
	}
	return out
}
