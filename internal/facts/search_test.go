package facts

import (
	"cmp"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/synth"
	"github.com/whyslow/whyslow/internal/timeline"
)

// The definitions of the time-correlation methods, as a scan over every
// pair: what the searching methods must give. A point q that precedes
// something may have happened from q.At-q.Late on; one that follows is
// taken at its recorded time.
func naiveSpansPrecededBy(s Spans, p Points, w time.Duration) Spans {
	var out Spans
	for _, sp := range s {
		for _, q := range p {
			if q.At-q.Late <= sp.Start && sp.Start-q.At <= max(w, 0) {
				out = append(out, sp)
				break
			}
		}
	}
	return out
}

func naivePointsPrecededBy(p, o Points, w time.Duration) Points {
	var out Points
	for _, x := range p {
		for _, q := range o {
			if q.At-q.Late <= x.At && x.At-q.At <= max(w, 0) {
				out = append(out, x)
				break
			}
		}
	}
	return out
}

func naivePreceding(p Points, s Spans, w time.Duration) Points {
	var out Points
	for _, x := range p {
		for _, sp := range s {
			if sp.Start >= x.At-x.Late && sp.Start-x.At <= max(w, 0) {
				out = append(out, x)
				break
			}
		}
	}
	return out
}

func naiveOverlapping(s, o Spans, w time.Duration) Spans {
	var out Spans
	for _, x := range s {
		for _, y := range o {
			if x.Start <= max(y.End, y.Start)+max(w, 0) && y.Start-max(w, 0) <= max(x.End, x.Start) {
				out = append(out, x)
				break
			}
		}
	}
	return out
}

func naiveFollowed(c *Command, p Points, w time.Duration) float64 {
	n := 0
	for _, e := range c.Execs {
		for _, q := range p {
			if q.At >= e.At-e.Late && q.At-e.At <= max(w, 0) {
				n++
				break
			}
		}
	}
	return float64(n) / float64(len(c.Execs))
}

// randomLists makes time-ordered lists with many coincidences: times in
// ms on a short axis, repeated times included; each list of points is
// late by one random Late, 0 half of the time.
func randomLists(rng *rand.Rand) (Spans, Spans, Points, Points) {
	spans := func(n int) Spans {
		var s Spans
		for range n {
			a := msd(float64(rng.IntN(200)))
			s = append(s, Span{Start: a, End: a + msd(float64(rng.IntN(30))-2), Pid: uint32(rng.IntN(5)), Comm: []string{"a", "b", "c"}[rng.IntN(3)]})
		}
		sortSpans(s)
		return s
	}
	points := func(n int) Points {
		var p Points
		late := msd(float64(max(rng.IntN(60)-30, 0)))
		for range n {
			p = append(p, Point{At: msd(float64(rng.IntN(200))), Pid: uint32(rng.IntN(5)), What: []string{"x", "y"}[rng.IntN(2)], Late: late})
		}
		slices.SortStableFunc(p, func(a, b Point) int { return int(a.At - b.At) })
		return p
	}
	return spans(rng.IntN(25)), spans(rng.IntN(25)), points(rng.IntN(25)), points(rng.IntN(25))
}

func TestSearchesMatchDefinitions(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 {
		s, o, p, q := randomLists(rng)
		w := msd(float64(rng.IntN(40)) - 5)
		v := msd(float64(rng.IntN(40)) - 5)
		check := func(what string, got, want any) {
			t.Helper()
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("case %d: %s: got %v, want %v (window %v, %v)", i, what, got, want, w, v)
			}
		}
		check("Spans.PrecededBy", s.PrecededBy(p, w), naiveSpansPrecededBy(s, p, w))
		check("Spans.PrecededByAfter", s.PrecededByAfter(p, w, q, v), naiveSpansPrecededBy(s, naivePointsPrecededBy(p, q, v), w))
		check("Points.PrecededBy", p.PrecededBy(q, w), naivePointsPrecededBy(p, q, w))
		check("Points.CountPrecededBy", p.CountPrecededBy(q, w), len(naivePointsPrecededBy(p, q, w)))
		check("Points.Preceding", p.Preceding(s, w), naivePreceding(p, s, w))
		check("Spans.Overlapping", s.Overlapping(o, w), naiveOverlapping(s, o, w))
		if len(q) > 0 {
			c := &Command{Execs: q}
			check("Command.FollowedBy", c.FollowedBy(p, w), naiveFollowed(c, p, w))
		}
		all := append(slices.Clone(s), o...)
		sortSpans(all)
		if len(all) == 0 {
			all = Spans{}
		}
		check("Spans.Plus", s.Plus(o), all)
		var byComm Spans
		for _, x := range s {
			if x.Comm == "a" || x.Comm == "c" {
				byComm = append(byComm, x)
			}
		}
		check("Spans.ByComm", s.ByComm("a", "c"), byComm)
	}
}

func TestTasksMatchDefinitions(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	tasks := func(n int) Tasks {
		var ts Tasks
		for range n {
			ts = append(ts, Task{Pid: uint32(rng.IntN(8)), Tgid: uint32(rng.IntN(4)), Comm: "c", Role: []string{"", "r"}[rng.IntN(2)]})
		}
		return ts
	}
	for i := range 2000 {
		a, b := tasks(rng.IntN(12)), tasks(rng.IntN(12))
		var in Tasks
		for _, x := range a {
			for _, y := range b {
				if x.Pid == y.Pid || (x.Tgid != 0 && (x.Tgid == y.Tgid || x.Tgid == y.Pid)) {
					in = append(in, x)
					break
				}
			}
		}
		if got := a.In(b); !reflect.DeepEqual(got, in) {
			t.Fatalf("case %d: In = %v, want %v", i, got, in)
		}
		plus := slices.Clone(a)
		for _, y := range b {
			if !slices.ContainsFunc(plus, func(x Task) bool { return x.Pid == y.Pid && x.Role == y.Role }) {
				plus = append(plus, y)
			}
		}
		if got := a.Plus(b); !slices.Equal(got, plus) {
			t.Fatalf("case %d: Plus = %v, want %v", i, got, plus)
		}
	}
	// Wakers and Tasks keep the first task of each thread.
	s := Spans{{Pid: 1, Comm: "a", Waker: event.Task{Pid: 9, Comm: "w"}}, {Pid: 1, Comm: "b"}, {Pid: 2, Comm: "a", Waker: event.Task{Pid: 9, Comm: "x"}}}
	if got := taskStrings(s.Tasks()); !slices.Equal(got, []string{"1 a", "2 a"}) {
		t.Errorf("Tasks = %v", got)
	}
	if got := taskStrings(s.Wakers()); !slices.Equal(got, []string{"9 w"}) {
		t.Errorf("Wakers = %v", got)
	}
}

// Build makes every list in time order, which the methods rely on.
func TestBuildListsInTimeOrder(t *testing.T) {
	tls := map[string]*timeline.Timeline{"synth": synth.Timeline(synth.Options{Events: 20000})}
	for _, s := range synth.Storms {
		tls[string(s)] = synth.StormTimeline(s, 5000)
	}
	for name, tl := range tls {
		run := Build(tl, Options{})
		spans := map[string]Spans{"unattributed": run.Unattributed}
		points := map[string]Points{"uevents": run.Uevents, "sysfs writes": run.SysfsWrites}
		for _, d := range run.Devices {
			for k, s := range map[string]Spans{"stalls": d.Stalls, "queue waits": d.QueueWaits, "tag waits": d.TagWaits,
				"freezes": d.Freezes, "submit calls": d.SubmitCalls, "upper stalls": d.UpperStalls} {
				spans[d.Name+" "+k] = s
			}
			points[d.Name+" uevents"], points[d.Name+" sysfs writes"] = d.Uevents, d.SysfsWrites
		}
		for _, c := range run.Commands {
			points[c.Filename+" execs"] = c.Execs
		}
		for k, s := range spans {
			if !slices.IsSortedFunc(s, compareSpans) {
				t.Errorf("%s: %s not in time order", name, k)
			}
		}
		for k, p := range points {
			if !slices.IsSortedFunc(p, func(a, b Point) int { return cmp.Compare(a.At, b.At) }) ||
				!slices.IsSortedFunc(p, func(a, b Point) int { return cmp.Compare(a.earliest(), b.earliest()) }) {
				t.Errorf("%s: %s not in time order", name, k)
			}
		}
	}
}
