package rules

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/facts"
	"github.com/whyslow/whyslow/internal/timeline"
)

const t0 = event.Mono(5_000_000_000_000)

func at(ms float64) event.Mono     { return t0 + event.Mono(ms*1e6) }
func msd(ms float64) time.Duration { return time.Duration(ms * 1e6) }

var (
	loop0   = event.Device{Major: 7, Minor: 0, Name: "loop0"}
	sda     = event.Device{Major: 8, Minor: 0, Name: "sda"}
	fio     = event.Task{Pid: 900, Tgid: 900, Comm: "fio"}
	worker  = event.Task{Pid: 500, Tgid: 500, Comm: "(udev-worker)"}
	tuned   = event.Task{Pid: 600, Tgid: 600, Comm: "tuned"}
	monitor = "/usr/local/bin/diskmon"
)

func stack(names ...string) []event.Frame {
	var out []event.Frame
	for _, n := range names {
		out = append(out, event.Frame{Symbol: n, Module: "kernel"})
	}
	return out
}

var (
	queueEnter = stack("__schedule", "schedule", "__bio_queue_enter", "blk_mq_submit_bio")
	freezeWait = stack("__schedule", "schedule", "blk_mq_freeze_queue_wait", "elevator_change", "elv_iosched_store")
	tagWait    = stack("__schedule", "io_schedule", "blk_mq_get_tag", "__blk_mq_alloc_requests")
)

// scenario builds timelines from parts.
type scenario struct{ tl *timeline.Timeline }

func newScenario() *scenario {
	tl := &timeline.Timeline{Start: t0, End: at(20_000), Kernel: "6.18.0", MinLatency: time.Millisecond}
	return &scenario{tl: tl}
}

// fast gives a device a healthy service histogram.
func (s *scenario) fast(d event.Device) *scenario {
	h := s.tl.Device(d)
	for range 1000 {
		h.Service.Add(uint64(60 * time.Microsecond))
		h.Submit.Add(uint64(5 * time.Microsecond))
	}
	return s
}

// slow gives a device 500 requests of 40-80 ms and tag waits.
func (s *scenario) slow(d event.Device) *scenario {
	h := s.tl.Device(d)
	for i := range 500 {
		h.Service.Add(uint64(40*time.Millisecond) + uint64(i%5)*uint64(10*time.Millisecond))
	}
	for i := range 20 {
		ms := 1000 + float64(i)*500
		s.tl.Add(event.SlowSubmit{Start: at(ms), Latency: msd(30), Task: fio, Dev: d, Op: "W", End: "getrq"})
		s.tl.Add(event.OffCPU{Start: at(ms + 1), Duration: msd(28), Task: fio, KernelStack: tagWait})
	}
	return s
}

// freeze adds, at ms, a write of queue/scheduler by the freezer, its 20 ms
// freeze-wait, and fio's 17 ms stall and queue-enter wait woken by it.
func (s *scenario) freeze(ms float64, freezer event.Task, d event.Device) {
	s.tl.Add(event.SysfsWrite{Time: at(ms), Task: freezer, Device: d.Name, Attr: "queue/scheduler"})
	s.tl.Add(event.OffCPU{Start: at(ms + 1), Duration: msd(20), Task: freezer, KernelStack: freezeWait})
	s.tl.Add(event.SlowSubmit{Start: at(ms + 5), Latency: msd(17), Task: fio, Dev: d, Op: "WS", End: "getrq"})
	s.tl.Add(event.OffCPU{Start: at(ms + 5.1), Duration: msd(16.5), Task: fio, Waker: freezer, KernelStack: queueEnter})
}

func (s *scenario) uevent(ms float64, d event.Device) {
	s.tl.Add(event.Uevent{Time: at(ms), Action: "change", Subsystem: "block", DevName: d.Name, DevType: "disk"})
}

func (s *scenario) exec(ms float64, file, parent string, pid uint32) {
	s.tl.Add(event.Exec{Time: at(ms), Task: event.Task{Pid: pid, Tgid: pid, Comm: filepath.Base(file)},
		PPid: 77, ParentComm: parent, Filename: file, Args: []string{file, "--scan"}})
}

// udevChain: every 2 s diskmon runs, loop0 gets a change uevent, udev
// rewrites queue/scheduler, freezing the queue while fio writes. A shell
// loop's sleep runs right after each write and must not be blamed.
func (s *scenario) udevChain(d event.Device) *scenario {
	for i := range 10 {
		ms := 1000 + float64(i)*2000
		s.exec(ms, monitor, "monitord", uint32(2000+i))
		s.uevent(ms+40, d)
		s.freeze(ms+50, worker, d)
		s.exec(ms+100, "/usr/bin/sleep", "bash", uint32(3000+i))
	}
	return s
}

func (s *scenario) run() *facts.Run {
	s.tl.Sort()
	return facts.Build(s.tl, facts.Options{})
}

func defaults(t *testing.T) *Set {
	t.Helper()
	set, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func evaluate(t *testing.T, set *Set, run *facts.Run) []Finding {
	t.Helper()
	fs, err := Evaluate(set, run)
	if err != nil {
		t.Fatal(err)
	}
	return fs
}

func rulesOf(fs []Finding) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Rule)
	}
	return out
}

func stepsOf(f Finding) []string {
	var out []string
	for _, s := range f.Steps {
		out = append(out, s.Rule)
	}
	return out
}

func TestUdevChainIsOneFinding(t *testing.T) {
	fs := evaluate(t, defaults(t), newScenario().fast(loop0).udevChain(loop0).run())
	if len(fs) != 1 {
		t.Fatalf("findings %v, want the one chain", rulesOf(fs))
	}
	f := fs[0]
	if want := []string{"periodic-trigger", "uevent-freeze", "queue-freeze-stall"}; !slices.Equal(stepsOf(f), want) {
		t.Errorf("steps %v, want %v", stepsOf(f), want)
	}
	if f.Rank != 1 || f.Rule != "queue-freeze-stall" || f.Severity != Critical || !slices.Equal(f.Devices, []string{"loop0"}) {
		t.Errorf("finding %d %s %s %v", f.Rank, f.Rule, f.Severity, f.Devices)
	}
	if f.Trigger == nil || f.Trigger.Filename != monitor || f.Trigger.ParentComm != "monitord" ||
		f.Trigger.Count != 10 || f.Trigger.Period != 2*time.Second || f.Trigger.Pid != 2000 || f.Trigger.PPid != 77 {
		t.Errorf("trigger %+v, want diskmon every 2s", f.Trigger)
	}
	// 10 stalls of 17 ms
	if f.Score < 169.9 || f.Score > 170.1 {
		t.Errorf("score %v, want 170 (ms of stall explained)", f.Score)
	}
	for _, want := range []Process{{500, 500, "(udev-worker)", "freezer", "cause", ""}, {900, 900, "fio", "submitter", "victim", ""}} {
		if !slices.Contains(f.Processes, want) {
			t.Errorf("processes %v lack %v", f.Processes, want)
		}
	}
	for _, want := range []string{"(udev-worker) writing queue/scheduler of loop0 froze its queue", "up to 17 ms", "10 stalls", "170 ms in total"} {
		if !strings.Contains(f.Title, want) {
			t.Errorf("title %q lacks %q", f.Title, want)
		}
	}
	if f.Steps[0].Title != "monitord runs diskmon every 2s" ||
		f.Steps[1].Title != "change uevents for loop0 make udev rewrite queue/scheduler" ||
		f.Steps[2].Title != "(udev-worker) froze loop0's queue; submissions stalled up to 17 ms" {
		t.Errorf("step titles %q", f.Steps)
	}
	if !strings.Contains(f.Remedy, `ACTION=="add"`) || !strings.Contains(f.Remedy, "/usr/local/bin/diskmon --scan") {
		t.Errorf("remedy lacks the udev rule and the command: %q", f.Remedy)
	}
	if strings.Index(f.Explanation, "monitord") > strings.Index(f.Explanation, "froze the request queue") {
		t.Errorf("explanation is not cause first: %q", f.Explanation)
	}
	var names []string
	for _, e := range f.Evidence {
		names = append(names, e.Name)
	}
	if names[0] != "freezes" || !slices.Contains(names, "udev_freezes") || !slices.Contains(names, "followed_fraction") ||
		!slices.Contains(names, "periodic-trigger.uevents") {
		t.Errorf("evidence names %v: effect first, causes after, colliding names prefixed", names)
	}
}

func TestNoUdevBlame(t *testing.T) {
	tests := []struct {
		name  string
		build func() *facts.Run
		want  []string // rules of the findings, ranked
	}{
		{
			name: "stalls but no freezes",
			build: func() *facts.Run {
				s := newScenario().fast(loop0)
				for i := range 10 {
					ms := 1000 + float64(i)*2000
					s.exec(ms, monitor, "monitord", uint32(2000+i))
					s.uevent(ms+40, loop0)
					s.tl.Add(event.SlowSubmit{Start: at(ms + 50), Latency: msd(17), Task: fio, Dev: loop0, Op: "WS", End: "getrq"})
				}
				return s.run()
			},
			want: []string{"nothing-found"},
		},
		{
			name: "freezes without uevents: tuned rewrote the scheduler",
			build: func() *facts.Run {
				s := newScenario().fast(loop0)
				for i := range 10 {
					ms := 1000 + float64(i)*2000
					s.exec(ms, monitor, "monitord", uint32(2000+i))
					s.freeze(ms+50, tuned, loop0)
				}
				return s.run()
			},
			want: []string{"queue-freeze-stall"},
		},
		{
			name: "udev freezes not after uevents",
			build: func() *facts.Run {
				s := newScenario().fast(loop0)
				for i := range 6 {
					ms := 1000 + float64(i)*3000
					s.uevent(ms, loop0)
					s.freeze(ms+2500, worker, loop0)
				}
				return s.run()
			},
			want: []string{"queue-freeze-stall"},
		},
		{
			name: "uevent-freeze without a periodic command",
			build: func() *facts.Run {
				s := newScenario().fast(loop0)
				for _, ms := range []float64{1000, 1700, 5200, 5300, 12000} {
					s.uevent(ms, loop0)
					s.freeze(ms+10, worker, loop0)
				}
				return s.run()
			},
			want: []string{"queue-freeze-stall"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := evaluate(t, defaults(t), tt.build())
			if got := rulesOf(fs); !slices.Equal(got, tt.want) {
				t.Fatalf("findings %v, want %v", got, tt.want)
			}
			for _, f := range fs {
				if f.Trigger != nil {
					t.Errorf("%s names trigger %+v", f.Rule, f.Trigger)
				}
				if tt.name == "uevent-freeze without a periodic command" {
					if want := []string{"uevent-freeze", "queue-freeze-stall"}; !slices.Equal(stepsOf(f), want) {
						t.Errorf("steps %v, want %v", stepsOf(f), want)
					}
				} else if len(f.Steps) != 1 {
					t.Errorf("%s has steps %v, want its own only", f.Rule, stepsOf(f))
				}
			}
		})
	}
}

// TestLateUevents: whyslow reads a uevent from netlink after udev may have
// acted on it (seen: 100 ms in a 5.10 guest under TCG), so udev's freeze
// can come before the uevent's recorded time. Both rules that ask which
// freezes followed the uevents allow for it (Point.Late, 250 ms), and the
// chain stays whole; a freeze further before is not the uevent's.
func TestLateUevents(t *testing.T) {
	tests := []struct {
		name string
		lead float64 // ms from udev's freeze to the uevent's recorded time
		want []string
	}{
		{"freeze after the uevent", -10, []string{"periodic-trigger", "uevent-freeze", "queue-freeze-stall"}},
		{"uevent read 100 ms after udev froze", 100, []string{"periodic-trigger", "uevent-freeze", "queue-freeze-stall"}},
		{"uevent read 240 ms after udev froze", 240, []string{"periodic-trigger", "uevent-freeze", "queue-freeze-stall"}},
		{"freeze 400 ms before the uevent: not its", 400, []string{"queue-freeze-stall"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newScenario().fast(loop0)
			for i := range 6 {
				ms := 1000 + float64(i)*3000
				s.exec(ms, monitor, "monitord", uint32(2000+i))
				s.uevent(ms+500, loop0)
				s.freeze(ms+500-tt.lead, worker, loop0)
			}
			fs := evaluate(t, defaults(t), s.run())
			if len(fs) != 1 || fs[0].Rule != "queue-freeze-stall" {
				t.Fatalf("findings %v, want the one queue-freeze-stall", rulesOf(fs))
			}
			if got := stepsOf(fs[0]); !slices.Equal(got, tt.want) {
				t.Errorf("steps %v, want %v", got, tt.want)
			}
			if trigger := slices.Contains(tt.want, "periodic-trigger"); (fs[0].Trigger != nil) != trigger ||
				trigger && fs[0].Trigger.Filename != monitor {
				t.Errorf("trigger %+v, want diskmon: %v", fs[0].Trigger, trigger)
			}
		})
	}
}

// serve gives a device n requests of service time lat, and n bios of
// submission time sub.
func (s *scenario) serve(d event.Device, n int, lat, sub time.Duration) *scenario {
	h := s.tl.Device(d)
	for range n {
		h.Service.Add(uint64(lat))
		h.Submit.Add(uint64(sub))
	}
	return s
}

// slow-device names the device when its service time dominates the time
// bios take to reach it, above a floor; not when the delay is before it.
func TestSlowDeviceComparesServiceWithSubmit(t *testing.T) {
	tests := []struct {
		name  string
		build func() *scenario
		want  bool
	}{
		{"slow device, fast submissions", func() *scenario { return newScenario().serve(sda, 500, msd(45), msd(0.005)) }, true},
		{"slow device, freezes on it too", func() *scenario { return newScenario().serve(loop0, 500, msd(45), msd(0.005)).udevChain(loop0) }, true},
		{"slow device saturated: tag waits shorter than service", func() *scenario { return newScenario().serve(sda, 500, msd(45), msd(20)) }, true},
		{"freeze stalls, fast service", func() *scenario { return newScenario().fast(loop0).udevChain(loop0) }, false},
		{"submissions slower than the device", func() *scenario { return newScenario().serve(sda, 500, msd(35), msd(120)) }, false},
		{"below the floor", func() *scenario { return newScenario().serve(sda, 500, msd(12), msd(0.005)) }, false},
		{"too few requests", func() *scenario { return newScenario().serve(sda, 10, msd(80), msd(0.005)) }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := evaluate(t, defaults(t), tt.build().run())
			var slow *Finding
			for i := range fs {
				if fs[i].Rule == "slow-device" {
					slow = &fs[i]
				}
			}
			if (slow != nil) != tt.want {
				t.Fatalf("findings %v, want slow-device: %v", rulesOf(fs), tt.want)
			}
			if slow != nil && (!strings.Contains(slow.Title, "itself is slow") || !strings.Contains(slow.Explanation, "Before the device, submissions took")) {
				t.Errorf("slow-device text: %q / %q", slow.Title, slow.Explanation)
			}
		})
	}
}

func TestSlowDeviceRanksFirst(t *testing.T) {
	run := newScenario().fast(loop0).udevChain(loop0).slow(sda).run()
	fs := evaluate(t, defaults(t), run)
	if got, want := rulesOf(fs), []string{"slow-device", "queue-freeze-stall"}; !slices.Equal(got, want) {
		t.Fatalf("findings %v, want %v", got, want)
	}
	slow, chain := fs[0], fs[1]
	if !slices.Equal(slow.Devices, []string{"sda"}) || len(slow.Steps) != 1 || slow.Trigger != nil || slow.Rank != 1 {
		t.Errorf("slow-device finding %+v", slow)
	}
	if !slices.Equal(chain.Devices, []string{"loop0"}) || len(chain.Steps) != 3 || chain.Rank != 2 {
		t.Errorf("chain finding devices %v steps %v", chain.Devices, stepsOf(chain))
	}
	if !strings.Contains(slow.Title, "sda itself is slow") || strings.Contains(slow.Title+slow.Explanation, "udev") {
		t.Errorf("slow-device text: %q / %q", slow.Title, slow.Explanation)
	}
	// the tag waits on a slow device are not starvation
	for _, f := range fs {
		if f.Rule == "tag-starvation" {
			t.Errorf("tag-starvation on a slow device")
		}
	}
}

func TestTagStarvation(t *testing.T) {
	tests := []struct {
		name    string
		s       *scenario
		explain string
	}{
		{"fast device", newScenario().fast(loop0), "not what is slow (service p99 "},
		// Above slow-device's floor, but bios waited longer for tags than the device took.
		{"device slower than the floor, tags slower still", newScenario().serve(loop0, 500, msd(35), msd(120)), "less than submissions waited before reaching it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.s
			for i := range 8 {
				ms := 1000 + float64(i)*100
				s.tl.Add(event.SlowSubmit{Start: at(ms), Latency: msd(3), Task: fio, Dev: loop0, Op: "W", End: "getrq"})
				s.tl.Add(event.OffCPU{Start: at(ms + 0.5), Duration: msd(2), Task: fio, KernelStack: tagWait})
			}
			fs := evaluate(t, defaults(t), s.run())
			if got := rulesOf(fs); !slices.Equal(got, []string{"tag-starvation"}) {
				t.Fatalf("findings %v", got)
			}
			if fs[0].Score != 16 || !strings.Contains(fs[0].Title, "waited for a free request tag 8 times") || !strings.Contains(fs[0].Explanation, tt.explain) {
				t.Errorf("score %v title %q explanation %q", fs[0].Score, fs[0].Title, fs[0].Explanation)
			}
		})
	}
}

func TestNothingFound(t *testing.T) {
	fs := evaluate(t, defaults(t), newScenario().fast(loop0).fast(sda).run())
	if len(fs) != 1 || fs[0].Rule != "nothing-found" || fs[0].Severity != Info || fs[0].Rank != 1 {
		t.Fatalf("findings %v", rulesOf(fs))
	}
	if want := "No cause of slow I/O found: 2 devices, 2000 requests, worst service p99 0.1 ms (loop0)"; fs[0].Title != want {
		t.Errorf("title %q, want %q", fs[0].Title, want)
	}
	// an empty run still says something
	fs = evaluate(t, defaults(t), nil)
	if len(fs) != 1 || fs[0].Title != "No cause of slow I/O found: 0 devices, 0 requests" {
		t.Errorf("empty run: %+v", fs)
	}
}

func TestEvaluateDeterministic(t *testing.T) {
	run := newScenario().fast(loop0).udevChain(loop0).slow(sda).run()
	first := evaluate(t, defaults(t), run)
	for range 20 {
		again := evaluate(t, defaults(t), run)
		if len(again) != len(first) {
			t.Fatal("different number of findings")
		}
		for i := range first {
			if again[i].Title != first[i].Title || again[i].Explanation != first[i].Explanation ||
				!slices.Equal(again[i].Processes, first[i].Processes) || again[i].Score != first[i].Score {
				t.Fatalf("run differs at %d", i)
			}
		}
	}
}

// writeRules writes rule files into a temporary directory.
func writeRules(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestRuntimeErrorNamesRule(t *testing.T) {
	dir := writeRules(t, map[string]string{"bad.yaml": `id: bad-index
title: x
severity: warning
scope: device
when: |
  Device.Stalls.Count() >= 0 &&
    Device.Stalls[100].Start > duration("1s")
`})
	extra, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	set := defaults(t).Merge(extra)
	fs, err := Evaluate(set, newScenario().fast(loop0).udevChain(loop0).run())
	want := filepath.Join(dir, "bad.yaml") + ":7:18: rule bad-index: when (on loop0): index out of range: 100 (array length is 10)"
	if err == nil || err.Error() != want {
		t.Errorf("error %v\nwant  %s", err, want)
	}
	var re RuleErrors
	if !errors.As(err, &re) || len(re) != 1 || re[0].Rule != "bad-index" || re[0].File != filepath.Join(dir, "bad.yaml") ||
		re[0].Line != 7 || re[0].Column != 18 || re[0].Device != "loop0" || re[0].Field != "when" {
		t.Errorf("error as RuleErrors: %+v", re)
	}
	if len(fs) != 1 || fs[0].Rule != "queue-freeze-stall" {
		t.Errorf("the other rules' findings are lost: %v", rulesOf(fs))
	}
}

func TestReplaceBuiltin(t *testing.T) {
	dir := writeRules(t, map[string]string{
		"quiet.yaml": `id: nothing-found
title: "all quiet on {{len .Run.Devices}} devices"
severity: info
scope: run
when: Findings == 0
`,
		"mine.yaml": `id: loop-busy
title: "{{.Device.Name}} served {{.Device.Service.Count}} requests"
severity: info
scope: device
when: Device.Service.Count > 0
score: ms(duration("5ms"))
explains: slow-device
`,
	})
	extra, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	set := defaults(t).Merge(extra)
	if n := len(defaults(t).Rules()); len(set.Rules()) != n+1 {
		t.Errorf("%d rules, want %d built-in + 1 new", len(set.Rules()), n)
	}
	fs := evaluate(t, set, newScenario().fast(loop0).run())
	if got := rulesOf(fs); !slices.Equal(got, []string{"loop-busy"}) {
		t.Fatalf("findings %v", got)
	}
	if fs[0].Score != 5 || fs[0].Title != "loop0 served 1000 requests" {
		t.Errorf("finding %+v", fs[0])
	}
	// with nothing found, the replaced rule speaks
	fs = evaluate(t, set, &facts.Run{Devices: []*facts.Device{{Name: "sdq"}, {Name: "sdr"}}})
	if len(fs) != 1 || fs[0].Title != "all quiet on 2 devices" {
		t.Errorf("replaced nothing-found: %+v", fs)
	}
}

func TestChainKeepsOrphanCause(t *testing.T) {
	// two periodic commands explain the same uevents: the better merges, the
	// other stays a finding of its own; without a target a cause stands alone.
	dir := writeRules(t, map[string]string{"cause.yaml": `id: loop-cause
title: "cause on {{.Device.Name}}"
severity: info
scope: device
when: "true"
score: "1"
explains: slow-device
`})
	extra, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	set := defaults(t).Merge(extra)
	fs := evaluate(t, set, newScenario().fast(loop0).slow(sda).run())
	if got, want := rulesOf(fs), []string{"slow-device", "loop-cause"}; !slices.Equal(got, want) {
		t.Fatalf("findings %v, want %v", got, want)
	}
	if want := []string{"loop-cause", "slow-device"}; !slices.Equal(stepsOf(fs[0]), want) || fs[1].Devices[0] != "loop0" {
		t.Errorf("sda chain %v; loop0 orphan %v", stepsOf(fs[0]), fs[1].Devices)
	}
}

// A device stacked on a frozen one (bcache0 on sda): its submissions that
// were slow while sda's queue was frozen, timed on bcache0 itself, are
// counted in the finding and named in its explanation; a slow one outside
// the freezes is not. Without such measurements the explanation says only
// that bcache0 is stacked there.
func TestStackedDeviceStalls(t *testing.T) {
	bcache0 := event.Device{Major: 252, Minor: 0, Name: "bcache0"}
	build := func(calls bool) []Finding {
		s := newScenario().fast(sda).udevChain(sda)
		s.tl.Holders = []event.Holder{{Upper: "bcache0", Lower: "sda"}}
		s.tl.Device(bcache0)
		if calls {
			for i := range 10 {
				ms := 1000 + float64(i)*2000 + 50 // udevChain freezes at +50: the wait from +51 to +71
				s.tl.Add(event.SubmitCall{Start: at(ms + 4), Latency: msd(18 - float64(i%2)), Task: fio, Dev: bcache0,
					Func: "submit_bio_noacct", Mechanism: event.MechFentry})
			}
			// Slow, but long before any freeze.
			s.tl.Add(event.SubmitCall{Start: at(300), Latency: msd(40), Task: fio, Dev: bcache0,
				Func: "submit_bio_noacct", Mechanism: event.MechFentry})
		}
		return evaluate(t, defaults(t), s.run())
	}
	ev := func(f Finding, name string) any {
		for _, e := range f.Evidence {
			if e.Name == name {
				return e.Value
			}
		}
		t.Fatalf("no evidence %s in %+v", name, f.Evidence)
		return nil
	}
	fs := build(true)
	if len(fs) == 0 || fs[0].Rule != "queue-freeze-stall" || !slices.Equal(fs[0].Devices, []string{"sda"}) {
		t.Fatalf("findings %v, want the freeze stall on sda first", rulesOf(fs))
	}
	f := fs[0]
	if n, max, devs := ev(f, "upper_stalls"), ev(f, "upper_stall_max_ms"), ev(f, "upper_stalled"); n != 10 || max != 18.0 ||
		!slices.Equal(devs.([]string), []string{"bcache0"}) {
		t.Errorf("upper stalls %v, max %v, on %v; want 10, 18 ms, bcache0", n, max, devs)
	}
	if want := "10 submissions to bcache0, stacked on sda, stalled meanwhile, up to 18 ms."; !strings.Contains(f.Explanation, want) {
		t.Errorf("explanation lacks %q:\n%s", want, f.Explanation)
	}

	f = build(false)[0]
	if n := ev(f, "upper_stalls"); n != 0 {
		t.Errorf("upper stalls %v without any measured on bcache0", n)
	}
	if want := "bcache0 is stacked on sda: I/O submitted to bcache0 can wait here too."; !strings.Contains(f.Explanation, want) ||
		strings.Contains(f.Explanation, "submissions to bcache0") {
		t.Errorf("explanation without measurements on bcache0 lacks %q:\n%s", want, f.Explanation)
	}
}

// A run rule sees what the device and command findings cover: their
// devices and the processes they name, threads by their process too.
func TestRunRuleSeesWhatIsExplained(t *testing.T) {
	dir := writeRules(t, map[string]string{
		"covered.yaml": `id: covered
title: "covered: {{.Ev.devices}}"
severity: info
scope: run
when: Explained.Device("loop0") && !Explained.Device("sda")
evidence:
  - devices: Explained.Devices
  - fio_named: Explained.Tasks.In(Explained.Tasks).Count() > 0 && len(filter(Explained.Tasks, .Comm == "fio" && .Tgid == 900)) > 0
`,
	})
	extra, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	fs := evaluate(t, defaults(t).Merge(extra), newScenario().fast(loop0).udevChain(loop0).run())
	var got *Finding
	for i := range fs {
		if fs[i].Rule == "covered" {
			got = &fs[i]
		}
	}
	if got == nil {
		t.Fatalf("the run rule did not see loop0's finding: %v", rulesOf(fs))
	}
	if got.Title != "covered: [loop0]" || got.Evidence[1].Value != true {
		t.Errorf("title %q, evidence %v", got.Title, got.Evidence)
	}
}

// A chain's finding explains the stages of all its rules; a rule that
// declares none explains every stage, and so does the chain then.
func TestChainExplainsItsRulesStages(t *testing.T) {
	tests := []struct {
		effect, cause, want []string
	}{
		{[]string{"queue_freeze"}, []string{"queue_freeze", "tag_wait"}, []string{"queue_freeze", "tag_wait"}},
		{[]string{"journal"}, nil, nil},
		{nil, []string{"journal"}, nil},
	}
	for _, tt := range tests {
		effect := &Finding{Rule: "effect", Devices: []string{"loop0"}, stages: slices.Clone(tt.effect)}
		merge(effect, &Finding{Rule: "cause", Devices: []string{"loop0"}, stages: slices.Clone(tt.cause)})
		if !slices.Equal(effect.stages, tt.want) || (tt.want == nil) != (effect.stages == nil) {
			t.Errorf("%v after %v: %v, want %v", tt.effect, tt.cause, effect.stages, tt.want)
		}
		e := explainedBy([]*item{{f: effect}})
		journal := tt.want == nil || slices.Contains(tt.want, "journal")
		if len(e.Covers) != 1 || !slices.Equal(e.Covers[0].Stages, tt.want) || e.Explains(1, "loop0", "journal") != journal {
			t.Errorf("covers %+v, want stages %v", e.Covers, tt.want)
		}
	}
}
