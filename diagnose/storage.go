// Package diagnose runs a storage diagnosis: it checks what the host allows,
// starts every probe, collects their events on one timeline for the asked
// duration, then derives facts, evaluates the rules and returns the findings.
// Analyze does the second half alone, for a timeline that was recorded.
package diagnose

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf/btf"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/facts"
	"github.com/whyslow/whyslow/internal/stage"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/internal/tracefile"
	"github.com/whyslow/whyslow/internal/trouble"
	"github.com/whyslow/whyslow/probes"
	"github.com/whyslow/whyslow/rules"
)

// Options configure a live diagnosis.
type Options struct {
	Duration   time.Duration
	MinLatency time.Duration
	// Devices restricts the analysis to these block devices (names as in /sys/block).
	Devices []string
	Rules   *rules.Set
	// RulesLater, when Rules is nil, gives the rules once the observation
	// has ended: the caller compiles them (the built-in rules, which cannot
	// fail) once the probes are attached (Ready), and start-up does not
	// wait for them.
	RulesLater func() (*rules.Set, error)
	// Stages names the stages of storage calls' blocked stacks; nil means
	// the built-in table.
	Stages *stage.Table
	// BTF is the kernel BTF file; empty means probes.DefaultBTF.
	BTF string
	// ProcFS and SysFS are the roots of /proc and /sys; empty means the real ones.
	ProcFS, SysFS string
	// Probes to run; nil means every registered probe.
	Probes []probes.Probe
	// Mechanism forces probes onto one mechanism (--mechanism).
	Mechanism probes.MechanismChoice
	// Progress, when set, is called about once a second during the run.
	Progress func(Progress)
	// Ready, when set, is called once every probe has been started
	// (attached, or found unavailable), as the observation window begins.
	Ready func()
	// ArmedMode (experimental, --armed-mode) gates the programs on the
	// hot hooks (probes.Group.Disarm, Arm): "" keeps them attached all
	// the run (the default); trouble.ModeAuto disarms them before Ready
	// and arms them while the trouble watcher sees trouble (signals of
	// Devices' disks, and PSI); trouble.ModeTestDisarmed disarms them
	// before Ready and leaves them so, a measurement of what a disarmed
	// run costs, not a diagnosis. The timeline's Coverage says when they
	// were attached.
	ArmedMode string
	// Cgroup, when set (--cgroup, a directory trouble.CgroupDir
	// resolved), scopes the trouble watcher's PSI signals to that cgroup
	// v2 (trouble.Config.Cgroup).
	Cgroup string
	// Log, when set, is told of armed mode's armings and disarmings.
	Log func(string)
	// Observed, when set, is called as the observation window ends (its
	// duration passed, or ctx ended), before the probes stop.
	Observed func()
	// Kernel is the kernel BTF Check returned; nil makes Storage load it.
	Kernel *btf.Spec
	// MaxEventBytes bounds the memory the run's events take (estimated);
	// events beyond are dropped and counted as lost. 0 means
	// DefaultMaxEventBytes.
	MaxEventBytes int64
	// Record, when set, records the run as it goes (--record).
	Record Recorder
	// FlushEvery is how often Record gets the new events and a
	// checkpoint (0: every second); StateEvery how often, at most, that
	// checkpoint holds the probes' histograms and losses so far (0: every
	// 10 s; after 1, 3, 7 and 15 s at first).
	FlushEvery, StateEvery time.Duration
}

// Recorder records a run as it goes, so that a run killed or a machine
// that loses power leaves a trace of what was observed up to the last
// checkpoint (tracefile.Recorder is one). Begin is called once the probes
// have started; then, from a goroutine of their own, every FlushEvery,
// Append with the timeline as it is (a shallow copy: the events of a
// stream do not change once added; it must not keep it) and Checkpoint,
// with the state of the run so far (probes, losses, histograms) every
// StateEvery and nil in between; Finish once the probes have stopped,
// before the timeline is sorted. After a method fails, none is called
// again: the run goes on without its recording, and the caller knows why
// from its Recorder.
type Recorder interface {
	Begin(tl *timeline.Timeline) error
	Append(tl *timeline.Timeline) error
	Checkpoint(state *timeline.Timeline, at event.Mono) error
	Finish(tl *timeline.Timeline) error
}

// Progress is a snapshot of a running diagnosis.
type Progress struct {
	Elapsed, Total time.Duration
	// Probes are the running probes, sorted by name, with their events.
	Probes []ProbeProgress
	Lost   uint64 // events lost so far, by every probe
}

// ProbeProgress is what one running probe delivered so far.
type ProbeProgress struct {
	Name   string
	Events uint64 // events delivered and kept
	Lost   uint64 // events it lost, or that were dropped past the run's memory bound
}

// Result is a finished diagnosis.
type Result struct {
	Timeline *timeline.Timeline
	Run      *facts.Run
	Findings []rules.Finding
	// RuleErrors are the rules that failed while they were evaluated;
	// Findings holds those of the other rules.
	RuleErrors rules.RuleErrors
	// NotEvaluated are the rules whose needed facts no probe of the run
	// supplied (rules.Set.NotEvaluated).
	NotEvaluated []rules.NotEvaluated
	// Devices are the names of every device the timeline has, before the
	// device filter, sorted.
	Devices []string
}

func (o *Options) defaults() {
	if o.ProcFS == "" {
		o.ProcFS = "/proc"
	}
	if o.SysFS == "" {
		o.SysFS = "/sys"
	}
	if o.Probes == nil {
		o.Probes = probes.All()
	}
}

// Validate checks the options themselves: the command line reports its
// mistakes as usage errors from here.
func (o Options) Validate() error {
	o.defaults()
	if o.Duration <= 0 {
		return fmt.Errorf("--duration must be positive, got %s", o.Duration)
	}
	if o.MinLatency < 0 {
		return fmt.Errorf("--min-latency must not be negative, got %s", o.MinLatency)
	}
	if o.Duration > tracefile.MaxWindow || o.MinLatency > tracefile.MaxWindow {
		return fmt.Errorf("--duration and --min-latency: at most %s (366 days), the longest a trace holds", tracefile.MaxWindow)
	}
	return o.Mechanism.Check(o.Probes)
}

// Check verifies, before anything is loaded, that the run can work: the
// options, that the named devices exist, and what the probes need of the
// host (probes.Prepare). It returns the kernel BTF.
func Check(opts Options) (*btf.Spec, error) {
	opts.defaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.Rules == nil && opts.RulesLater == nil {
		return nil, errors.New("no rules loaded")
	}
	for _, d := range opts.Devices {
		if err := CheckDevice(opts.SysFS, d); err != nil {
			return nil, err
		}
	}
	return probes.Prepare(opts.BTF)
}

// CheckDevice reports a --device name that is not a block device here.
func CheckDevice(sysfs, name string) error {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return fmt.Errorf("--device %q: not a block device name (use a name from /sys/block, e.g. sda)", name)
	}
	if _, err := os.Stat(filepath.Join(sysfs, "block", name)); err != nil {
		return fmt.Errorf("--device %q: no such block device in %s", name, filepath.Join(sysfs, "block"))
	}
	return nil
}

// Storage runs every storage probe for opts.Duration (or until ctx is
// cancelled, which ends the run early but still analyzes what was seen) and
// returns the diagnosis.
func Storage(ctx context.Context, opts Options) (*Result, error) {
	opts.defaults()
	spec := opts.Kernel
	if spec == nil {
		var err error
		if spec, err = Check(opts); err != nil {
			return nil, err
		}
	}
	tl, err := Collect(ctx, opts, spec)
	if err != nil {
		return nil, err
	}
	set := opts.Rules
	if set == nil {
		if set, err = opts.RulesLater(); err != nil {
			return nil, err
		}
	}
	return AnalyzeWith(tl, set, opts.Devices, opts.Stages)
}

// Collect starts the probes (probes.Prepare must have passed), waits,
// stops them and returns the sorted timeline.
func Collect(ctx context.Context, opts Options, spec *btf.Spec) (*timeline.Timeline, error) {
	opts.defaults()
	host, _ := os.Hostname()
	tl := &timeline.Timeline{Kernel: KernelRelease(), Hostname: host, MinLatency: opts.MinLatency}
	holders, err := ReadHolders(opts.SysFS)
	if err != nil {
		return nil, err
	}
	tl.Holders = holders

	col := newCollector(tl, opts.MaxEventBytes)
	cfg := probes.Config{MinLatency: opts.MinLatency, KernelTypes: spec, ProcFS: opts.ProcFS, SysFS: opts.SysFS,
		Mechanism: opts.Mechanism}
	if tl.Start, err = event.Now(); err != nil {
		return nil, err
	}
	// The trouble watcher runs beside the probes in shadow mode: it says
	// when an armed mode would have attached the hot-hook programs, and
	// gates nothing (tl.Trouble).
	// In armed mode auto it is what arms them (trouble.Auto): its
	// signals, scoped to --device's disks, wake the controller, which
	// runs once the probes are started and disarmed (a signal before
	// then arms them as it starts).
	wcfg := trouble.Config{ProcFS: opts.ProcFS, SysFS: opts.SysFS, Devices: opts.Devices, Cgroup: opts.Cgroup}
	var auto *trouble.Auto
	if opts.ArmedMode == trouble.ModeAuto {
		auto = trouble.NewAuto(opts.Log)
		wcfg.OnSignal = auto.Signal
	}
	watch := trouble.New(wcfg)
	if watch.Start(ctx) == nil {
		col.watch = watch
	} else if auto != nil {
		return nil, errors.New("armed mode auto: the trouble watcher could not start (the clock could not be read)")
	}
	g := probes.Start(cfg, col, opts.Probes...)
	col.mu.Lock()
	tl.Probes = g.Statuses()
	col.mu.Unlock()
	names := g.Running()
	if len(names) == 0 {
		if col.watch != nil {
			col.watch.Stop(tl.Start)
		}
		return nil, fmt.Errorf("no probe could start (%s)", g.Unavailable())
	}
	if opts.ArmedMode != "" {
		if err := g.Disarm(); err != nil {
			g.Stop()
			if col.watch != nil {
				col.watch.Stop(tl.Start)
			}
			return nil, err
		}
	}
	if auto != nil {
		auto.Run(watch, g, tl.Start, names, g.Gated())
	}
	rec := startRecording(opts, col, g)
	if opts.Ready != nil {
		opts.Ready()
	}

	sort.Strings(names)
	wait(ctx, opts, col, names)
	if opts.Observed != nil {
		opts.Observed()
	}

	rec.stop()
	end, clockErr := event.Now()
	// Armed mode auto stops first (an arming under way ends), then the
	// probes: nothing arms them as they stop.
	switch opts.ArmedMode {
	case trouble.ModeAuto:
		tl.Coverage = auto.Stop(end)
	case trouble.ModeTestDisarmed:
		tl.Coverage = &trouble.Coverage{Mode: trouble.ModeTestDisarmed, Start: tl.Start, End: end, Probes: names, Gated: g.Gated()}
	}
	stopErr := g.Stop()
	tl.End = end
	if col.watch != nil {
		tl.Trouble = col.watch.Stop(end)
	}
	rec.finish(tl)
	tl.Sort()
	if clockErr != nil {
		return nil, clockErr
	}
	if stopErr != nil {
		return tl, stopErr
	}
	return tl, nil
}

// wait blocks for the run's duration or until ctx ends, reporting the
// progress of the running probes.
func wait(ctx context.Context, opts Options, col *collector, running []string) {
	start := time.Now()
	deadline := time.NewTimer(opts.Duration)
	defer deadline.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-tick.C:
			if opts.Progress != nil {
				ps, lost := col.progress(running)
				opts.Progress(Progress{Elapsed: time.Since(start), Total: opts.Duration, Probes: ps, Lost: lost})
			}
		}
	}
}

// Analyze derives facts from a timeline and evaluates the rules on them,
// restricted to the named devices when any are given. A rule that fails
// does not fail the analysis: it is in Result.RuleErrors, and the findings
// of the other rules are there.
func Analyze(tl *timeline.Timeline, set *rules.Set, devices []string) (*Result, error) {
	return AnalyzeWith(tl, set, devices, nil)
}

// AnalyzeWith is Analyze with a stage table (--stages); nil means the
// built-in one.
func AnalyzeWith(tl *timeline.Timeline, set *rules.Set, devices []string, stages *stage.Table) (*Result, error) {
	run := facts.Build(tl, facts.Options{Stages: stages})
	var all []string
	for _, d := range run.Devices {
		all = append(all, d.Name)
	}
	if len(devices) > 0 {
		keep := map[string]bool{}
		for _, d := range devices {
			keep[d] = true
		}
		var ds []*facts.Device
		for _, d := range run.Devices {
			if keep[d.Name] {
				ds = append(ds, d)
			}
		}
		run.Devices = ds
		run.Processes = facts.ProcessesOn(run.Processes, keep)
	}
	res := &Result{Timeline: tl, Run: run, Devices: all, NotEvaluated: set.NotEvaluated(run)}
	var err error
	res.Findings, err = rules.Evaluate(set, run)
	if err != nil && !errors.As(err, &res.RuleErrors) {
		return nil, fmt.Errorf("evaluating rules: %w", err)
	}
	return res, nil
}
