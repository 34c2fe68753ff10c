package facts

import (
	"math/rand"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// pipelineTimeline has raidmon (pid 100) run `arcconf | grep` every 2 s and
// an unrelated cron job every 3 s; arcconf starts first when arcconfFirst.
func pipelineTimeline(runs int, arcconfFirst, arcconfWritesUevent bool) *timeline.Timeline {
	tl := &timeline.Timeline{Start: 0, End: event.Mono(time.Duration(runs) * 2 * time.Second)}
	pid := uint32(1000)
	for i := 0; i < runs; i++ {
		at := event.Mono(time.Duration(i) * 2 * time.Second)
		a, g := at, at.Add(3*time.Millisecond)
		if !arcconfFirst {
			a, g = g, a
		}
		tl.Add(event.Exec{Time: a, Task: event.Task{Pid: pid, Tgid: pid, Comm: "arcconf"}, PPid: 100, ParentComm: "raidmon", Filename: "/usr/sbin/arcconf", Args: []string{"arcconf", "getconfig", "1"}})
		tl.Add(event.Exec{Time: g, Task: event.Task{Pid: pid + 1, Tgid: pid + 1, Comm: "grep"}, PPid: 100, ParentComm: "raidmon", Filename: "/usr/bin/grep", Args: []string{"grep", "Temperature"}})
		if arcconfWritesUevent {
			tl.Add(event.SysfsWrite{Time: a.Add(time.Millisecond), Task: event.Task{Pid: pid, Tgid: pid, Comm: "arcconf"}, Path: "/sys/block/sda/uevent", Device: "sda", Attr: "uevent"})
		}
		tl.Add(event.Exec{Time: event.Mono(time.Duration(i)*3*time.Second + 500*time.Millisecond), Task: event.Task{Pid: pid + 2, Tgid: pid + 2, Comm: "logrotate"}, PPid: 1, ParentComm: "cron", Filename: "/usr/sbin/logrotate"})
		pid += 3
	}
	tl.Sort()
	return tl
}

func TestPipelinesFoldIntoTheirLeader(t *testing.T) {
	tests := []struct {
		name         string
		arcconfFirst bool
		writes       bool
		wantLeader   string
		wantPipeline string
	}{
		{"first started leads", true, false, "arcconf", "arcconf getconfig 1 | grep Temperature"},
		{"grep first, no evidence: grep leads", false, false, "grep", "grep Temperature | arcconf getconfig 1"},
		{"the uevent writer leads even when started second", false, true, "arcconf", "arcconf getconfig 1 | grep Temperature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			run := Build(pipelineTimeline(6, tt.arcconfFirst, tt.writes), Options{})
			var comms []string
			var lead *Command
			for _, c := range run.Commands {
				comms = append(comms, c.Comm)
				if c.ParentComm == "raidmon" {
					lead = c
				}
			}
			if len(run.Commands) != 2 {
				t.Fatalf("commands %v, want the raidmon pipeline folded into one, and logrotate", comms)
			}
			if lead == nil || lead.Comm != tt.wantLeader {
				t.Fatalf("raidmon's command is %+v, want leader %s", lead, tt.wantLeader)
			}
			if lead.Pipeline != tt.wantPipeline {
				t.Errorf("pipeline %q, want %q", lead.Pipeline, tt.wantPipeline)
			}
			if !lead.Periodic || lead.Count != 6 {
				t.Errorf("leader count %d periodic %v, want 6 runs, periodic", lead.Count, lead.Periodic)
			}
		})
	}
}

func TestCommandsThatDoNotRunTogetherStayApart(t *testing.T) {
	run := Build(pipelineTimeline(6, true, false), Options{})
	for _, c := range run.Commands {
		if c.Comm == "logrotate" && c.Pipeline != "" {
			t.Fatalf("logrotate was folded into a pipeline: %q", c.Pipeline)
		}
	}
	// A single run together is not a pipeline.
	run = Build(pipelineTimeline(1, true, false), Options{})
	if len(run.Commands) != 3 {
		t.Fatalf("with one run, %d commands, want 3 separate ones", len(run.Commands))
	}
}

func TestTasksInAndPlus(t *testing.T) {
	udev := Task{Pid: 10, Tgid: 10, Comm: "(udev-worker)"}
	irq := Task{Pid: 14, Tgid: 14, Comm: "ksoftirqd/0"}
	fioThread := Task{Pid: 21, Tgid: 20, Comm: "fio"}
	tests := []struct {
		name string
		t, o Tasks
		want []string
	}{
		{"only tasks of o's processes", Tasks{udev, irq}, Tasks{{Pid: 10, Comm: "(udev-worker)"}}, []string{"(udev-worker)"}},
		{"a thread of o's process", Tasks{fioThread}, Tasks{{Pid: 20}}, []string{"fio"}},
		{"none", Tasks{irq}, Tasks{udev}, nil},
		{"empty o", Tasks{udev}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.t.In(tt.o)
			var comms []string
			for _, x := range got {
				comms = append(comms, x.Comm)
			}
			if len(comms) != len(tt.want) || (len(comms) > 0 && comms[0] != tt.want[0]) {
				t.Fatalf("In = %v, want %v", comms, tt.want)
			}
		})
	}
	if got := (Tasks{udev}).Plus(Tasks{udev, irq}); len(got) != 2 {
		t.Fatalf("Plus = %+v, want udev and irq once each", got)
	}
}

// `arcconf | grep Temperature; sleep 2`: sleep starts right after the
// pipeline ended, within PipelineWindow, but never runs beside it.
func TestSequentialCommandIsNotInThePipeline(t *testing.T) {
	tl := &timeline.Timeline{Start: 0, End: event.Mono(20 * time.Second)}
	pid := uint32(1000)
	ms := func(d int) time.Duration { return time.Duration(d) * time.Millisecond }
	for i := 0; i < 6; i++ {
		at := event.Mono(time.Duration(i) * 2 * time.Second)
		tl.Add(event.Exec{Time: at.Add(ms(1)), Forked: at, Task: event.Task{Pid: pid, Tgid: pid, Comm: "arcconf"}, PPid: 100, ParentComm: "raidmon", Filename: "/usr/sbin/arcconf", Args: []string{"arcconf"}})
		// arcconf exits before grep gets to exec: only the fork times
		// show that they ran together.
		tl.Add(event.Exec{Time: at.Add(ms(3)), Forked: at.Add(ms(0)), Task: event.Task{Pid: pid + 1, Tgid: pid + 1, Comm: "grep"}, PPid: 100, ParentComm: "raidmon", Filename: "/usr/bin/grep", Args: []string{"grep", "Temperature"}})
		tl.Add(event.Exit{Time: at.Add(ms(2)), Pid: pid})
		tl.Add(event.Exit{Time: at.Add(ms(6)), Pid: pid + 1})
		tl.Add(event.Exec{Time: at.Add(ms(8)), Forked: at.Add(ms(7)), Task: event.Task{Pid: pid + 2, Tgid: pid + 2, Comm: "sleep"}, PPid: 100, ParentComm: "raidmon", Filename: "/usr/bin/sleep", Args: []string{"sleep", "2"}})
		tl.Add(event.Exit{Time: at.Add(ms(1990)), Pid: pid + 2})
		pid += 3
	}
	tl.Sort()
	run := Build(tl, Options{})
	var got []string
	for _, c := range run.Commands {
		got = append(got, c.Comm+"="+c.Pipeline)
	}
	want := []string{"arcconf=arcconf | grep Temperature", "sleep="}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("commands %q, want %q", got, want)
	}
}

// A script that runs cat: cat is part of the script's command, not a
// command of its own; the script itself is a command of its own.
func TestCommandsRunByACommandAreUnderIt(t *testing.T) {
	tl := &timeline.Timeline{Start: 0, End: event.Mono(20 * time.Second)}
	pid := uint32(1000)
	for i := 0; i < 5; i++ {
		at := event.Mono(time.Duration(i) * 2 * time.Second)
		tl.Add(event.Exec{Time: at, Task: event.Task{Pid: pid, Tgid: pid, Comm: "arcconf"}, PPid: 100, ParentComm: "raidmon", Filename: "/usr/sbin/arcconf", Args: []string{"arcconf", "getconfig"}})
		tl.Add(event.Exec{Time: at.Add(time.Millisecond), Task: event.Task{Pid: pid + 1, Tgid: pid + 1, Comm: "cat"}, PPid: pid, ParentComm: "arcconf", Filename: "/usr/bin/cat", Args: []string{"cat"}})
		pid += 2
	}
	tl.Sort()
	run := Build(tl, Options{})
	under := map[string]string{}
	for _, c := range run.Commands {
		under[c.Comm] = c.Under
	}
	if under["cat"] != "arcconf getconfig" || under["arcconf"] != "" {
		t.Fatalf("Under = %q, want cat under \"arcconf getconfig\" and arcconf on its own", under)
	}
}

// Only candidate pairs are compared: every pair that runs together is
// among them, whatever the commands, and commands that never recur or never
// start near each other make none (a trace of many distinct commands took
// minutes when every pair was compared).
func TestPipelineCandidatesMissNoPair(t *testing.T) {
	rnd := rand.New(rand.NewSource(7))
	together := 0
	for round := range 200 {
		var cmds []*Command
		for c := range 2 + rnd.Intn(6) {
			n := 1 + rnd.Intn(6)
			cmd := &Command{ParentComm: []string{"sh", "cron"}[rnd.Intn(2)], Count: n}
			for i := range n {
				at := time.Duration(rnd.Intn(8)) * 150 * time.Millisecond
				cmd.Execs = append(cmd.Execs, Point{At: at, Pid: uint32(100*c + i)})
				cmd.PPids = append(cmd.PPids, uint32(rnd.Intn(2)))
				cmd.Ends = append(cmd.Ends, 0)
				cmd.Forks = append(cmd.Forks, at)
			}
			cmds = append(cmds, cmd)
		}
		candidates := map[[2]int]bool{}
		for _, p := range pipelineCandidates(cmds) {
			candidates[p] = true
		}
		for i := range cmds {
			for j := i + 1; j < len(cmds); j++ {
				if runTogether(cmds[i], cmds[j]) && runTogether(cmds[j], cmds[i]) {
					together++
					if !candidates[[2]int{i, j}] {
						t.Fatalf("round %d: commands %d and %d run together but are no candidates", round, i, j)
					}
				}
			}
		}
	}
	if together < 20 {
		t.Fatalf("only %d pairs ran together: the test tests little", together)
	}
	var distinct []*Command
	for i := range 5000 {
		at := time.Duration(i) * time.Millisecond
		distinct = append(distinct, &Command{ParentComm: "sh", Count: 1, Execs: Points{{At: at}}, PPids: []uint32{1}, Ends: []time.Duration{0}, Forks: []time.Duration{at}})
	}
	if got := pipelineCandidates(distinct); len(got) != 0 {
		t.Errorf("%d candidate pairs among commands run once", len(got))
	}
}
