// Command whyslow-bench measures what whyslow costs and how fast it
// analyzes, on this machine, and writes the results into BENCHMARKS.md
// (`make bench` runs it as root):
//
//   - io: fio 4 KiB random O_DIRECT writes at the highest IOPS a loop device
//     over tmpfs reaches, with no tracing, `whyslow diagnose storage`,
//     libbpf-tools biolatency + execsnoop, and tools/bench/biosched.bt under
//     bpftrace, in alternating rounds; then the BPF run time per I/O of
//     whyslow and biolatency on the same runs (kernel.bpf_stats_enabled)
//   - sched: a pipe ping-pong (perf bench sched pipe) with and without whyslow,
//     and with empty programs on the attach points whyslow uses (the floor),
//     also as many on each hook as whyslow holds links there (read from its
//     descriptors while it runs)
//   - startup: launch to probes attached, and peak RSS, of whyslow,
//     biolatency and bpftrace
//   - rss: whyslow's peak RSS over a 60 s diagnosis at the I/O load
//   - storm: uevents, execs and the I/O load at once; whyslow's RSS and losses
//   - analysis: the Go benchmarks of tools/bench/ (timeline, facts, rules,
//     analyze on 1M and 10M synthetic events)
//
// Only the part of BENCHMARKS.md between the bench markers is rewritten;
// the notes around it are kept.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

type options struct {
	whyslow   string // the whyslow binary
	script    string // the bpftrace script
	out       string // BENCHMARKS.md
	jsonOut   string // raw results
	sections  map[string]bool
	rounds    int           // io rounds
	costRuns  int           // rounds of the BPF cost measurement
	fioTime   time.Duration // fio runtime per measurement
	schedRuns int
	// schedFloor adds the sched section's empty-program rows;
	// schedAlso, another whyslow binary measured in the same rounds.
	schedFloor bool
	schedAlso  string
	// schedAuto, whyslow in armed mode auto measured in the same rounds.
	schedAuto bool
	startRuns int
	stormTime time.Duration
	serveTime time.Duration
	rssTime   time.Duration
	uevents   int // target uevents/s of the storm
	execs     int // target execs/s of the storm
	no10M     bool
	keep      bool // keep the work directory
	// device is a block device to drive instead of a loop device over
	// tmpfs (null_blk in a qemu guest: bench-vm).
	device string
	// configs are the io section's configurations (names of tools).
	configs []string
	// fio, when set, is the io section's fio configuration
	// ("engine,iodepth,numjobs"), not calibrated.
	fio string
	// vmResults renders the guests' results of `make bench-vm` (one
	// directory per kernel below it) into out, and nothing else.
	vmResults string
	// vmServeResults renders the result of `make bench-vm-serve` (its
	// guest's bench.json) into out, and nothing else.
	vmServeResults string
}

var allSections = []string{"analysis", "startup", "sched", "io", "rss", "storm", "serve"}

func main() {
	var o options
	var sections string
	flag.StringVar(&o.whyslow, "whyslow", "./whyslow", "the whyslow binary to measure")
	flag.StringVar(&o.script, "bpftrace-script", "tools/bench/biosched.bt", "the bpftrace script of the comparison")
	flag.StringVar(&o.out, "out", "BENCHMARKS.md", "write the results into this file (between its bench markers)")
	flag.StringVar(&o.jsonOut, "json", "tools/bench/results.json", "write the raw results to this file (empty: none)")
	flag.StringVar(&sections, "sections", strings.Join(allSections, ","), "what to run: "+strings.Join(allSections, ","))
	flag.IntVar(&o.rounds, "rounds", 20, "io: alternating rounds of the four configurations")
	flag.IntVar(&o.costRuns, "cost-rounds", 7, "io: rounds of the BPF run-time measurement")
	flag.DurationVar(&o.fioTime, "fio-time", 4*time.Second, "io: fio runtime of one measurement")
	flag.IntVar(&o.schedRuns, "sched-rounds", 10, "sched: rounds with and without whyslow")
	flag.BoolVar(&o.schedFloor, "sched-floor", true, "sched: also measure empty programs on whyslow's attach points (sys_enter/sys_exit, sched_switch/sched_waking, and as many on each hook as whyslow has links there)")
	flag.BoolVar(&o.schedAuto, "sched-auto", true, "sched: also measure whyslow in armed mode auto (--armed-mode=auto, experimental: the hot-hook programs attached only while trouble is seen) in the same rounds")
	flag.StringVar(&o.schedAlso, "sched-also", "", "sched: also measure this whyslow binary in the same rounds (e.g. main's, to compare)")
	flag.IntVar(&o.startRuns, "startup-rounds", 10, "startup: launches of each tool")
	flag.DurationVar(&o.stormTime, "storm-time", 30*time.Second, "storm: length")
	flag.DurationVar(&o.serveTime, "serve-time", 10*time.Minute, "serve: length of whyslow serve under the storm's load (the RSS over an hour: -sections serve -serve-time 1h)")
	flag.DurationVar(&o.rssTime, "rss-time", time.Minute, "rss: --duration of the whyslow diagnose storage run whose peak RSS is measured")
	flag.IntVar(&o.uevents, "storm-uevents", 100000, "storm: target uevents per second")
	flag.IntVar(&o.execs, "storm-execs", 10000, "storm: target execs per second")
	flag.BoolVar(&o.no10M, "no-10m", false, "analysis: skip the 10M-event runs")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (tool outputs)")
	flag.StringVar(&o.device, "device", "", "io: drive this block device instead of a loop device over tmpfs")
	configs := flag.String("configs", "none,whyslow,libbpf-tools,bpftrace", "io: the configurations compared (none must be first)")
	flag.StringVar(&o.fio, "fio", "", "io: this fio configuration, engine,iodepth,numjobs (e.g. libaio,32,2), instead of the fastest of a calibration")
	flag.StringVar(&o.vmResults, "vm-results", "", "render the results of make bench-vm kept in this directory (<kernel>.json each) into -out, and exit")
	flag.StringVar(&o.vmServeResults, "vm-serve-results", "", "render the serve run of make bench-vm-serve kept in this file (its guest's bench.json) into -out, and exit")
	flag.Parse()
	o.configs = strings.Split(*configs, ",")
	o.sections = map[string]bool{}
	for _, s := range strings.Split(sections, ",") {
		if s = strings.TrimSpace(s); s != "" {
			o.sections[s] = true
		}
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "whyslow-bench:", err)
		os.Exit(1)
	}
}

// Results is everything one run measured.
type Results struct {
	Date     time.Time       `json:"date"`
	Machine  Machine         `json:"machine"`
	IO       *IOResult       `json:"io,omitempty"`
	Cost     *CostResult     `json:"cost,omitempty"`
	Sched    *SchedResult    `json:"sched,omitempty"`
	Startup  *StartupResult  `json:"startup,omitempty"`
	RSS      *RSSResult      `json:"rss,omitempty"`
	Storm    *StormResult    `json:"storm,omitempty"`
	Serve    *ServeResult    `json:"serve,omitempty"`
	Analysis *AnalysisResult `json:"analysis,omitempty"`
	Took     string          `json:"took"`
	// Partial says which sections a later run replaced, when it did.
	Partial string `json:"partial,omitempty"`
}

// Machine describes where the benchmark ran.
type Machine struct {
	Hostname, Kernel, CPU string
	CPUs                  int
	MemGiB                float64
	Go, Whyslow, Commit   string
	Tools                 map[string]string
	Load                  string // load average at the start
}

type bench struct {
	o     options
	tools []tool // the io section's configurations
	dir   string // work directory
	res   *Results
	loop  string // /dev/loopN of the io and storm sections
	fio   fioConfig
	log   *os.File
	// armed holds, per whyslow configuration of the sched section in an
	// armed mode, each round's coverage: armed and disarmed seconds.
	armed map[string][][2]float64
}

func run(o options) error {
	if o.vmResults != "" {
		return writeVMResults(o.vmResults, o.out)
	}
	if o.vmServeResults != "" {
		return writeVMServeResults(o.vmServeResults, o.out)
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (BPF, loop devices, sysctl): run it with sudo, or `sudo make bench`")
	}
	for s := range o.sections {
		if !contains(allSections, s) {
			return fmt.Errorf("unknown section %q (want some of %s)", s, strings.Join(allSections, ","))
		}
	}
	wb, err := filepath.Abs(o.whyslow)
	if err != nil {
		return err
	}
	if _, err := os.Stat(wb); err != nil {
		return fmt.Errorf("whyslow binary: %w (make build)", err)
	}
	o.whyslow = wb
	selected, err := selectTools(o.configs)
	if err != nil {
		return err
	}
	for _, t := range neededPrograms(o, selected) {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s not found (make bench installs the Debian packages BENCH_DEBS)", t)
		}
	}
	dir, err := os.MkdirTemp("", "whyslow-bench-")
	if err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(dir)
	}
	b := &bench{o: o, dir: dir, res: &Results{Date: time.Now().UTC()}, log: os.Stderr, tools: selected}
	b.res.Machine = machine(o.whyslow)
	// A run of some sections keeps the others' results from the last run.
	var last *Results
	if o.jsonOut != "" && len(o.sections) < len(allSections) {
		if js, err := os.ReadFile(o.jsonOut); err == nil {
			last = new(Results)
			if json.Unmarshal(js, last) != nil {
				last = nil
			}
		}
	}
	start := time.Now()
	b.logf("work directory %s; machine: %s, %d CPUs, kernel %s, load %s", dir, b.res.Machine.CPU, b.res.Machine.CPUs, b.res.Machine.Kernel, b.res.Machine.Load)

	if o.device != "" {
		b.loop = o.device
	} else if o.sections["io"] || o.sections["rss"] || o.sections["storm"] || o.sections["serve"] {
		cleanup, err := b.setupLoop()
		if err != nil {
			return err
		}
		defer cleanup()
	}
	var sectionErr error
	for _, s := range allSections {
		if !o.sections[s] {
			continue
		}
		b.logf("== %s", s)
		var err error
		switch s {
		case "analysis":
			err = b.analysis()
		case "startup":
			err = b.startup()
		case "sched":
			err = b.sched()
		case "io":
			err = b.io()
		case "rss":
			err = b.rss()
		case "storm":
			err = b.storm()
		case "serve":
			err = b.serve()
		}
		if err != nil {
			// What the section measured before it failed is written (a
			// serve of an hour whose stop fails keeps its hour); the run
			// still fails.
			failed := fmt.Errorf("%s: %w", s, err)
			if b.res.Serve == nil || s != "serve" {
				return failed
			}
			b.logf("%v (its results are written all the same)", failed)
			sectionErr = failed
			break
		}
	}
	b.res.Took = time.Since(start).Round(time.Second).String()
	if last != nil {
		b.res.Partial = fmt.Sprintf("%s re-run on %s (took %s); the rest from the run of %s (took %s)",
			strings.Join(sortedSections(o.sections), ", "), b.res.Date.Format("2006-01-02 15:04 MST"), b.res.Took,
			last.Date.Format("2006-01-02 15:04 MST"), last.Took)
		b.res.Date, b.res.Took = last.Date, last.Took
		if !o.sections["io"] {
			b.res.IO, b.res.Cost = last.IO, last.Cost
		} else if o.rounds == 0 {
			b.res.IO = last.IO // the cost section alone: the I/O rounds stand
		}
		if !o.sections["sched"] {
			b.res.Sched = last.Sched
		}
		if !o.sections["startup"] {
			b.res.Startup = last.Startup
		}
		if !o.sections["rss"] {
			b.res.RSS = last.RSS
		}
		if !o.sections["storm"] {
			b.res.Storm = last.Storm
		}
		if !o.sections["serve"] {
			b.res.Serve = last.Serve
		}
		if !o.sections["analysis"] {
			b.res.Analysis = last.Analysis
		}
	}
	if o.jsonOut != "" {
		js, err := json.MarshalIndent(b.res, "", "  ")
		if err != nil {
			return fmt.Errorf("encoding the results for %s: %w", o.jsonOut, err)
		}
		if err := os.WriteFile(o.jsonOut, append(js, '\n'), 0o644); err != nil {
			return err
		}
	}
	if err := writeMarkdown(o.out, b.res); err != nil {
		return err
	}
	return sectionErr
}

func (b *bench) logf(format string, a ...any) {
	fmt.Fprintf(b.log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

func sortedSections(m map[string]bool) []string {
	var out []string
	for _, s := range allSections {
		if m[s] {
			out = append(out, s)
		}
	}
	return out
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func machine(whyslow string) Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), Tools: map[string]string{}}
	m.Hostname, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if kb := meminfo("MemTotal"); kb > 0 {
		m.MemGiB = float64(kb) / (1 << 20)
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			m.Load = strings.Join(f[:3], " ")
		}
	}
	if out, err := exec.Command(whyslow, "version").Output(); err == nil {
		m.Whyslow = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
	}
	for _, p := range []string{"fio", "libbpf-tools", "bpftrace", "bpftool", "linux-perf"} {
		if out, err := exec.Command("dpkg-query", "-W", "-f=${Version}", p).Output(); err == nil {
			m.Tools[p] = string(out)
		}
	}
	return m
}

func meminfo(field string) int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			var n int64
			fmt.Sscan(strings.TrimSpace(v), &n)
			return n
		}
	}
	return 0
}

// enableRunTimeStats turns on the kernel's run-time statistics of every BPF
// program (what kernel.bpf_stats_enabled does) through a BPF_ENABLE_STATS
// descriptor, for as long as the returned function has not been called. The
// kernel turns them off again when the descriptor closes, so a bench that is
// killed does not leave them on for the machine (a sysctl it wrote would
// stay: every program of every later run would pay the two clock reads).
func enableRunTimeStats() (disable func(), err error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enabling BPF run-time statistics: %w", err)
	}
	return func() { _ = c.Close() }, nil
}

// selectTools returns the io configurations named, in that order; the
// first must be "none", the baseline of the ratios.
func selectTools(names []string) ([]tool, error) {
	var out []tool
	for _, n := range names {
		n = strings.TrimSpace(n)
		i := slices.IndexFunc(tools, func(t tool) bool { return t.name == n })
		if i < 0 {
			return nil, fmt.Errorf("-configs: unknown configuration %q (want some of none, whyslow, libbpf-tools, bpftrace)", n)
		}
		out = append(out, tools[i])
	}
	if len(out) == 0 || out[0].name != "none" {
		return nil, fmt.Errorf("-configs: the first configuration must be none (the baseline of the ratios)")
	}
	return out, nil
}

// neededPrograms are the programs the sections of o and the selected io
// configurations run.
func neededPrograms(o options, selected []tool) []string {
	var need []string
	add := func(ps ...string) {
		for _, p := range ps {
			if !slices.Contains(need, p) {
				need = append(need, p)
			}
		}
	}
	if o.sections["io"] || o.sections["rss"] || o.sections["storm"] || o.sections["serve"] {
		add("fio")
		if o.device == "" {
			add("losetup")
		}
	}
	if o.sections["io"] {
		add("biolatency", "stdbuf") // the cost measurement runs biolatency
		for _, t := range selected {
			add(t.runs...)
		}
	}
	if o.sections["startup"] {
		add("biolatency", "bpftrace", "stdbuf")
	}
	if o.sections["sched"] {
		add("perf", "taskset")
	}
	return need
}
