package cmd

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/whyslow/whyslow/diagnose"
	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/stage"
	"github.com/whyslow/whyslow/internal/trouble"
	"github.com/whyslow/whyslow/probes"
	"github.com/whyslow/whyslow/rules"
)

func newCmdDiagnose(ios *IO) *cobra.Command {
	c := &cobra.Command{
		Use:   "diagnose",
		Short: "Observe the host and report the root causes of a problem",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return usagef("diagnose needs a subject: whyslow diagnose storage")
		},
	}
	c.AddCommand(NewCmdStorage(ios, nil))
	return c
}

// StorageOptions are the flags of `whyslow diagnose storage`.
type StorageOptions struct {
	IO         *IO
	Duration   time.Duration
	MinLatency time.Duration
	Rules      []string // --rules files and directories
	Stages     []string // --stages files and directories
	Devices    []string
	BTF        string
	// Mechanism is --mechanism: "kprobe" or "freeze=kprobe" (repeatable).
	Mechanism []string
	// Outputs are the report, --fail-on, the stack files and the trace
	// of the run (--record).
	Outputs Outputs
	// ReadyFile is created once every probe is attached; empty means none.
	ReadyFile string
	// ArmedMode is --armed-mode (experimental): "" keeps every program
	// attached (the default); "auto" starts with the programs on
	// sys_enter/sys_exit/sched_switch/sched_waking detached and attaches
	// them while the trouble watcher sees trouble (diagnose.Options);
	// "test-disarmed" detaches them before the run is ready and never
	// puts them back (probes/arm.go), to measure what a disarmed run
	// costs. Not the default: what they see is not seen while they are
	// off (the report's coverage section says when).
	ArmedMode string
	// Cgroup is --cgroup: the cgroup v2 the trouble watcher's PSI signals
	// are scoped to (trouble.CgroupDir resolves it).
	Cgroup string
}

// cgroupHelp is --cgroup's help, for diagnose and serve.
const cgroupHelp = "scope the trouble watcher's PSI signals (which arm --armed-mode=auto) to this cgroup v2: its io.pressure and memory.pressure instead of the host-wide /proc/pressure (whose stalls are then counted out of scope); a directory (/sys/fs/cgroup/db.slice) or a path in the v2 hierarchy (/db.slice). Findings are not filtered by cgroup"

// armedModes are the values --armed-mode takes.
var armedModes = []string{"", trouble.ModeAuto, trouble.ModeTestDisarmed}

// armedModeHelp is --armed-mode's help, for diagnose and serve.
const armedModeHelp = "experimental: auto starts with the programs on sys_enter/sys_exit/sched_switch/sched_waking detached (storage calls, off-CPU waits not seen) and attaches them from the first trouble signal (PSI, slow or throttled bios and faults of the --device disks, a busy disk) until 5s without one; test-disarmed never attaches them (for measurements)"

// checkArmedMode refuses an unknown --armed-mode.
func checkArmedMode(m string) error {
	if !oneOf(m, armedModes) {
		return usagef("--armed-mode %q: want auto or test-disarmed (experimental), or nothing", m)
	}
	return nil
}

// Formats the report can be written in.
var reportFormats = report.FormatNames()

// Severities --fail-on accepts.
var failOnValues = []string{"none", "warning", "critical"}

// NewCmdStorage builds `whyslow diagnose storage`; runF replaces the run for tests.
func NewCmdStorage(ios *IO, runF func(*StorageOptions) error) *cobra.Command {
	opts := &StorageOptions{IO: ios}
	c := &cobra.Command{
		Use:   "storage",
		Short: "Find why storage is slow: run every storage probe, then print ranked causes",
		Long: `Runs every storage probe for --duration, puts their events on one timeline,
evaluates the rules and prints a ranked report of causes with their evidence and
a remedy. Needs root.

Ctrl-C, SIGTERM or SIGHUP end the observation early: the report, trace and
stack files are written as for a full run (same exit code). A second Ctrl-C or
SIGTERM aborts at once (exit 128 + the signal), writing nothing more. --record
writes the trace as the run goes, flushed every second: a run killed, or a
machine that loses power, leaves a trace that 'whyslow analyze' reads up to
its last checkpoint.`,
		Example: `  sudo whyslow diagnose storage --duration 60s
  sudo whyslow diagnose storage --duration 20s --device sda --format json --output report.json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := opts.validate(); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			return storageRun(c.Context(), opts)
		},
	}
	f := c.Flags()
	f.DurationVarP(&opts.Duration, "duration", "d", 60*time.Second, "how long to observe")
	f.DurationVar(&opts.MinLatency, "min-latency", time.Millisecond, "outlier threshold: slower submissions and longer blocked spans are recorded one by one")
	f.StringArrayVar(&opts.Rules, "rules", nil, "rule file, or directory of rule files (*.yaml, *.yml), to add (repeatable); a rule with a built-in rule's id replaces it")
	addStagesFlag(c, &opts.Stages)
	f.StringArrayVar(&opts.Devices, "device", nil, "only analyze this block device (repeatable), e.g. --device sda")
	f.StringVar(&opts.BTF, "btf", probes.DefaultBTF, "kernel BTF file")
	f.StringArrayVar(&opts.Mechanism, "mechanism", nil, "force a mechanism: fentry, kprobe, tp_btf, ... for every probe that offers it, or PROBE=MECHANISM for one (repeatable)")
	addOutputFlags(c, &opts.Outputs)
	f.StringVar(&opts.Outputs.Record, "record", "", "write every event of the run to this trace file as the run goes (flushed every second), for 'whyslow analyze' (gzip-compressed, docs/trace-format.md)")
	f.StringVar(&opts.ReadyFile, "ready-file", "", "create this file once every probe is attached (an old one is removed at start), for scripts that start their load only then")
	f.StringVar(&opts.ArmedMode, "armed-mode", "", armedModeHelp)
	f.StringVar(&opts.Cgroup, "cgroup", "", cgroupHelp)
	_ = c.RegisterFlagCompletionFunc("device", completeDevices)
	return c
}

func (o *StorageOptions) validate() error {
	if err := checkArmedMode(o.ArmedMode); err != nil {
		return err
	}
	m, err := probes.ParseMechanism(o.Mechanism)
	if err != nil {
		return usagef("%s", err)
	}
	if err := o.diagnoseOptions(m, nil).Validate(); err != nil {
		return usageError{err}
	}
	return o.Outputs.validate()
}

// diagnoseOptions are the options of the run.
func (o *StorageOptions) diagnoseOptions(m probes.MechanismChoice, set *rules.Set) diagnose.Options {
	return diagnose.Options{Duration: o.Duration, MinLatency: o.MinLatency, Devices: o.Devices, Rules: set, BTF: o.BTF, Mechanism: m,
		ArmedMode: o.ArmedMode}
}

func oneOf(s string, set []string) bool {
	for _, v := range set {
		if s == v {
			return true
		}
	}
	return false
}

func completeDevices(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	entries, err := os.ReadDir("/sys/block")
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

// addStagesFlag declares --stages.
func addStagesFlag(c *cobra.Command, paths *[]string) {
	c.Flags().StringArrayVar(paths, "stages", nil, "stage table file, or directory of them (*.yaml, *.yml), whose rules name the stages of blocked stacks before the built-in table's (repeatable; docs/stages.md)")
}

// loadStages returns the built-in stage table, extended with the --stages
// files and directories; nil when there are none.
func loadStages(paths []string) (*stage.Table, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	t, err := stage.Load(paths...)
	if err != nil {
		return nil, fmt.Errorf("--stages: %w", err)
	}
	return t, nil
}

// loadRules returns the built-in rules, with the rules of the --rules
// files and directories added or replacing built-ins of the same id. Every
// mistake in them is in the error, which is one line: "FILE:LINE:COL: ..."
// each, separated by "; ".
func loadRules(paths []string) (*rules.Set, error) {
	set, err := rules.Default()
	if err != nil {
		return nil, fmt.Errorf("built-in rules: %w", err)
	}
	if len(paths) == 0 {
		return set, nil
	}
	extra, err := rules.LoadPaths(paths...)
	if err != nil {
		errs := rules.Errors(err)
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = strings.Join(strings.Fields(e.Error()), " ")
		}
		if len(msgs) == 1 {
			return nil, fmt.Errorf("--rules: %s", msgs[0])
		}
		return nil, fmt.Errorf("--rules: %d errors: %s", len(msgs), strings.Join(msgs, "; "))
	}
	return set.Merge(extra), nil
}

// memoryLimit is the soft limit of the Go heap during a diagnosis: room for
// the events held at most, twice over, and for the rest of the program.
const memoryLimit = 2*diagnose.DefaultMaxEventBytes + 128<<20

// observeGCPercent is the collector's target (GOGC) from the moment every
// probe runs to the exit: the heap grows to 1.5 times what is live before a
// collection instead of 2 times. On a 60 s run at full load it took the
// peak RSS from 69-76 MiB to 64-66 for no more CPU than the runs' noise
// (BENCHMARKS.md, issue 16's notes).
const observeGCPercent = 50

func storageRun(ctx context.Context, opts *StorageOptions) error {
	// Start-up allocates some 40 MB that stay (kernel BTF, kallsyms, maps'
	// bookkeeping) in a near-empty heap: collecting at every doubling costs
	// a third of the time to the probes being attached.
	gc := debug.SetGCPercent(400)
	defer debug.SetGCPercent(gc)
	// Once the probes run, the heap is collected at half again what is
	// live rather than twice (observeGCPercent), unless GOGC says otherwise.
	observeGC := gc
	if os.Getenv("GOGC") == "" {
		observeGC = observeGCPercent
	}
	restoreGC := sync.OnceFunc(func() { debug.SetGCPercent(observeGC) })
	defer restoreGC()
	// The events are bounded (diagnose.DefaultMaxEventBytes), and so is
	// what the analysis derives from them; without a limit the collector
	// still lets the heap grow to twice what is live, and a storm of
	// events made the RSS reach 600 MB. GOMEMLIMIT, when set, wins.
	if os.Getenv("GOMEMLIMIT") == "" {
		defer debug.SetMemoryLimit(debug.SetMemoryLimit(memoryLimit))
	}
	// The files it writes, checked before any work: two that are the same
	// file, or one that is an input, are a usage error.
	inputs := []input{{"--btf", opts.BTF}}
	for _, r := range opts.Rules {
		inputs = append(inputs, input{"--rules", r})
	}
	outs, err := openOutputs(opts.IO, opts.Outputs, opts.ReadyFile, inputs...)
	if err != nil {
		return err
	}
	ctx, interrupts := handleInterrupts(ctx, opts.IO, true, outs.abort)
	defer interrupts.stop()
	// The probes need the kernel BTF, decoded once per process: decode it
	// while --rules and --stages files compile. (kallsyms, needed only to symbolize stacks,
	// is read in the background once the probes have started.)
	if opts.BTF == probes.DefaultBTF {
		go probes.KernelBTF()
	}
	// Rules from --rules are compiled first: a mistake in them is told
	// before anything loads. The built-in ones alone compile once every
	// probe is attached (compiled while the probes loaded, their ~30 ms of
	// CPU competed with the verifier on small machines); the analysis
	// waits for them.
	var set *rules.Set
	var rulesLater func() (*rules.Set, error)
	if len(opts.Rules) > 0 {
		if set, err = loadRules(opts.Rules); err != nil {
			return err
		}
	} else {
		rulesLater = sync.OnceValues(func() (*rules.Set, error) { return loadRules(nil) })
	}
	stages, err := loadStages(opts.Stages)
	if err != nil {
		return err
	}
	mech, err := probes.ParseMechanism(opts.Mechanism)
	if err != nil {
		return usagef("%s", err)
	}
	dopts := opts.diagnoseOptions(mech, set)
	dopts.RulesLater = rulesLater
	dopts.Stages = stages
	if opts.Cgroup != "" {
		if dopts.Cgroup, err = trouble.CgroupDir("/proc", opts.Cgroup); err != nil {
			return usageError{err}
		}
	}
	if dopts.Kernel, err = diagnose.Check(dopts); err != nil {
		return err
	}
	ready, err := newReadyFile(outs.ready)
	if err != nil {
		return err
	}
	dopts.Ready = func() {
		restoreGC()
		ready.signal(opts.IO.ErrOut)
		if rulesLater != nil {
			go rulesLater()
		}
	}
	dopts.Observed = interrupts.observed
	if opts.ArmedMode == trouble.ModeAuto {
		dopts.Log = func(s string) { fmt.Fprintf(opts.IO.ErrOut, "whyslow: %s\n", s) }
	}
	started := time.Now()
	info := runInfo(started, opts.Duration, opts.Devices)
	rec, recorded, err := outs.streamRecord(info)
	if err != nil {
		return err
	}
	dopts.Record = rec
	var clearProgress func()
	dopts.Progress, clearProgress = progress(opts.IO)
	res, err := diagnose.Storage(ctx, dopts)
	clearProgress()
	recorded()
	if err != nil {
		if outs.recordErr != nil {
			return fmt.Errorf("%w; %v", err, outs.recordErr)
		}
		return err
	}
	return outs.finish(res, info)
}

// failOn turns findings at or above the severity into exit code 3, with a
// one-line summary on stderr.
func failOn(level string, findings []rules.Finding) error {
	if level == "none" {
		return nil
	}
	for _, f := range findings { // ranked: the first match is the most important
		if f.Severity == rules.Critical || (level == "warning" && f.Severity == rules.Warning) {
			return exitError{code: ExitFindings, msg: fmt.Sprintf("whyslow: --fail-on %s: %d finding(s); top: [%s] %s", level, len(findings), f.Severity, f.Title)}
		}
	}
	return nil
}

// progress returns the live progress display of a run: the function that
// draws its line, and the one that clears it at the end. Only an
// interactive terminal gets one (IO.ErrTTY); on a pipe, a file or in CI
// there is none: draw is nil and clear does nothing.
func progress(ios *IO) (draw func(diagnose.Progress), clear func()) {
	if !ios.ErrTTY {
		return nil, func() {}
	}
	return progressLine(ios), func() { fmt.Fprint(ios.ErrOut, "\r\033[K") }
}

// progressLine draws one live status line on the terminal: elapsed and
// asked-for time, the events of each running probe (with its losses), and
// the total lost. It is cut to the terminal's width, so that it never wraps.
func progressLine(ios *IO) func(diagnose.Progress) {
	return func(p diagnose.Progress) {
		parts := make([]string, 0, len(p.Probes))
		for _, pr := range p.Probes {
			part := fmt.Sprintf("%s %d", pr.Name, pr.Events)
			if pr.Lost > 0 {
				part += fmt.Sprintf(" (%d lost)", pr.Lost)
			}
			parts = append(parts, part)
		}
		line := fmt.Sprintf("%s / %s  %s", p.Elapsed.Truncate(time.Second), p.Total, strings.Join(parts, ", "))
		if p.Lost > 0 {
			line += fmt.Sprintf("  LOST %d", p.Lost)
		}
		if w := ios.ErrWidth - 1; w > 0 && len(line) > w {
			line = line[:w]
		}
		fmt.Fprintf(ios.ErrOut, "\r\033[K%s", line)
	}
}
