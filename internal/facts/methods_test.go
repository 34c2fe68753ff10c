package facts

import (
	"math"
	"slices"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// sp is a span from ms a to ms b of a task.
func sp(a, b float64, pid uint32, comm string) Span {
	return Span{Start: msd(a), End: msd(b), Pid: pid, Tgid: pid, Comm: comm}
}

func pt(ms float64, what string) Point { return Point{At: msd(ms), What: what} }

func starts(s Spans) []float64 {
	var out []float64
	for _, x := range s {
		out = append(out, float64(x.Start)/1e6)
	}
	return out
}

func ats(p Points) []float64 {
	var out []float64
	for _, x := range p {
		out = append(out, float64(x.At)/1e6)
	}
	return out
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestSpanSums(t *testing.T) {
	tests := []struct {
		name                  string
		s                     Spans
		count                 int
		total, union, longest float64
	}{
		{"empty", nil, 0, 0, 0, 0},
		{"one", Spans{sp(10, 30, 1, "a")}, 1, 20, 20, 20},
		{"overlapping count once in the union", Spans{sp(10, 30, 1, "a"), sp(20, 40, 2, "b")}, 2, 40, 30, 20},
		{"nested", Spans{sp(10, 50, 1, "a"), sp(20, 30, 2, "b")}, 2, 50, 40, 40},
		{"disjoint, unsorted", Spans{sp(100, 105, 1, "a"), sp(0, 1, 2, "b")}, 2, 6, 6, 5},
		{"touching", Spans{sp(0, 10, 1, "a"), sp(10, 20, 1, "a")}, 2, 20, 20, 10},
		{"inverted span counts nothing", Spans{sp(10, 5, 1, "a")}, 1, 0, 0, 0},
		{"a total beyond a Duration stays the largest", Spans{{Start: 0, End: math.MaxInt64}, {Start: 0, End: math.MaxInt64}}, 2,
			msOf(math.MaxInt64), msOf(math.MaxInt64), msOf(math.MaxInt64)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.s.Count() != tt.count || !near(tt.s.TotalMs(), tt.total) || !near(tt.s.UnionMs(), tt.union) || !near(tt.s.MaxMs(), tt.longest) {
				t.Errorf("count %d total %v union %v max %v, want %d %v %v %v",
					tt.s.Count(), tt.s.TotalMs(), tt.s.UnionMs(), tt.s.MaxMs(), tt.count, tt.total, tt.union, tt.longest)
			}
		})
	}
}

func TestSaturatingAdd(t *testing.T) {
	tests := []struct{ a, b, want time.Duration }{
		{1, 2, 3},
		{math.MaxInt64, 1, math.MaxInt64},
		{math.MaxInt64 - 1, math.MaxInt64, math.MaxInt64},
		{math.MinInt64, -1, math.MinInt64},
		{-5, 3, -2},
		{math.MaxInt64, math.MinInt64, -1},
	}
	for _, tt := range tests {
		if got := SaturatingAdd(tt.a, tt.b); got != tt.want {
			t.Errorf("SaturatingAdd(%d, %d) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestSpansOverlapping(t *testing.T) {
	stalls := Spans{sp(0, 5, 1, "a"), sp(100, 110, 1, "a"), sp(150, 151, 1, "a"), sp(300, 310, 1, "a"), sp(500, 500, 1, "a")}
	tests := []struct {
		name   string
		o      Spans
		window time.Duration
		want   []float64
	}{
		{"no others", nil, time.Second, nil},
		{"exact overlap", Spans{sp(105, 120, 2, "f")}, 0, []float64{100}},
		{"touching counts", Spans{sp(110, 120, 2, "f")}, 0, []float64{100}},
		{"window reaches", Spans{sp(120, 140, 2, "f")}, 10 * time.Millisecond, []float64{100, 150}},
		{"window too short", Spans{sp(120, 140, 2, "f")}, 5 * time.Millisecond, nil},
		{"several others, unsorted", Spans{sp(305, 306, 2, "f"), sp(1, 2, 2, "f")}, 0, []float64{0, 300}},
		{"zero-length span inside", Spans{sp(490, 510, 2, "f")}, 0, []float64{500}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := starts(stalls.Overlapping(tt.o, tt.window)); !slices.Equal(got, tt.want) {
				t.Errorf("Overlapping = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSpansPrecededBy(t *testing.T) {
	freezes := Spans{sp(100, 120, 1, "w"), sp(2000, 2010, 1, "w"), sp(5000, 5020, 1, "w")}
	tests := []struct {
		name   string
		p      Points
		window time.Duration
		want   []float64
	}{
		{"none", nil, time.Second, nil},
		{"within window", Points{pt(50, "change"), pt(1500, "change")}, time.Second, []float64{100, 2000}},
		{"point after the span does not precede it", Points{pt(101, "change")}, time.Second, nil},
		{"same instant counts", Points{pt(5000, "change")}, 0, []float64{5000}},
		{"too early", Points{pt(3000, "change")}, time.Second, nil},
		{"several points", Points{pt(90, "x"), pt(4500, "x")}, time.Second, []float64{100, 5000}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := starts(freezes.PrecededBy(tt.p, tt.window)); !slices.Equal(got, tt.want) {
				t.Errorf("PrecededBy = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestPointsEarlier: a freeze that udev made before whyslow read the
// uevent that caused it (the reader's lag) is preceded by the uevent moved
// earlier by at least that lag, and the original points are left as they were.
func TestPointsEarlier(t *testing.T) {
	freezes := Spans{sp(1000, 1030, 1, "w")}
	read := Points{pt(1050, "change")} // read 50 ms after the freeze began
	tests := []struct {
		name string
		d    time.Duration
		want []float64
	}{
		{"as read: the freeze comes first", 0, nil},
		{"less than the lag", 40 * time.Millisecond, nil},
		{"the lag", 50 * time.Millisecond, []float64{1000}},
		{"more than the lag", 500 * time.Millisecond, []float64{1000}},
		{"later", -time.Second, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := starts(freezes.PrecededBy(read.Earlier(tt.d), 2*time.Second)); !slices.Equal(got, tt.want) {
				t.Errorf("PrecededBy(Earlier(%v)) = %v, want %v", tt.d, got, tt.want)
			}
			if read[0].At != msd(1050) {
				t.Errorf("Earlier changed its receiver: %v", read[0].At)
			}
		})
	}
}

// TestLatePoints: a point read late (a uevent, Late up to 250 ms) may have
// set off what started up to Late before its recorded time, in every
// relation that asks what followed it; where it is the point that follows
// (uevents after a command's runs), its recorded time is used.
func TestLatePoints(t *testing.T) {
	const late = 250 * time.Millisecond
	uevent := func(ms float64, l time.Duration) Points { return Points{{At: msd(ms), What: "change", Late: l}} }
	exec := Points{pt(0, "/usr/bin/mon")}
	const window, within = 2 * time.Second, 500 * time.Millisecond
	tests := []struct {
		name     string
		uevent   float64 // ms, recorded (read) time; the command ran at 0
		late     time.Duration
		freeze   float64 // ms, when udev froze the queue
		followed bool    // the freeze counts as set off by the uevent
	}{
		{"freeze after the uevent", 100, late, 150, true},
		{"freeze at the uevent", 100, late, 100, true},
		{"freeze 100 ms before the uevent was read", 300, late, 200, true},
		{"freeze up to the lag before", 300, late, 50, true},
		{"freeze more than the lag before", 400, late, 149, false},
		{"freeze 500 ms before the next uevent (TestNoUdevBlame)", 300, late, -200, false},
		{"freeze before an uevent on time", 300, 0, 200, false},
		{"freeze at the end of the window", 100, late, 2100, true},
		{"freeze past the window: the lag does not lengthen it", 100, late, 2101, false},
		{"negative lateness counts as none", 300, -late, 200, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, freezes := uevent(tt.uevent, tt.late), Spans{sp(tt.freeze, tt.freeze+30, 1, "(udev-worker)")}
			var want []float64
			if tt.followed {
				want = []float64{tt.freeze}
			}
			if got := starts(freezes.PrecededBy(u, window)); !slices.Equal(got, want) {
				t.Errorf("Spans.PrecededBy = %v, want %v", got, want)
			}
			// the uevent came within 500 ms of the run at its recorded time
			if got := starts(freezes.PrecededByAfter(u, window, exec, within)); !slices.Equal(got, want) {
				t.Errorf("Spans.PrecededByAfter = %v, want %v", got, want)
			}
			if got := u.Preceding(freezes, window).Count() == 1; got != tt.followed {
				t.Errorf("Points.Preceding kept the uevent: %v, want %v", got, tt.followed)
			}
			// a write by udev as a point, in place of the freeze
			write := Points{pt(tt.freeze, "queue/scheduler")}
			if got := write.PrecededBy(u, window).Count() == 1; got != tt.followed {
				t.Errorf("Points.PrecededBy kept the write: %v, want %v", got, tt.followed)
			}
			if got := write.CountPrecededBy(u, window) == 1; got != tt.followed {
				t.Errorf("Points.CountPrecededBy counted the write: %v, want %v", got, tt.followed)
			}
			if got := (&Command{Execs: u}).FollowedBy(write, window) == 1; got != tt.followed {
				t.Errorf("Command.FollowedBy (late execs): %v, want %v", got, tt.followed)
			}
		})
	}

	// Where the late point follows, its recorded time counts: a uevent read
	// 50 ms after a run came after it, and none read before it or later
	// than the window did, late or not.
	for _, tt := range []struct {
		uevent float64
		want   bool
	}{{50, true}, {-1, false}, {500, true}, {501, false}} {
		u := uevent(tt.uevent, late)
		if got := u.CountPrecededBy(exec, within) == 1; got != tt.want {
			t.Errorf("uevent at %v ms: CountPrecededBy(execs) %v, want %v", tt.uevent, got, tt.want)
		}
		if got := u.PrecededBy(exec, within).Count() == 1; got != tt.want {
			t.Errorf("uevent at %v ms: PrecededBy(execs) %v, want %v", tt.uevent, got, tt.want)
		}
		if got := (&Command{Execs: exec}).FollowedBy(u, within) == 1; got != tt.want {
			t.Errorf("uevent at %v ms: FollowedBy %v, want %v", tt.uevent, got, tt.want)
		}
		freezes := Spans{sp(tt.uevent-100, tt.uevent-70, 1, "(udev-worker)")}
		if got := freezes.PrecededByAfter(u, window, exec, within).Count() == 1; got != tt.want {
			t.Errorf("uevent at %v ms: PrecededByAfter a freeze 100 ms before it %v, want %v", tt.uevent, got, tt.want)
		}
	}

	// Earlier moves points and keeps their lateness.
	if got := uevent(300, late).Earlier(100 * time.Millisecond); got[0].At != msd(200) || got[0].Late != late {
		t.Errorf("Earlier = %+v", got)
	}
}

func TestSpansFilters(t *testing.T) {
	w := event.Task{Pid: 7, Comm: "(udev-worker)"}
	s := Spans{
		{Start: msd(1), End: msd(2), Pid: 1, Comm: "fio", Kind: KindQueueEnter, Waker: w, Device: "loop0"},
		{Start: msd(3), End: msd(4), Pid: 2, Comm: "fio", Kind: KindTagWait, Device: "loop1"},
		{Start: msd(5), End: msd(6), Pid: 7, Comm: "(udev-worker)", Kind: KindFreezeWait, Attr: "queue/scheduler"},
		{Start: msd(7), End: msd(8), Pid: 1, Comm: "fio", Kind: KindQueueEnter, Waker: event.Task{Pid: 8, Comm: "tuned"}},
		{Start: msd(9), End: msd(10), Pid: 9, Comm: "dd", Kind: KindFreezeWait, Attr: "queue/nr_requests"},
	}
	tests := []struct {
		name string
		got  Spans
		want []float64
	}{
		{"ByComm one", s.ByComm("fio"), []float64{1, 3, 7}},
		{"ByComm several", s.ByComm("dd", "(udev-worker)"), []float64{5, 9}},
		{"ByComm none", s.ByComm(), nil},
		{"WokenBy", s.WokenBy("(udev-worker)", "systemd-udevd"), []float64{1}},
		{"Kind", s.Kind(KindFreezeWait), []float64{5, 9}},
		{"Plus sorts", Spans{sp(50, 60, 1, "x")}.Plus(Spans{sp(10, 20, 1, "y")}), []float64{10, 50}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := starts(tt.got); !slices.Equal(got, tt.want) {
				t.Errorf("= %v, want %v", got, tt.want)
			}
		})
	}
	lists := []struct {
		name      string
		got, want []string
	}{
		{"Comms sorted distinct", s.Comms(), []string{"(udev-worker)", "dd", "fio"}},
		{"Attrs", s.Attrs(), []string{"queue/nr_requests", "queue/scheduler"}},
		{"Devices", s.Devices(), []string{"loop0", "loop1"}},
		{"Tasks in first-seen order", taskStrings(s.Tasks()), []string{"1 fio", "2 fio", "7 (udev-worker)", "9 dd"}},
		{"Wakers", taskStrings(s.Wakers()), []string{"7 (udev-worker)", "8 tuned"}},
		{"As sets the role", taskStrings(s.Kind(KindFreezeWait).Tasks().As("freezer")), []string{"7 (udev-worker) freezer", "9 dd freezer"}},
		{"Tasks of nothing", taskStrings(Spans(nil).Tasks()), nil},
		{"Task comms", s.Tasks().Comms(), []string{"(udev-worker)", "dd", "fio"}},
	}
	for _, tt := range lists {
		t.Run(tt.name, func(t *testing.T) {
			if !slices.Equal(tt.got, tt.want) {
				t.Errorf("= %q, want %q", tt.got, tt.want)
			}
		})
	}
	if n := s.Tasks().Count(); n != 4 {
		t.Errorf("Tasks().Count() = %d, want 4", n)
	}
}

func taskStrings(ts Tasks) []string {
	var out []string
	for _, t := range ts {
		s := itoa(t.Pid) + " " + t.Comm
		if t.Role != "" {
			s += " " + t.Role
		}
		out = append(out, s)
	}
	return out
}

func itoa(n uint32) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func TestPoints(t *testing.T) {
	p := Points{
		{At: msd(0), What: "change", Pid: 3, Comm: "a"},
		{At: msd(10), What: "add"},
		{At: msd(20), What: "change", Pid: 4, Comm: "b"},
		{At: msd(1000), What: "change", Pid: 3, Comm: "a"},
		{At: msd(1005), What: "remove"},
		{At: msd(5000), What: "change"},
	}
	spans := Spans{sp(30, 40, 1, "w"), sp(1100, 1200, 1, "w")}
	tests := []struct {
		name string
		got  Points
		want []float64
	}{
		{"Action", p.Action("change"), []float64{0, 20, 1000, 5000}},
		{"What", p.What("add"), []float64{10}},
		{"ByComm", p.ByComm("a"), []float64{0, 1000}},
		{"Preceding within 15ms", p.Preceding(spans, 15*time.Millisecond), []float64{20}},
		{"Preceding within 100ms, inclusive", p.Preceding(spans, 100*time.Millisecond), []float64{0, 10, 20, 1000, 1005}},
		{"Preceding nothing", p.Preceding(nil, time.Hour), nil},
		{"PrecededBy", p.PrecededBy(Points{pt(995, "exec"), pt(4000, "exec")}, 10*time.Millisecond), []float64{1000, 1005}},
		{"PrecededBy same instant", p.PrecededBy(Points{pt(5000, "exec")}, 0), []float64{5000}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ats(tt.got); !slices.Equal(got, tt.want) {
				t.Errorf("= %v, want %v", got, tt.want)
			}
		})
	}
	counts := []struct {
		name      string
		got, want int
	}{
		{"Count", p.Count(), 6},
		{"Bursts 50ms", p.Bursts(50 * time.Millisecond), 3},
		{"Bursts 5ms", p.Bursts(5 * time.Millisecond), 5},
		{"Bursts 10ms is inclusive", p.Bursts(10 * time.Millisecond), 3},
		{"Bursts of none", Points(nil).Bursts(time.Second), 0},
	}
	for _, tt := range counts {
		if tt.got != tt.want {
			t.Errorf("%s = %d, want %d", tt.name, tt.got, tt.want)
		}
	}
	if r := p.RatePerSec(2 * time.Second); r != 3 {
		t.Errorf("RatePerSec = %v, want 3", r)
	}
	if r := p.RatePerSec(0); r != 0 {
		t.Errorf("RatePerSec(0) = %v, want 0", r)
	}
	if got := p.Whats(); !slices.Equal(got, []string{"add", "change", "remove"}) {
		t.Errorf("Whats = %v", got)
	}
	if got := p.Comms(); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("Comms = %v", got)
	}
	if got := taskStrings(p.Tasks()); !slices.Equal(got, []string{"3 a", "4 b"}) {
		t.Errorf("Tasks = %v", got)
	}
}

func TestCommandMethods(t *testing.T) {
	c := &Command{Filename: "/usr/bin/mon", Args: []string{"mon", "--all"}, Period: 4 * time.Second,
		Execs: Points{pt(0, ""), pt(4000, ""), pt(8000, ""), pt(12000, "")}}
	uevents := Points{pt(30, "change"), pt(4020, "change"), pt(9500, "change"), pt(12001, "change")}
	tests := []struct {
		name   string
		c      *Command
		p      Points
		window time.Duration
		want   float64
	}{
		{"three of four runs", c, uevents, 100 * time.Millisecond, 0.75},
		{"window too short", c, uevents, 10 * time.Millisecond, 0.25},
		{"wide window", c, uevents, 2 * time.Second, 1},
		{"no points", c, nil, time.Second, 0},
		{"nil command", nil, uevents, time.Second, 0},
		{"a point before the exec does not count", &Command{Execs: Points{pt(100, "")}}, Points{pt(99, "")}, time.Second, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.c.FollowedBy(tt.p, tt.window); !near(got, tt.want) {
				t.Errorf("FollowedBy = %v, want %v", got, tt.want)
			}
		})
	}
	windows := []struct {
		c     *Command
		limit time.Duration
		want  time.Duration
	}{
		{c, time.Second, time.Second},
		{&Command{Period: 400 * time.Millisecond}, time.Second, 200 * time.Millisecond},
		{&Command{}, time.Second, time.Second},
		{nil, time.Second, time.Second},
	}
	for _, w := range windows {
		if got := w.c.EffectWindow(w.limit); got != w.want {
			t.Errorf("EffectWindow(%v) of period %v = %v, want %v", w.limit, w.c, got, w.want)
		}
	}
	if c.Line() != "mon --all" || (&Command{Filename: "/bin/x"}).Line() != "/bin/x" || (*Command)(nil).Line() != "" {
		t.Errorf("Line")
	}
}

func TestRunMethods(t *testing.T) {
	run := &Run{Devices: []*Device{
		{Name: "loop0", Service: Latency{Count: 10, P99Us: 100}},
		{Name: "sda", Service: Latency{Count: 5, P99Us: 9000}},
		nil,
	}}
	if run.IOs() != 15 {
		t.Errorf("IOs = %d", run.IOs())
	}
	if w := run.Worst(); w == nil || w.Name != "sda" {
		t.Errorf("Worst = %+v", w)
	}
	if run.Find("loop0") == nil || run.Find("nope") != nil {
		t.Errorf("Find")
	}
	var none *Run
	if none.IOs() != 0 || none.Worst() != nil || none.Find("x") != nil || (&Run{}).Worst() != nil {
		t.Errorf("nil run")
	}
}
