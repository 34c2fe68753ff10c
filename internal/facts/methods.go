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
//
// Spans and Points are in time order (spans by start, then end and pid;
// points by At, and by At-Late), as Build makes them and every method
// keeps them; a rule cannot make a list out of order. The methods rely on
// it: they search the lists rather than scan them, so that rules evaluated
// once per command on a device's whole lists stay fast on a run with
// thousands of commands. On lists out of order (only Go code can make
// them) their results are undefined.
//
// A point may be late (Point.Late: a uevent is timed when whyslow reads it,
// up to Late after it happened). A relation in which the late point comes
// first, the possible cause, counts from its earliest time: what followed
// it may start from At-Late to At plus the window (udev can freeze a queue
// on a uevent before whyslow has read it). One in which it comes second
// (uevents after a command's runs: the receiver of Points.PrecededBy and
// CountPrecededBy, PrecededByAfter's p after o, FollowedBy's p) takes its
// recorded time: those windows (Command.EffectWindow) are sized against
// the next run, whose points a wider window would let in.

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

// Extent is the time from the first span's start to the last end of any
// span, 0 when empty.
func (s Spans) Extent() time.Duration {
	if len(s) == 0 {
		return 0
	}
	start, end := s[0].Start, s[0].End
	for _, sp := range s {
		start, end = min(start, sp.Start), max(end, sp.End)
	}
	return max(end-start, 0)
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
	// Spans in time order give intervals in start order, but for the
	// starts that saturated.
	if !slices.IsSortedFunc(ivs, func(a, b interval) int { return cmp.Compare(a.start, b.start) }) {
		slices.SortFunc(ivs, func(a, b interval) int { return cmp.Compare(a.start, b.start) })
	}
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
	var rs [][2]int // ranges of s to keep
	n, j := 0, 0
	for i := range s {
		// the intervals that end before this span starts end before
		// every later one starts: skip them for good
		for j < len(u) && u[j].end < s[i].Start {
			j++
		}
		if j == len(u) {
			break
		}
		if u[j].start > max(s[i].End, s[i].Start) {
			continue
		}
		if k := len(rs); k > 0 && rs[k-1][1] == i {
			rs[k-1][1]++
		} else {
			rs = append(rs, [2]int{i, i + 1})
		}
		n++
	}
	return s.pick(rs, n)
}

// pick returns the spans of the index ranges, n in all: the ranges of s
// itself when there is one, else a copy (spans are large: the copy is
// made at its size at once).
func (s Spans) pick(rs [][2]int, n int) Spans {
	switch {
	case n == 0:
		return nil
	case len(rs) == 1:
		return s[rs[0][0]:rs[0][1]:rs[0][1]]
	}
	out := make(Spans, 0, n)
	for _, r := range rs {
		out = append(out, s[r[0]:r[1]]...)
	}
	return out
}

// PrecededBy returns the spans of s that start within window after (or at)
// some point of p: in [q.At-q.Late, q.At+window] for a point q.
func (s Spans) PrecededBy(p Points, window time.Duration) Spans {
	return s.starting(after(p, 0, len(p), window, nil))
}

// PrecededByAfter is s.PrecededBy(p.PrecededBy(o, within), window): the
// spans of s that start within window after (or at) a point of p (from its
// earliest time, At-Late) that itself came within `within` after (or at) a
// point of o (by p's recorded time), without making
// the list in between. A rule evaluated per command asks it about a
// device's whole list of uevents, p, and the command's execs, o: it costs
// in proportion to o, not p.
func (s Spans) PrecededByAfter(p Points, window time.Duration, o Points, within time.Duration) Spans {
	var ivs []interval
	for _, r := range p.ranges(o, within) {
		ivs = after(p, r[0], r[1], window, ivs)
	}
	return s.starting(ivs)
}

// starting returns the spans of s that start in one of the intervals,
// which are disjoint and in time order.
func (s Spans) starting(ivs []interval) Spans {
	var rs [][2]int
	n := 0
	for _, iv := range ivs {
		lo := sort.Search(len(s), func(i int) bool { return s[i].Start >= iv.start })
		hi := sort.Search(len(s), func(i int) bool { return s[i].Start > iv.end })
		if lo < hi {
			rs = append(rs, [2]int{lo, hi})
			n += hi - lo
		}
	}
	return s.pick(rs, n)
}

// earliest is the earliest time a point may have happened at.
func (q Point) earliest() time.Duration { return SaturatingAdd(q.At, -max(q.Late, 0)) }

// after returns, appended to ivs, the time covered by [q.At-q.Late,
// q.At+window] for the points q of p[from:to], as disjoint intervals in
// time order (merged with the last of ivs when they touch). It costs one
// binary search per interval, not per point, when the points are dense:
// in time order, both ends of the points' intervals are in order.
func after(p Points, from, to int, window time.Duration, ivs []interval) []interval {
	window = max(window, 0)
	for k := from; k < to; {
		iv := interval{p[k].earliest(), SaturatingAdd(p[k].At, window)}
		for {
			// the last point starting up to the end so far extends the interval
			m := k + sort.Search(to-k, func(i int) bool { return p[k+i].earliest() > iv.end }) - 1
			end := SaturatingAdd(p[m].At, window)
			k = m + 1
			if end <= iv.end || k == to {
				iv.end = max(iv.end, end)
				break
			}
			iv.end = end
		}
		if n := len(ivs); n > 0 && iv.start <= ivs[n-1].end {
			ivs[n-1].end = max(ivs[n-1].end, iv.end)
			continue
		}
		ivs = append(ivs, iv)
	}
	return ivs
}

// ranges returns the index ranges [from, to) of the points of p that come
// within window after (or at) some point of o (from o's earliest times; p
// by its recorded times), in order and disjoint.
func (p Points) ranges(o Points, window time.Duration) [][2]int {
	var out [][2]int
	for _, iv := range after(o, 0, len(o), window, nil) {
		lo := sort.Search(len(p), func(i int) bool { return p[i].At >= iv.start })
		hi := sort.Search(len(p), func(i int) bool { return p[i].At > iv.end })
		if lo >= hi {
			continue
		}
		if n := len(out); n > 0 && out[n-1][1] >= lo { // cannot overlap; may touch
			out[n-1][1] = hi
			continue
		}
		out = append(out, [2]int{lo, hi})
	}
	return out
}

// followedBy reports whether some point of p lies in [q.At-q.Late,
// q.At+window].
func followedBy(p Points, q Point, window time.Duration) bool {
	from := q.earliest()
	i := sort.Search(len(p), func(i int) bool { return p[i].At >= from })
	return i < len(p) && p[i].At <= SaturatingAdd(q.At, max(window, 0))
}

// ByComm returns the spans of tasks with any of the given comms.
func (s Spans) ByComm(comms ...string) Spans {
	return s.where(func(sp *Span) bool { return slices.Contains(comms, sp.Comm) })
}

// WokenBy returns the spans woken by a task with any of the given comms.
func (s Spans) WokenBy(comms ...string) Spans {
	return s.where(func(sp *Span) bool { return sp.Waker.Pid != 0 && slices.Contains(comms, sp.Waker.Comm) })
}

// Kind returns the spans of one kind (KindQueueEnter, ...).
func (s Spans) Kind(k string) Spans {
	return s.where(func(sp *Span) bool { return sp.Kind == k })
}

// where returns the spans for which keep is true.
func (s Spans) where(keep func(*Span) bool) Spans {
	var rs [][2]int
	n := 0
	for i := range s {
		if !keep(&s[i]) {
			continue
		}
		if k := len(rs); k > 0 && rs[k-1][1] == i {
			rs[k-1][1]++
		} else {
			rs = append(rs, [2]int{i, i + 1})
		}
		n++
	}
	return s.pick(rs, n)
}

// Plus returns the spans of s and o together, in time order.
func (s Spans) Plus(o Spans) Spans {
	switch {
	case len(o) == 0 && len(s) > 0:
		return s[:len(s):len(s)]
	case len(s) == 0 && len(o) > 0:
		return o[:len(o):len(o)]
	}
	out := make(Spans, 0, len(s)+len(o))
	if !slices.IsSortedFunc(s, compareSpans) || !slices.IsSortedFunc(o, compareSpans) {
		out = append(append(out, s...), o...)
		sortSpans(out)
		return out
	}
	// Both in order, as the facts' lists are: merge them, s first on ties,
	// as the stable sort of both would.
	i, j := 0, 0
	for i < len(s) && j < len(o) {
		if compareSpans(o[j], s[i]) < 0 {
			out = append(out, o[j])
			j++
		} else {
			out = append(out, s[i])
			i++
		}
	}
	return append(append(out, s[i:]...), o[j:]...)
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
	seen := map[string]bool{}
	var out []string
	for i, sp := range s {
		if sp.Source == "" || i > 0 && sp.Source == s[i-1].Source || seen[sp.Source] {
			continue
		}
		seen[sp.Source] = true
		out = append(out, sp.Source)
	}
	slices.Sort(out)
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
	var ts taskSet
	for _, sp := range s {
		ts.add(Task{Pid: sp.Pid, Tgid: sp.Tgid, Comm: sp.Comm})
	}
	return ts.list
}

// Wakers returns the distinct tasks that woke the spans, in the order they
// were first seen; spans whose wake-up was not seen have none.
func (s Spans) Wakers() Tasks {
	var ts taskSet
	for _, sp := range s {
		if sp.Waker.Pid != 0 {
			ts.add(Task{Pid: sp.Waker.Pid, Tgid: sp.Waker.Tgid, Comm: sp.Waker.Comm})
		}
	}
	return ts.list
}

func distinctSorted(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

// taskSet collects distinct tasks (by pid and role) in the order first seen.
type taskSet struct {
	list Tasks
	seen map[taskKey]bool
}

type taskKey struct {
	pid  uint32
	role string
}

// add appends t unless a task with its pid and role is already there.
func (ts *taskSet) add(t Task) {
	if ts.seen == nil {
		ts.seen = map[taskKey]bool{}
	}
	k := taskKey{t.Pid, t.Role}
	if !ts.seen[k] {
		ts.seen[k] = true
		ts.list = append(ts.list, t)
	}
}

// Count is the number of tasks.
func (t Tasks) Count() int { return len(t) }

// As returns the tasks with their Role set to role; "cause" and "victim"
// set their Part too.
func (t Tasks) As(role string) Tasks {
	out := make(Tasks, len(t))
	for i, x := range t {
		x.Role = role
		if role == PartCause || role == PartVictim {
			x.Part = role
		}
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
	var ts taskSet
	for _, pt := range p {
		if pt.Pid != 0 {
			ts.add(Task{Pid: pt.Pid, Comm: pt.Comm})
		}
	}
	return ts.list
}

// Preceding returns the points followed within window by the start of some
// span of s: a span starting in [q.At-q.Late, q.At+window] for the point q.
func (p Points) Preceding(s Spans, window time.Duration) Points {
	window = max(window, 0)
	var out Points
	for _, pt := range p {
		from := pt.earliest()
		i := sort.Search(len(s), func(i int) bool { return s[i].Start >= from })
		if i < len(s) && s[i].Start <= SaturatingAdd(pt.At, window) {
			out = append(out, pt)
		}
	}
	return out
}

// PrecededBy returns the points that come within window after (or at) some
// point of o: in [q.At-q.Late, q.At+window] for a point q of o (the points
// by their recorded times).
func (p Points) PrecededBy(o Points, window time.Duration) Points {
	rs := p.ranges(o, window)
	n := 0
	for _, r := range rs {
		n += r[1] - r[0]
	}
	if n == 0 {
		return nil
	}
	out := make(Points, 0, n)
	for _, r := range rs {
		out = append(out, p[r[0]:r[1]]...)
	}
	return out
}

// CountPrecededBy is p.PrecededBy(o, window).Count() without making the
// list: it costs in proportion to o, not p.
func (p Points) CountPrecededBy(o Points, window time.Duration) int {
	n := 0
	for _, r := range p.ranges(o, window) {
		n += r[1] - r[0]
	}
	return n
}

// Earlier returns the points moved d earlier (d < 0: later), their Late
// unchanged. Uevents need it no more for whyslow's lag in reading them:
// they carry it (Point.Late), and the relations honour it. Kept for the
// rules written with it.
func (p Points) Earlier(d time.Duration) Points {
	if len(p) == 0 || d == 0 {
		return p
	}
	out := make(Points, len(p))
	for i, pt := range p {
		pt.At -= d
		out[i] = pt
	}
	return out
}

// Bursts is the number of clusters of points, a point closer than or equal
// to gap to the previous one belonging to its cluster.
func (p Points) Bursts(gap time.Duration) int {
	n := 0
	for i, pt := range p {
		if i == 0 || pt.At-p[i-1].At > gap {
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
	n := 0
	for _, e := range c.Execs {
		if followedBy(p, e, window) {
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
	pids := make(map[uint32]bool, len(o)) // o's thread ids
	tgids := make(map[uint32]bool, len(o))
	for _, y := range o {
		pids[y.Pid] = true
		tgids[y.Tgid] = true
	}
	var out Tasks
	for _, x := range t {
		if pids[x.Pid] || (x.Tgid != 0 && (tgids[x.Tgid] || pids[x.Tgid])) {
			out = append(out, x)
		}
	}
	return out
}

// Plus returns the tasks of t and then those of o not already in t.
func (t Tasks) Plus(o Tasks) Tasks {
	ts := taskSet{list: slices.Clone(t), seen: make(map[taskKey]bool, len(t)+len(o))}
	for _, x := range t {
		ts.seen[taskKey{x.Pid, x.Role}] = true
	}
	for _, x := range o {
		ts.add(x)
	}
	return ts.list
}

// NotIn returns the tasks that belong to no process of o (neither the same
// thread nor the same process id): the others, once the cause is known.
func (t Tasks) NotIn(o Tasks) Tasks {
	in := t.In(o)
	var out Tasks
	for _, x := range t {
		if !slices.Contains(in, x) {
			out = append(out, x)
		}
	}
	return out
}

// AsCause returns the tasks as causes of the finding (Part "cause"), with
// Role role, or "cause" when role is "".
func (t Tasks) AsCause(role string) Tasks { return t.asPart(PartCause, role) }

// AsVictim returns the tasks as victims of the finding (Part "victim"),
// with Role role, or "victim" when role is "".
func (t Tasks) AsVictim(role string) Tasks { return t.asPart(PartVictim, role) }

func (t Tasks) asPart(part, role string) Tasks {
	out := t.As(cmp.Or(role, part))
	for i := range out {
		out[i].Part = part
	}
	return out
}

// Count is the number of rows.
func (u IOUses) Count() int { return len(u) }

// Top returns the first row, the one with the most time in flight, or nil.
func (u IOUses) Top() *IOUse {
	if len(u) == 0 {
		return nil
	}
	return &u[0]
}

// Take returns the first n rows (all of them when there are fewer).
func (u IOUses) Take(n int) IOUses { return u[:max(min(n, len(u)), 0)] }

// Except returns the rows of the processes that are not a process of t.
func (u IOUses) Except(t Tasks) IOUses {
	pids := map[uint32]bool{}
	for _, x := range t {
		pids[x.Pid] = true
		if x.Tgid != 0 {
			pids[x.Tgid] = true
		}
	}
	var out IOUses
	for _, x := range u {
		if x.Pid == 0 || !pids[x.Pid] {
			out = append(out, x)
		}
	}
	return out
}

// Tasks returns the processes of the rows (rows per cgroup have none), as
// tasks with their cgroup.
func (u IOUses) Tasks() Tasks {
	var ts taskSet
	for _, x := range u {
		if x.Pid != 0 {
			ts.add(Task{Pid: x.Pid, Tgid: x.Pid, Comm: x.Comm, Cgroup: x.Cgroup})
		}
	}
	return ts.list
}

// Comms returns the distinct comms of the rows' processes, sorted.
func (u IOUses) Comms() []string {
	var out []string
	for _, x := range u {
		out = append(out, x.Comms...)
	}
	return distinctSorted(slices.DeleteFunc(out, func(s string) bool { return s == "" }))
}

// TimeShare is the rows' share of the device's time in flight, summed.
func (u IOUses) TimeShare() float64 {
	var s float64
	for _, x := range u {
		s += x.TimeShare
	}
	return s
}

// MeanInFlightMs is the mean time in flight of the row's bios, in ms: how
// long each took from queueing to its end; 0 without bios.
func (x IOUse) MeanInFlightMs() float64 { return ratioOf(x.InFlightMs, float64(x.IOs)) }

// Dominant returns the first row when it dominates the others: it holds at
// least share (0..1) of the device's time in flight, and at least lead
// times the next row's; nil otherwise.
func (u IOUses) Dominant(share, lead float64) *IOUse {
	if len(u) == 0 || u[0].TimeShare < share || u[0].InFlightMs <= 0 {
		return nil
	}
	if len(u) > 1 && u[0].TimeShare < lead*u[1].TimeShare {
		return nil
	}
	return &u[0]
}

// InCgroup returns the rows of the processes whose I/O was charged to
// cgroup path (mostly: a process's Cgroup is its heaviest).
func (u IOUses) InCgroup(path string) IOUses {
	var out IOUses
	for _, x := range u {
		if x.Pid != 0 && x.Cgroup == path {
			out = append(out, x)
		}
	}
	return out
}

// Cgroups returns the distinct cgroups of the rows, sorted.
func (u IOUses) Cgroups() []string {
	var out []string
	for _, x := range u {
		out = append(out, x.Cgroup)
	}
	return distinctSorted(slices.DeleteFunc(out, func(s string) bool { return s == "" }))
}

// InService is the mean number of requests the device had in service
// (issued, not completed) over a stretch of time of length over: their
// service time summed (ServiceTime) divided by over (Little's law). The
// part of the time the device had at least one request in service
// (iostat's %util) is at most this: equal when its requests do not
// overlap, less when they do. 0 when over is not positive.
func (d *Device) InService(over time.Duration) float64 {
	if d == nil || over <= 0 {
		return 0
	}
	return float64(d.ServiceTime) / float64(over)
}

// Dominant returns the processes that dominate the device's I/O (see
// IOUses.Dominant for share and lead): the dominant process, else the
// processes of the dominant cgroup when that is not the root; none when
// neither dominates.
func (d *Device) Dominant(share, lead float64) IOUses {
	if d == nil {
		return nil
	}
	if p := d.IOBy.Dominant(share, lead); p != nil {
		return d.IOBy[:1]
	}
	if c := d.IOByCgroup.Dominant(share, lead); c != nil && c.Cgroup != "/" && c.Cgroup != "" {
		return d.IOBy.InCgroup(c.Cgroup)
	}
	return nil
}

// Except returns the spans of tasks that belong to no process of t.
func (s Spans) Except(t Tasks) Spans {
	pids := make(map[uint32]bool, len(t))
	for _, x := range t {
		pids[x.Pid] = true
		if x.Tgid != 0 {
			pids[x.Tgid] = true
		}
	}
	return s.where(func(sp *Span) bool { return !pids[sp.Pid] && (sp.Tgid == 0 || !pids[sp.Tgid]) })
}

// Processes returns one task per process of t (Pid set to the process id),
// in the order first seen: a finding that names processes, not threads.
func (t Tasks) Processes() Tasks {
	var ts taskSet
	for _, x := range t {
		if x.Tgid != 0 {
			x.Pid = x.Tgid
		}
		ts.add(x)
	}
	return ts.list
}
