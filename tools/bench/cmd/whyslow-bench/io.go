package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
)

// The loop device of the io and storm sections: over a file in tmpfs, with
// direct I/O to it, the fastest block device this machine has that every
// tool traces (request-based: zram would give biolatency nothing to see).
const loopSize = 1 << 30

func (b *bench) setupLoop() (func(), error) {
	backing := filepath.Join("/dev/shm", fmt.Sprintf("whyslow-bench-%d.img", os.Getpid()))
	f, err := os.Create(backing)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(loopSize); err != nil {
		f.Close()
		os.Remove(backing)
		return nil, err
	}
	f.Close()
	out, err := exec.Command("losetup", "--find", "--show", "--direct-io=on", backing).CombinedOutput()
	if err != nil {
		os.Remove(backing)
		return nil, fmt.Errorf("losetup: %v: %s", err, out)
	}
	b.loop = strings.TrimSpace(string(out))
	dio, _ := os.ReadFile(filepath.Join("/sys/block", filepath.Base(b.loop), "loop/dio"))
	b.logf("loop device %s over %s (direct I/O: %s)", b.loop, backing, strings.TrimSpace(string(dio)))
	return func() {
		_ = exec.Command("losetup", "-d", b.loop).Run()
		os.Remove(backing)
	}, nil
}

// fioConfig is one way to drive the device.
type fioConfig struct {
	Engine  string `json:"engine"`
	Depth   int    `json:"iodepth"`
	Jobs    int    `json:"numjobs"`
	Runtime string `json:"runtime"`
}

func (c fioConfig) String() string {
	return fmt.Sprintf("fio --rw=randwrite --bs=4k --direct=1 --ioengine=%s --iodepth=%d --numjobs=%d", c.Engine, c.Depth, c.Jobs)
}

// fioRun is what one fio run measured.
type fioRun struct {
	IOPS  float64 `json:"iops"`
	P99us float64 `json:"p99_us"` // completion latency
	IOs   float64 `json:"ios"`
}

// fioGrace is how long fio may take past its ramp and runtime to end.
const fioGrace = 2 * time.Minute

func (b *bench) runFio(c fioConfig, runtime time.Duration) (fioRun, error) {
	args := []string{"--name=bench", "--filename=" + b.loop, "--rw=randwrite", "--bs=4k", "--direct=1",
		"--ioengine=" + c.Engine, "--iodepth=" + strconv.Itoa(c.Depth), "--numjobs=" + strconv.Itoa(c.Jobs),
		"--group_reporting", "--time_based", "--ramp_time=1", fmt.Sprintf("--runtime=%dms", runtime.Milliseconds()),
		"--size=512M", "--randrepeat=0", "--output-format=json"}
	// fio ends by itself after its ramp and runtime; one that has not ended
	// fioGrace later is killed and named, not waited for.
	ctx, cancel := context.WithTimeout(context.Background(), runtime+time.Second+fioGrace)
	defer cancel()
	out, err := exec.CommandContext(ctx, "fio", args...).Output()
	if ctx.Err() != nil {
		return fioRun{}, fmt.Errorf("fio did not end within %v of its %v runtime: killed", fioGrace, runtime)
	}
	if err != nil {
		return fioRun{}, fmt.Errorf("fio: %v", err)
	}
	var res struct {
		Jobs []struct {
			Write struct {
				IOPS     float64 `json:"iops"`
				TotalIOs float64 `json:"total_ios"`
				Clat     struct {
					Percentile map[string]float64 `json:"percentile"`
				} `json:"clat_ns"`
			} `json:"write"`
		} `json:"jobs"`
	}
	// fio may print warnings before the JSON.
	if i := strings.IndexByte(string(out), '{'); i > 0 {
		out = out[i:]
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) == 0 {
		return fioRun{}, fmt.Errorf("fio output: %v", err)
	}
	w := res.Jobs[0].Write
	return fioRun{IOPS: w.IOPS, P99us: w.Clat.Percentile["99.000000"] / 1000, IOs: w.TotalIOs}, nil
}

// calibrate picks the fio configuration with the highest IOPS.
func (b *bench) calibrate() ([]CalibRow, error) {
	candidates := []fioConfig{
		{Engine: "libaio", Depth: 32, Jobs: 2}, {Engine: "io_uring", Depth: 32, Jobs: 2},
		{Engine: "io_uring", Depth: 16, Jobs: 1}, {Engine: "libaio", Depth: 8, Jobs: 2}, {Engine: "psync", Depth: 1, Jobs: 2},
	}
	iops := make([][]float64, len(candidates))
	for pass := 0; pass < 3; pass++ {
		for i, c := range candidates {
			r, err := b.runFio(c, 3*time.Second)
			if err != nil {
				return nil, err
			}
			iops[i] = append(iops[i], r.IOPS)
		}
	}
	var rows []CalibRow
	best := -1
	for i, c := range candidates {
		rows = append(rows, CalibRow{Config: c.String(), IOPS: median(iops[i])})
		if best < 0 || median(iops[i]) > median(iops[best]) {
			best = i
		}
	}
	rows[best].Chosen = true
	b.fio = candidates[best]
	b.fio.Runtime = b.o.fioTime.String()
	b.logf("fastest: %s, %.0f IOPS", b.fio, median(iops[best]))
	return rows, nil
}

// CalibRow is one candidate fio configuration and the IOPS it reached.
type CalibRow struct {
	Config string  `json:"config"`
	IOPS   float64 `json:"iops"`
	Chosen bool    `json:"chosen"`
}

// tool is a tracing configuration of the comparison.
type tool struct {
	name, what string
	start      func(b *bench, tag string) ([]*proc, error)
	runs       []string // the programs start runs, besides whyslow
}

var tools = []tool{
	{"none", "no tracing", func(*bench, string) ([]*proc, error) { return nil, nil }, nil},
	{"whyslow", "`whyslow diagnose storage` (every probe, defaults)", func(b *bench, tag string) ([]*proc, error) { return b.startWhyslow(tag) }, nil},
	{"libbpf-tools", "`biolatency` + `execsnoop` (libbpf-tools)", (*bench).startLibbpfTools, []string{"stdbuf", "biolatency", "execsnoop"}},
	{"bpftrace", "`bpftrace tools/bench/biosched.bt` (same block and sched probes)", (*bench).startBpftrace, []string{"stdbuf", "bpftrace"}},
}

const readyTimeout = 60 * time.Second

// startWhyslow runs `whyslow diagnose storage` until stopped, with its JSON
// report in the work directory as tag.json.
func (b *bench) startWhyslow(tag string, extra ...string) ([]*proc, error) {
	ready := filepath.Join(b.dir, tag+".ready")
	args := append([]string{"diagnose", "storage", "--duration", "2h",
		"--format", "json", "--output", filepath.Join(b.dir, tag+".json"), "--ready-file", ready}, extra...)
	p, err := startWhyslowProc("whyslow", readiness{file: ready}, b.o.whyslow, args...)
	if err != nil {
		return nil, err
	}
	return []*proc{p}, p.waitReady(readyTimeout)
}

var (
	biolatencyReady = regexp.MustCompile(`^Tracing block device I/O`)
	execsnoopReady  = regexp.MustCompile(`^PCOMM`)
	bpftraceReady   = regexp.MustCompile(`^ready$`)
)

func (b *bench) startLibbpfTools(string) ([]*proc, error) {
	bio, err := startProc("biolatency", readiness{line: biolatencyReady}, "stdbuf", "-oL", "biolatency")
	if err != nil {
		return nil, err
	}
	ps := []*proc{bio}
	ex, err := startProc("execsnoop", readiness{line: execsnoopReady}, "stdbuf", "-oL", "execsnoop")
	if err != nil {
		return ps, err
	}
	ps = append(ps, ex)
	for _, p := range ps {
		if err := p.waitReady(readyTimeout); err != nil {
			return ps, err
		}
	}
	return ps, nil
}

func (b *bench) startBpftrace(string) ([]*proc, error) {
	p, err := startProc("bpftrace", readiness{line: bpftraceReady}, "stdbuf", "-oL", "bpftrace", b.o.script)
	if err != nil {
		return nil, err
	}
	return []*proc{p}, p.waitReady(readyTimeout)
}

func stopAll(ps []*proc) error {
	var first error
	for _, p := range ps {
		if err := p.stop(2 * time.Minute); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// IOResult is the I/O overhead comparison.
type IOResult struct {
	Device      string           `json:"device"`
	Probes      []ProbeMech      `json:"probes,omitempty"` // what whyslow's probes ran on
	Fio         fioConfig        `json:"fio"`
	Calibration []CalibRow       `json:"calibration"`
	Rounds      int              `json:"rounds"`
	Configs     []IOConfigResult `json:"configs"`
}

// IOConfigResult is one configuration over every round.
type IOConfigResult struct {
	Name  string   `json:"name"`
	What  string   `json:"what"`
	IOPS  spread   `json:"iops"`
	P99us spread   `json:"p99_us"`
	Runs  []fioRun `json:"runs"`
	// Ratios to the run without tracing of the same round.
	IOPSRatio spread `json:"iops_ratio"`
	P99Ratio  spread `json:"p99_ratio"`
	Lost      uint64 `json:"lost_events,omitempty"` // whyslow: events lost over all rounds
	// Losses are whyslow's reports' losses over all rounds.
	Losses []LossLine `json:"losses,omitempty"`
}

func (b *bench) io() error {
	var cal []CalibRow
	var err error
	if b.o.fio != "" {
		if b.fio, err = parseFio(b.o.fio); err != nil {
			return err
		}
		b.fio.Runtime = b.o.fioTime.String()
	} else if cal, err = b.calibrate(); err != nil {
		return err
	}
	res := &IOResult{Device: deviceLabel(b.loop, b.o.device != ""), Fio: b.fio, Calibration: cal, Rounds: b.o.rounds}
	configs := b.tools
	runs := make([][]fioRun, len(configs))
	var lost uint64
	var losses []LossLine
	for r := 0; r < b.o.rounds; r++ {
		for k := range configs {
			i := (r + k) % len(configs) // rotate the order every round
			t := configs[i]
			tag := fmt.Sprintf("io-%s-%d", t.name, r)
			ps, err := t.start(b, tag)
			if err != nil {
				stopAll(ps)
				return err
			}
			fr, err := b.runFio(b.fio, b.o.fioTime)
			if serr := stopAll(ps); err == nil {
				err = serr
			}
			if err != nil {
				return err
			}
			if t.name == "whyslow" {
				rep, err := readReport(filepath.Join(b.dir, tag+".json"))
				if err != nil {
					return fmt.Errorf("whyslow's report of round %d: %w", r+1, err)
				}
				lost += rep.LostEvents
				losses = addLosses(losses, rep)
				if res.Probes == nil {
					res.Probes = rep.Probes
				}
			}
			runs[i] = append(runs[i], fr)
			b.logf("round %d/%d %-12s %8.0f IOPS  p99 %6.0f µs", r+1, b.o.rounds, t.name, fr.IOPS, fr.P99us)
			time.Sleep(500 * time.Millisecond)
		}
	}
	for i, t := range configs {
		if len(runs[i]) == 0 {
			continue // -rounds 0: the cost section alone
		}
		c := IOConfigResult{Name: t.name, What: t.what, Runs: runs[i]}
		var iops, p99, ri, rp []float64
		for r, fr := range runs[i] {
			iops = append(iops, fr.IOPS)
			p99 = append(p99, fr.P99us)
			ri = append(ri, fr.IOPS/runs[0][r].IOPS)
			rp = append(rp, fr.P99us/runs[0][r].P99us)
		}
		c.IOPS, c.P99us, c.IOPSRatio, c.P99Ratio = spreadOf(iops), spreadOf(p99), spreadOf(ri), spreadOf(rp)
		if t.name == "whyslow" {
			c.Lost, c.Losses = lost, losses
		}
		res.Configs = append(res.Configs, c)
	}
	b.res.IO = res
	return b.cost()
}

// ProbeMech is a probe of whyslow's report and the mechanism it ran on.
type ProbeMech struct {
	Name      string `json:"name"`
	Mechanism string `json:"mechanism"`
	Status    string `json:"status"`
}

// report is the part of whyslow's JSON report the benchmark reads.
type report struct {
	LostEvents uint64      `json:"lost_events"`
	Probes     []ProbeMech `json:"probes"`
	Losses     []LossLine  `json:"losses"`
	Devices    []struct {
		Name    string `json:"name"`
		Uevents struct {
			Count int `json:"count"`
		} `json:"uevents"`
	} `json:"devices"`
	DurationSeconds float64 `json:"duration_seconds"`
	// Coverage is there for a run in an armed mode: how long its
	// hot-hook programs were attached.
	Coverage *struct {
		ArmedSeconds    float64 `json:"armed_seconds"`
		DisarmedSeconds float64 `json:"disarmed_seconds"`
	} `json:"coverage"`
}

func readReport(path string) (*report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}

// CostResult is the BPF run time per I/O of whyslow and biolatency, both
// attached during the same fio runs, from kernel.bpf_stats_enabled.
type CostResult struct {
	Rounds int        `json:"rounds"`
	Tools  []ToolCost `json:"tools"`
	// LostEvents and Losses are whyslow's reports' over the rounds.
	LostEvents *uint64    `json:"lost_events,omitempty"`
	Losses     []LossLine `json:"losses,omitempty"`
}

// ToolCost is one tool's BPF cost per I/O, with each program's share.
type ToolCost struct {
	Name     string        `json:"name"`
	NsPerIO  spread        `json:"ns_per_io"`
	Programs []ProgramCost `json:"programs"`
}

// ProgramCost is one BPF program's medians over the rounds.
type ProgramCost struct {
	Name      string  `json:"name"`
	RunsPerIO float64 `json:"runs_per_io"`
	NsPerRun  float64 `json:"ns_per_run"`
	NsPerIO   float64 `json:"ns_per_io"`
}

type progStat struct {
	name     string
	runTime  float64
	runCount float64
}

// progStats reads the run time and count of the BPF programs ids (the
// kernel's bpf_stats, as bpftool prog show has them).
func progStats(ids ...map[int]bool) (map[int]progStat, error) {
	m := map[int]progStat{}
	for _, set := range ids {
		for id := range set {
			p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
			if err != nil {
				continue // gone already
			}
			st, err := p.Stats()
			info, ierr := p.Info()
			p.Close()
			if err != nil {
				return nil, fmt.Errorf("program %d: %w", id, err)
			}
			name := fmt.Sprint(id)
			if ierr == nil {
				name = info.Name
			}
			m[id] = progStat{name: name, runTime: float64(st.Runtime), runCount: float64(st.RunCount)}
		}
	}
	return m, nil
}

// parseFio reads a fio configuration "engine,iodepth,numjobs".
func parseFio(s string) (fioConfig, error) {
	f := strings.Split(s, ",")
	if len(f) != 3 {
		return fioConfig{}, fmt.Errorf("-fio %q: want engine,iodepth,numjobs (e.g. libaio,32,2)", s)
	}
	depth, err1 := strconv.Atoi(f[1])
	jobs, err2 := strconv.Atoi(f[2])
	if f[0] == "" || err1 != nil || err2 != nil || depth < 1 || jobs < 1 {
		return fioConfig{}, fmt.Errorf("-fio %q: want engine,iodepth,numjobs with positive numbers", s)
	}
	return fioConfig{Engine: f[0], Depth: depth, Jobs: jobs}, nil
}

// deviceLabel describes the device of the io section.
func deviceLabel(dev string, given bool) string {
	name := filepath.Base(dev)
	switch {
	case !given:
		return name + " (loop over a tmpfs file, direct I/O)"
	case strings.HasPrefix(name, "nullb"):
		return name + " (null_blk)"
	}
	return name
}

func (b *bench) cost() error {
	if b.o.costRuns <= 0 {
		return nil // -cost-rounds 0: the IOPS rounds alone
	}
	restore, err := enableRunTimeStats()
	if err != nil {
		return err
	}
	defer restore()
	type sample struct {
		total float64
		progs map[string][3]float64 // runs/IO, ns/run, ns/IO
	}
	names := []string{"whyslow", "biolatency"}
	samples := map[string][]sample{}
	res := &CostResult{Rounds: b.o.costRuns, LostEvents: new(uint64)}
	for r := 0; r < b.o.costRuns; r++ {
		tag := fmt.Sprintf("cost-%d", r)
		ws, err := b.startWhyslow(tag)
		if err != nil {
			stopAll(ws)
			return err
		}
		bio, err := startProc("biolatency", readiness{line: biolatencyReady}, "stdbuf", "-oL", "biolatency")
		if err == nil {
			err = bio.waitReady(readyTimeout)
		}
		ps := append(ws, bio)
		if err != nil {
			stopAll(ps)
			return err
		}
		ids := map[string]map[int]bool{"whyslow": progIDs(ws[0].pid()), "biolatency": progIDs(bio.pid())}
		before, err := progStats(ids["whyslow"], ids["biolatency"])
		if err != nil {
			stopAll(ps)
			return err
		}
		fr, err := b.runFio(b.fio, b.o.fioTime)
		after, err2 := progStats(ids["whyslow"], ids["biolatency"])
		if serr := stopAll(ps); err == nil {
			err = serr
		}
		if err == nil {
			err = err2
		}
		if err != nil {
			return err
		}
		rep, err := readReport(filepath.Join(b.dir, tag+".json"))
		if err != nil {
			return fmt.Errorf("whyslow's report of cost round %d: %w", r+1, err)
		}
		*res.LostEvents += rep.LostEvents
		res.Losses = addLosses(res.Losses, rep)
		// fio's total_ios leave out the ramp; the programs ran during it
		// too: scale by the I/Os of the whole run.
		ios := fr.IOs * (b.o.fioTime.Seconds() + 1) / b.o.fioTime.Seconds()
		for _, n := range names {
			s := sample{progs: map[string][3]float64{}}
			for id := range ids[n] {
				a, ok := after[id]
				if !ok {
					continue
				}
				bf := before[id]
				dt, dc := a.runTime-bf.runTime, a.runCount-bf.runCount
				s.total += dt / ios
				per := 0.0
				if dc > 0 {
					per = dt / dc
				}
				old := s.progs[a.name]
				s.progs[a.name] = [3]float64{old[0] + dc/ios, per, old[2] + dt/ios}
			}
			samples[n] = append(samples[n], s)
		}
		b.logf("cost round %d/%d: whyslow %.0f ns/IO, biolatency %.0f ns/IO (%.0f IOPS), whyslow lost %d events (%s)", r+1, b.o.costRuns,
			samples["whyslow"][r].total, samples["biolatency"][r].total, fr.IOPS, rep.LostEvents, lossesText(addLosses(nil, rep)))
	}
	for _, n := range names {
		tc := ToolCost{Name: n}
		var totals []float64
		progs := map[string][3][]float64{}
		for _, s := range samples[n] {
			totals = append(totals, s.total)
			for name, v := range s.progs {
				p := progs[name]
				for k := range 3 {
					p[k] = append(p[k], v[k])
				}
				progs[name] = p
			}
		}
		tc.NsPerIO = spreadOf(totals)
		for name, v := range progs {
			tc.Programs = append(tc.Programs, ProgramCost{Name: name, RunsPerIO: median(v[0]), NsPerRun: median(v[1]), NsPerIO: median(v[2])})
		}
		sort.Slice(tc.Programs, func(i, j int) bool { return tc.Programs[i].NsPerIO > tc.Programs[j].NsPerIO })
		res.Tools = append(res.Tools, tc)
	}
	b.res.Cost = res
	return nil
}
