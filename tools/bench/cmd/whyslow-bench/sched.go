package main

import (
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"time"
)

// SchedResult is the context-switch benchmark: a pipe ping-pong between two
// processes on one CPU (perf bench sched pipe: two switches per round
// trip), with and without whyslow, in alternating rounds.
type SchedResult struct {
	Command string `json:"command"`
	Rounds  int    `json:"rounds"`
	None    spread `json:"none_us_per_op"`
	Whyslow spread `json:"whyslow_us_per_op"`
	Ratio   spread `json:"ratio"` // whyslow / none, same round
	// NsPerSwitch is the run time of whyslow's sched_switch programs per
	// context switch, and NsPerWakeup that of its sched_waking programs per
	// wake-up, measured in a run of its own with kernel.bpf_stats_enabled.
	NsPerSwitch float64 `json:"ns_per_switch"`
	NsPerWakeup float64 `json:"ns_per_wakeup"`
	// Rows are the other configurations of the same rounds: empty
	// programs on whyslow's attach points (the floor), another binary.
	Rows []SchedRow `json:"rows,omitempty"`
}

// SchedRow is one more configuration of the context-switch benchmark.
type SchedRow struct {
	Name    string `json:"name"`
	What    string `json:"what"`
	UsPerOp spread `json:"us_per_op"`
	Ratio   spread `json:"ratio"` // against no tracing, same round
}

const pipeLoops = 100000

var usecsPerOp = regexp.MustCompile(`([0-9.]+) usecs/op`)

func pipeBench() (float64, error) {
	out, err := exec.Command("taskset", "-c", "0", "perf", "bench", "sched", "pipe", "-l", strconv.Itoa(pipeLoops)).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("perf bench sched pipe: %v: %s", err, out)
	}
	m := usecsPerOp.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("perf bench sched pipe: no usecs/op in %q", out)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

// schedConfig is one way of running the pipe ping-pong: start attaches
// what it measures and returns what detaches it (nil for nothing).
type schedConfig struct {
	name, what string
	start      func(tag string) (func() error, error)
}

// schedConfigs are the sched section's configurations: no tracing and
// whyslow first, then the floor (empty programs on the attach points
// whyslow uses on every system call and on every context switch and
// wake-up), then, with -sched-also, another whyslow binary.
func (b *bench) schedConfigs() []schedConfig {
	whyslow := func(bin string) func(string) (func() error, error) {
		return func(tag string) (func() error, error) {
			o := b.o.whyslow
			b.o.whyslow = bin
			ps, err := b.startWhyslow(tag)
			b.o.whyslow = o
			stop := func() error { return stopAll(ps) }
			if err != nil {
				return nil, errors.Join(err, stop())
			}
			return stop, nil
		}
	}
	empty := func(tps ...string) func(string) (func() error, error) {
		return func(string) (func() error, error) { return emptyPrograms(tps...) }
	}
	cs := []schedConfig{
		{"none", "no tracing", func(string) (func() error, error) { return nil, nil }},
		{"whyslow", "whyslow diagnose storage", whyslow(b.o.whyslow)},
	}
	if b.o.schedFloor {
		cs = append(cs,
			schedConfig{"empty-syscalls", "empty programs on `sys_enter` + `sys_exit`", empty("sys_enter", "sys_exit")},
			schedConfig{"empty-sched", "empty programs on `sched_switch` + `sched_waking`", empty("sched_switch", "sched_waking")},
			schedConfig{"empty-all", "empty programs on all four", empty("sys_enter", "sys_exit", "sched_switch", "sched_waking")},
			// whyslow's layout: the syscall probe's programs on all four,
			// offcpu's on sys_exit, sched_switch and sched_waking too.
			schedConfig{"empty-layout", "empty programs as many as whyslow's: 1 on `sys_enter`, 2 on each of the others", empty("sys_enter", "sys_exit", "sys_exit", "sched_switch", "sched_switch", "sched_waking", "sched_waking")},
		)
	}
	if b.o.schedAlso != "" {
		cs = append(cs, schedConfig{"whyslow-also", fmt.Sprintf("whyslow diagnose storage (`%s`)", b.o.schedAlso), whyslow(b.o.schedAlso)})
	}
	return cs
}

func (b *bench) sched() error {
	res := &SchedResult{Command: fmt.Sprintf("taskset -c 0 perf bench sched pipe -l %d", pipeLoops), Rounds: b.o.schedRuns}
	cs := b.schedConfigs()
	us := make([][]float64, len(cs))    // per configuration, per round
	ratio := make([][]float64, len(cs)) // against none in the same round
	for r := 0; r < b.o.schedRuns; r++ {
		v := make([]float64, len(cs))
		for k := range cs {
			// Rotate the order from round to round.
			i := (r + k) % len(cs)
			stop, err := cs[i].start(fmt.Sprintf("sched-%s-%d", cs[i].name, r))
			if err != nil {
				return fmt.Errorf("sched, %s: %w", cs[i].name, err)
			}
			v[i], err = pipeBench()
			if stop != nil {
				if serr := stop(); err == nil {
					err = serr
				}
			}
			if err != nil {
				return err
			}
			time.Sleep(300 * time.Millisecond)
		}
		line := fmt.Sprintf("round %d/%d:", r+1, b.o.schedRuns)
		for i := range cs {
			us[i] = append(us[i], v[i])
			ratio[i] = append(ratio[i], v[i]/v[0])
			line += fmt.Sprintf(" %s %.2f", cs[i].name, v[i])
		}
		b.logf("%s µs/op", line)
	}
	none, ws := us[0], us[1]
	for i := 2; i < len(cs); i++ {
		res.Rows = append(res.Rows, SchedRow{Name: cs[i].name, What: cs[i].what, UsPerOp: spreadOf(us[i]), Ratio: spreadOf(ratio[i])})
	}
	res.None, res.Whyslow, res.Ratio = spreadOf(none), spreadOf(ws), spreadOf(ratio[1])

	// The programs' own run time, in a run of its own.
	restore, err := enableRunTimeStats()
	if err != nil {
		return err
	}
	defer restore()
	ps, err := b.startWhyslow("sched-stats")
	if err != nil {
		stopAll(ps)
		return err
	}
	ids := progIDs(ps[0].pid())
	before, err := progStats(ids)
	if err == nil {
		_, err = pipeBench()
	}
	after, err2 := progStats(ids)
	if serr := stopAll(ps); err == nil {
		err = serr
	}
	if err == nil {
		err = err2
	}
	if err != nil {
		return err
	}
	// Every whyslow program on each tracepoint (the offcpu and syscall
	// probes each have one): their run times summed, per context switch or
	// wake-up (the runs of the busiest one).
	var swNs, swRuns, wkNs, wkRuns float64
	for id := range ids {
		a, bf := after[id], before[id]
		if a.runCount <= bf.runCount {
			continue
		}
		dt, dc := a.runTime-bf.runTime, a.runCount-bf.runCount
		switch a.name {
		case "offcpu_switch", "sc_switch":
			swNs, swRuns = swNs+dt, max(swRuns, dc)
		case "offcpu_wakeup", "sc_waking":
			wkNs, wkRuns = wkNs+dt, max(wkRuns, dc)
		}
	}
	if swRuns > 0 {
		res.NsPerSwitch = swNs / swRuns
	}
	if wkRuns > 0 {
		res.NsPerWakeup = wkNs / wkRuns
	}
	b.res.Sched = res
	return nil
}
