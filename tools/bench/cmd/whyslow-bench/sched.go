package main

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
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
	// Layout is whyslow's links per hook, read from its descriptors in
	// that run: what the "as many as whyslow's" floor row attaches.
	Layout []HookLinks `json:"layout,omitempty"`
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
	// ArmedSeconds and DisarmedSeconds, for whyslow in armed mode auto:
	// its reports' coverage, summed over the rounds.
	ArmedSeconds    float64 `json:"armed_seconds,omitempty"`
	DisarmedSeconds float64 `json:"disarmed_seconds,omitempty"`
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
	// key names a whyslow configuration in bench.armed.
	key string
}

// schedConfigs are the sched section's configurations: no tracing and
// whyslow first, then the floor (empty programs on the attach points
// whyslow uses on every system call and on every context switch and
// wake-up, and as many empty programs on each hook as whyslow has links
// there, from layout), with -sched-auto whyslow in armed mode auto, then,
// with -sched-also, another whyslow binary.
func (b *bench) schedConfigs(layout []HookLinks) []schedConfig {
	whyslow := func(bin string, extra ...string) func(string) (func() error, error) {
		return func(tag string) (func() error, error) {
			o := b.o.whyslow
			b.o.whyslow = bin
			ps, err := b.startWhyslow(tag, extra...)
			b.o.whyslow = o
			stop := func() error {
				err := stopAll(ps)
				// An armed mode's coverage: how long the hot-hook
				// programs were attached in the round.
				if rep, rerr := readReport(filepath.Join(b.dir, tag+".json")); err == nil && rerr == nil && rep.Coverage != nil {
					b.armed[bin+" "+strings.Join(extra, " ")] = append(b.armed[bin+" "+strings.Join(extra, " ")], [2]float64{rep.Coverage.ArmedSeconds, rep.Coverage.DisarmedSeconds})
				}
				return err
			}
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
		{"none", "no tracing", func(string) (func() error, error) { return nil, nil }, ""},
		{"whyslow", "whyslow diagnose storage", whyslow(b.o.whyslow), b.o.whyslow + " "},
	}
	if b.o.schedFloor {
		cs = append(cs,
			schedConfig{"empty-syscalls", "empty programs on `sys_enter` + `sys_exit`", empty("sys_enter", "sys_exit"), ""},
			schedConfig{"empty-sched", "empty programs on `sched_switch` + `sched_waking`", empty("sched_switch", "sched_waking"), ""},
			schedConfig{"empty-all", "empty programs on all four", empty(schedHooks...), ""},
		)
		// whyslow's layout as the kernel had it in the run that read it:
		// one program per hook where the probes chain theirs
		// (probes/hookchain.go, rqchain.go), more where they do not.
		if tps := floorHooks(layout); len(tps) > 0 {
			cs = append(cs, schedConfig{"empty-layout", layoutWhat(layout), empty(tps...), ""})
		}
	}
	if b.o.schedAuto {
		// Armed mode auto (experimental): on a quiet host its hot-hook
		// programs stay detached unless a trouble signal (PSI is
		// host-wide) arms it; its report's coverage says for how long.
		cs = append(cs, schedConfig{"whyslow-auto", "whyslow diagnose storage `--armed-mode=auto` (experimental)", whyslow(b.o.whyslow, "--armed-mode=auto"), b.o.whyslow + " --armed-mode=auto"})
	}
	if b.o.schedAlso != "" {
		cs = append(cs, schedConfig{"whyslow-also", fmt.Sprintf("whyslow diagnose storage (`%s`)", b.o.schedAlso), whyslow(b.o.schedAlso), b.o.schedAlso + " "})
	}
	return cs
}

func (b *bench) sched() error {
	b.armed = map[string][][2]float64{}
	res := &SchedResult{Command: fmt.Sprintf("taskset -c 0 perf bench sched pipe -l %d", pipeLoops), Rounds: b.o.schedRuns}
	// First whyslow's own: its programs' run time, and the links it
	// holds on each hook, which the floor row of its layout copies.
	if err := b.schedStats(res); err != nil {
		return err
	}
	cs := b.schedConfigs(res.Layout)
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
		row := SchedRow{Name: cs[i].name, What: cs[i].what, UsPerOp: spreadOf(us[i]), Ratio: spreadOf(ratio[i])}
		for _, c := range b.armed[cs[i].key] {
			row.ArmedSeconds += c[0]
			row.DisarmedSeconds += c[1]
		}
		res.Rows = append(res.Rows, row)
	}
	res.None, res.Whyslow, res.Ratio = spreadOf(none), spreadOf(ws), spreadOf(ratio[1])
	b.res.Sched = res
	return nil
}

// schedStats runs whyslow once with kernel.bpf_stats_enabled during a
// ping-pong: the run time of its programs on sched_switch and
// sched_waking per context switch and wake-up, and its links per hook
// (res.Layout).
func (b *bench) schedStats(res *SchedResult) error {
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
	pid := ps[0].pid()
	layout, lerr := linkLayout(pid)
	// The programs the kernel dispatches on each hook: those linked
	// there (a program tail-called behind one runs inside its run, and
	// the kernel counts its time there).
	on := map[string]map[int]bool{"sched_switch": progIDsOn(pid, "sched_switch"), "sched_waking": progIDsOn(pid, "sched_waking")}
	before, err := progStats(on["sched_switch"], on["sched_waking"])
	if err == nil {
		_, err = pipeBench()
	}
	after, err2 := progStats(on["sched_switch"], on["sched_waking"])
	if serr := stopAll(ps); err == nil {
		err = serr
	}
	err = errors.Join(err, err2, lerr)
	if err != nil {
		return err
	}
	res.Layout = layout
	b.logf("sched: whyslow's links per hook: %s", layoutText(layout))
	// Every whyslow program on each tracepoint: their run times summed,
	// per context switch or wake-up (the runs of the busiest one).
	perRun := func(ids map[int]bool) float64 {
		var ns, runs float64
		for id := range ids {
			a, bf := after[id], before[id]
			if a.runCount <= bf.runCount {
				continue
			}
			ns, runs = ns+a.runTime-bf.runTime, max(runs, a.runCount-bf.runCount)
		}
		if runs == 0 {
			return 0
		}
		return ns / runs
	}
	res.NsPerSwitch, res.NsPerWakeup = perRun(on["sched_switch"]), perRun(on["sched_waking"])
	return nil
}
