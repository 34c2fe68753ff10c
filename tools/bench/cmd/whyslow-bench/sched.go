package main

import (
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

func (b *bench) sched() error {
	res := &SchedResult{Command: fmt.Sprintf("taskset -c 0 perf bench sched pipe -l %d", pipeLoops), Rounds: b.o.schedRuns}
	var none, ws, ratio []float64
	for r := 0; r < b.o.schedRuns; r++ {
		var n, w float64
		for k := 0; k < 2; k++ {
			withWhyslow := (r+k)%2 == 1
			var ps []*proc
			var err error
			if withWhyslow {
				if ps, err = b.startWhyslow(fmt.Sprintf("sched-%d", r)); err != nil {
					stopAll(ps)
					return err
				}
			}
			v, err := pipeBench()
			if serr := stopAll(ps); err == nil {
				err = serr
			}
			if err != nil {
				return err
			}
			if withWhyslow {
				w = v
			} else {
				n = v
			}
			time.Sleep(300 * time.Millisecond)
		}
		none, ws, ratio = append(none, n), append(ws, w), append(ratio, w/n)
		b.logf("round %d/%d: %.2f µs/op without, %.2f with whyslow", r+1, b.o.schedRuns, n, w)
	}
	res.None, res.Whyslow, res.Ratio = spreadOf(none), spreadOf(ws), spreadOf(ratio)

	// The programs' own run time, in a run of its own.
	restore, err := sysctl("kernel.bpf_stats_enabled", "1")
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
