// Package serve is `whyslow serve`: whyslow always on. It starts every
// probe once (one probes.Start group) and keeps them running; what they
// deliver goes into a flight recorder (internal/flight) that holds the
// last minutes within one memory bound. Every window (--window) it takes a
// checkpoint of the probes' counters, reads the window's stretch of the
// run from the recorder (its events, the losses in it, its histograms as
// the difference of the checkpoints at its ends), evaluates the rules on
// it as a diagnosis would (diagnose.Analyze) and publishes the result: on
// /metrics (internal/metrics), as a report on /report, and the recorder's
// recent run as a trace on /trace.
package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf/btf"

	"github.com/whyslow/whyslow/diagnose"
	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/facts"
	"github.com/whyslow/whyslow/internal/flight"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/metrics"
	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/stage"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/internal/trouble"
	"github.com/whyslow/whyslow/probes"
	"github.com/whyslow/whyslow/rules"
)

// Defaults of Options.
const (
	DefaultListen          = "127.0.0.1:9717"
	DefaultWindow          = time.Minute
	DefaultCheckpointEvery = 10 * time.Second
	// MinWindow is the shortest window: a window is whole segments of a
	// second.
	MinWindow = 2 * time.Second
)

// Options configure serve.
type Options struct {
	// Window is how often the rules are evaluated, on what came in since
	// the previous window.
	Window     time.Duration
	MinLatency time.Duration
	// Devices restricts the analysis and the histograms to these devices.
	Devices []string
	// Rules is the set evaluated at first; LoadRules loads it again
	// (--rules) when Reload receives.
	Rules     *rules.Set
	LoadRules func() (*rules.Set, error)
	// Stages names the stages of blocked stacks (--stages); nil means
	// the built-in table. LoadStages, when set, loads it again when
	// Reload receives.
	Stages     *stage.Table
	LoadStages func() (*stage.Table, error)
	Reload     <-chan struct{}
	// BTF, Kernel, Mechanism, ProcFS, SysFS and Probes are those of
	// diagnose.Options.
	BTF           string
	Kernel        *btf.Spec
	Mechanism     probes.MechanismChoice
	ProcFS, SysFS string
	Probes        []probes.Probe
	// FlightRecorder is how much of the recent run /trace can dump, and
	// FlightMemory the memory bound of what the recorder holds
	// (internal/flight); 0 means their defaults.
	FlightRecorder time.Duration
	FlightMemory   int64
	// CheckpointEvery is how often the probes' counters are read for the
	// flight recorder, besides at every window's end (the start of a
	// dump is rounded down to one); 0 means DefaultCheckpointEvery.
	CheckpointEvery time.Duration
	// Tick is the length of a flight recorder segment; 0 means a second.
	Tick time.Duration
	// WindowSums bounds the sums a window (and a /trace dump) counts
	// along its checkpoints (flight.WindowSums); zero fields mean
	// flight.DefaultSumsBound's.
	WindowSums flight.SumsBound
	// Version is whyslow's, for the reports and traces.
	Version string
	// ArmedMode (experimental, --armed-mode) is diagnose.Options'
	// ArmedMode: "auto" (armed while the trouble watcher sees trouble),
	// "test-disarmed", or "" (the default: every program attached).
	ArmedMode string
	// Cgroup (--cgroup, resolved by trouble.CgroupDir) scopes armed mode
	// auto's PSI signals to that cgroup v2 (trouble.Config.Cgroup).
	Cgroup string
	// Log is where serve says what it does and what goes wrong (stderr).
	Log io.Writer
	// Ready, when set, is called once the probes run and the server
	// answers.
	Ready func(addr net.Addr, statuses []event.ProbeStatus)
}

func (o *Options) defaults() {
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	if o.FlightRecorder <= 0 {
		o.FlightRecorder = flight.DefaultKeep
	}
	if o.FlightMemory <= 0 {
		o.FlightMemory = flight.DefaultMaxBytes
	}
	if o.CheckpointEvery <= 0 {
		o.CheckpointEvery = DefaultCheckpointEvery
	}
	if o.Tick <= 0 {
		o.Tick = time.Second
	}
	if o.ProcFS == "" {
		o.ProcFS = "/proc"
	}
	if o.SysFS == "" {
		o.SysFS = "/sys"
	}
	if o.Probes == nil {
		o.Probes = probes.All()
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
}

// Validate checks the options themselves.
func (o Options) Validate() error {
	o.defaults()
	if o.Window < MinWindow {
		return fmt.Errorf("--window must be at least %s, got %s", MinWindow, o.Window)
	}
	if o.FlightRecorder < o.Window {
		return fmt.Errorf("--flight-recorder (%s) must hold at least one --window (%s)", o.FlightRecorder, o.Window)
	}
	if o.FlightRecorder > 24*time.Hour {
		return fmt.Errorf("--flight-recorder must be at most 24h, got %s", o.FlightRecorder)
	}
	if o.FlightMemory < 1<<20 {
		return fmt.Errorf("--flight-recorder-memory must be at least 1MiB, got %d bytes", o.FlightMemory)
	}
	if o.MinLatency < 0 {
		return fmt.Errorf("--min-latency must not be negative, got %s", o.MinLatency)
	}
	return o.Mechanism.Check(o.Probes)
}

// agent is a running serve.
type agent struct {
	opts     Options
	rec      *flight.Recorder
	g        *probes.Group
	m        *metrics.Metrics
	host     string
	kernel   string
	statuses []event.ProbeStatus

	// The clocks at the start: event times to wall-clock times.
	wall0 time.Time
	mono0 event.Mono

	// stateMu serializes the reads of the probes' counters (and their
	// stop).
	stateMu sync.Mutex
	// In an armed mode: the trouble watcher, armed mode auto's
	// controller, and the coverage of a run never armed (test-disarmed).
	watch    *trouble.Watcher
	auto     *trouble.Auto
	disarmed *trouble.Coverage
	// dumping holds one /trace dump at a time.
	dumping chan struct{}

	mu       sync.Mutex
	set      *rules.Set
	stages   *stage.Table
	last     *window // the last window evaluated
	lastTick time.Time
	holders  []event.Holder
}

// window is an evaluated window.
type window struct {
	start, end time.Time
	rep        *report.Report
	run        *facts.Run
}

// Run serves on ln until ctx ends: it starts the probes (probes.Prepare
// must have passed: Options.Kernel), serves /metrics, /report, /trace and
// /healthz, evaluates every window, reloads the rules on Reload, and at
// the end stops the server and detaches the probes. It returns nil when
// ctx ended it.
func Run(ctx context.Context, ln net.Listener, opts Options) error {
	opts.defaults()
	if err := opts.Validate(); err != nil {
		return err
	}
	if opts.Rules == nil {
		return errors.New("no rules loaded")
	}
	host, _ := os.Hostname()
	a := &agent{opts: opts, host: host, kernel: diagnose.KernelRelease(), set: opts.Rules, stages: opts.Stages,
		m: metrics.New(opts.Version, diagnose.KernelRelease()), dumping: make(chan struct{}, 1)}
	a.m.Rules(len(opts.Rules.Rules()), false, true)
	holders, err := diagnose.ReadHolders(opts.SysFS)
	if err != nil {
		return err
	}
	a.holders = holders

	start, err := event.Now()
	if err != nil {
		return err
	}
	a.wall0, a.mono0 = time.Now(), start
	a.rec = flight.New(flight.Options{MaxBytes: opts.FlightMemory, Keep: opts.FlightRecorder}, start)
	cfg := probes.Config{MinLatency: opts.MinLatency, KernelTypes: opts.Kernel, ProcFS: opts.ProcFS, SysFS: opts.SysFS,
		Mechanism: opts.Mechanism}
	var sink probes.Sink = a.rec
	if opts.ArmedMode == trouble.ModeAuto {
		// The trouble watcher (scoped to --device's disks, and PSI) arms
		// the hot-hook programs: it is shown every event, as in diagnose.
		a.auto = trouble.NewAuto(func(s string) { fmt.Fprintf(opts.Log, "whyslow: %s\n", s) })
		a.watch = trouble.New(trouble.Config{ProcFS: opts.ProcFS, SysFS: opts.SysFS, Devices: opts.Devices, Cgroup: opts.Cgroup, OnSignal: a.auto.Signal})
		if err := a.watch.Start(ctx); err != nil {
			return fmt.Errorf("armed mode auto: the trouble watcher could not start: %w", err)
		}
		sink = watchedSink{a.rec, a.watch}
	}
	a.g = probes.Start(cfg, sink, opts.Probes...)
	a.statuses = a.g.Statuses()
	a.m.SetProbes(a.statuses)
	if len(a.g.Running()) == 0 {
		if a.watch != nil {
			a.watch.Stop(start)
		}
		return fmt.Errorf("no probe could start (%s)", a.g.Unavailable())
	}
	defer a.stop()
	if opts.ArmedMode != "" {
		if err := a.g.Disarm(); err != nil {
			return err
		}
		switch opts.ArmedMode {
		case trouble.ModeAuto:
			a.auto.Run(a.watch, a.g, start, a.g.Running(), a.g.Gated())
		case trouble.ModeTestDisarmed:
			a.disarmed = &trouble.Coverage{Mode: trouble.ModeTestDisarmed, Start: start, Probes: a.g.Running(), Gated: a.g.Gated()}
		}
		a.m.SetArmed(a.armedState)
	}
	first := a.state(start, true)
	a.rec.AddState(first)
	a.m.SetHistograms(first.Devices)

	srv := &http.Server{
		Handler:           a.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          nil,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	windows := make(chan *timeline.Timeline, 1)
	evaluated := make(chan struct{})
	go func() {
		defer close(evaluated)
		for tl := range windows {
			a.evaluate(tl)
		}
	}()
	a.mu.Lock()
	a.lastTick = time.Now()
	a.mu.Unlock()
	if opts.Ready != nil {
		opts.Ready(ln.Addr(), a.statuses)
	}

	err = a.loop(ctx, first, windows, served)
	close(windows)
	shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if serr := srv.Shutdown(shut); serr != nil {
		srv.Close()
	}
	<-evaluated
	return err
}

// armedState is the armed mode's state for /metrics: never armed in
// test-disarmed.
func (a *agent) armedState() metrics.Armed {
	if a.auto == nil {
		return metrics.Armed{}
	}
	now, err := event.Now()
	if err != nil {
		return metrics.Armed{Armed: a.auto.Armed()}
	}
	st := a.auto.Stats(now)
	return metrics.Armed{Armed: st.Armed, Seconds: st.ArmedTime.Seconds(), Armings: uint64(st.Armings)}
}

// loop rotates the flight recorder every tick, reads the probes' counters
// every CheckpointEvery and at every window's end, and hands each window
// to the evaluation, until ctx ends or the server fails.
func (a *agent) loop(ctx context.Context, first flight.State, windows chan<- *timeline.Timeline, served <-chan error) error {
	tick := time.NewTicker(a.opts.Tick)
	defer tick.Stop()
	began := time.Now()
	// What is held of the window's checkpoints: the state at its start
	// (no sums: its histograms and loss counters), the latest state (the
	// sums the next difference needs, flight.State.Carried) and the
	// window's sums counted along its checkpoints (bounded,
	// flight.WindowSums).
	winStart, lastState := first.WithoutSums(), first.Carried()
	sums := flight.WindowSums{Bound: a.opts.WindowSums}
	var folded timeline.Timeline // the losses of the windows' sums so far (flight.FoldedLoss)
	nextWindow := a.opts.Window
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-served:
			return fmt.Errorf("serving: %w", err)
		case <-a.opts.Reload:
			a.reload()
			continue
		case <-tick.C:
		}
		now, err := event.Now()
		if err != nil {
			return err
		}
		a.rec.Rotate(now)
		// A window ends at the tick nearest its length.
		windowDue := time.Since(began) >= nextWindow-a.opts.Tick/2
		if windowDue || now.Sub(lastState.At) >= a.opts.CheckpointEvery-a.opts.Tick/2 {
			st := a.state(now, true)
			a.rec.AddState(st)
			sums.Add(st, lastState)
			a.m.SetWindowSums(sums.Len(), sums.Bytes())
			lastState = st.Carried()
			a.m.SetHistograms(a.filterDevices(lastState.Devices))
		}
		a.m.SetLosses(a.totalLosses(lastState, folded.Losses, sums.Losses()))
		a.m.SetFlight(a.rec.Stats())
		a.mu.Lock()
		a.lastTick = time.Now()
		a.mu.Unlock()
		if !windowDue {
			continue
		}
		nextWindow += a.opts.Window
		tl := a.rec.Events(winStart, lastState)
		for _, l := range sums.Take(tl) {
			folded.AddLoss(l)
		}
		a.m.SetWindowSums(sums.Len(), sums.Bytes())
		winStart = lastState.WithoutSums()
		a.fill(tl)
		select {
		case windows <- tl:
		default:
			a.m.SkipWindow()
			fmt.Fprintf(a.opts.Log, "whyslow: window ending %s skipped: the previous one is still being evaluated\n", a.wall(now).Format(time.RFC3339))
		}
	}
}

// state reads the probes' counters: their cumulative histograms and loss
// counters. With prune (the states the flight recorder keeps, each of
// them: a window's sums are counted along them, flight.WindowSums), the
// sums of the processes that had exited by then are removed from the
// probes once read, so that their maps do not fill over a long run.
func (a *agent) state(at event.Mono, prune bool) flight.State {
	sink := &stateSink{}
	var removed map[string][]uint32
	a.stateMu.Lock()
	if a.g != nil {
		if err := a.g.Checkpoint(sink); err != nil {
			fmt.Fprintf(a.opts.Log, "whyslow: %v\n", err)
		} else if prune {
			if removed, err = a.g.Prune(); err != nil {
				fmt.Fprintf(a.opts.Log, "whyslow: %v\n", err)
			}
		}
	}
	a.stateMu.Unlock()
	return flight.State{At: at, Devices: sink.tl.Devices, Losses: sink.tl.Losses,
		Stats: sink.tl.SyscallStats, Blocked: sink.tl.BlockedStacks, MemStalls: sink.tl.MemStalls, Requeues: sink.tl.Requeues,
		IOUsage: sink.tl.IOUsage, Unfinished: sink.tl.UnfinishedCalls, Pruned: removed[event.ProbeSyscall], PrunedIO: removed[event.ProbeSubmit]}
}

// stop detaches the probes: armed mode auto's controller stops first (an
// arming under way ends), so that nothing arms them as they stop.
func (a *agent) stop() {
	if a.auto != nil {
		if end, err := event.Now(); err == nil {
			a.auto.Stop(end)
		}
	}
	if a.watch != nil {
		a.watch.Stop(a.mono0)
	}
	a.stateMu.Lock()
	defer a.stateMu.Unlock()
	if err := a.g.Stop(); err != nil {
		fmt.Fprintf(a.opts.Log, "whyslow: %v\n", err)
	}
	a.g = nil
}

// coverage is the armed mode's coverage of [start, end], nil in the
// default mode.
func (a *agent) coverage(start, end event.Mono) *trouble.Coverage {
	switch {
	case a.auto != nil:
		return a.auto.Coverage(end).Within(start, end)
	case a.disarmed != nil:
		return a.disarmed.Within(start, end)
	}
	return nil
}

// watchedSink is the probes' sink in armed mode auto: the flight
// recorder, with every event shown to the trouble watcher first.
type watchedSink struct {
	*flight.Recorder
	w *trouble.Watcher
}

func (s watchedSink) Event(e event.Event) {
	s.w.Observe(e)
	s.Recorder.Event(e)
}

// stateSink gathers what the probes deliver at a checkpoint.
type stateSink struct{ tl timeline.Timeline }

// Event keeps the sums a probe delivers whole (timeline.Sums streams: the
// syscall probe's); its other events went to the recorder as they came.
func (s *stateSink) Event(e event.Event) {
	if st := timeline.StreamOf(e); st != nil && st.State() {
		s.tl.Add(e)
	}
}
func (s *stateSink) Loss(l event.Loss) { s.tl.AddLoss(l) }
func (s *stateSink) Histogram(kind timeline.HistKind, dev event.Device, h *hist.Histogram) {
	s.tl.MergeHistogram(kind, dev, h)
}

// totalLosses are every loss so far: those the recorder was told of or
// counted, the probes' counters of the latest state, and those of the
// windows' sums (more: their bound, flight.WindowSums).
func (a *agent) totalLosses(st flight.State, more ...[]event.Loss) []event.Loss {
	var t timeline.Timeline
	for _, l := range a.rec.Totals() {
		t.AddLoss(l)
	}
	for _, l := range st.Losses {
		t.AddLoss(l)
	}
	for _, ls := range more {
		for _, l := range ls {
			t.AddLoss(l)
		}
	}
	return t.Losses
}

// filterDevices keeps the --device devices, if any were named.
func (a *agent) filterDevices(devs []timeline.DeviceHistograms) []timeline.DeviceHistograms {
	if len(a.opts.Devices) == 0 {
		return devs
	}
	var out []timeline.DeviceHistograms
	for _, d := range devs {
		for _, n := range a.opts.Devices {
			if d.Dev.Name == n {
				out = append(out, d)
			}
		}
	}
	return out
}

// fill completes a stretch of the run read from the recorder as a
// diagnosis's timeline.
func (a *agent) fill(tl *timeline.Timeline) {
	tl.Kernel, tl.Hostname, tl.MinLatency = a.kernel, a.host, a.opts.MinLatency
	tl.Coverage = a.coverage(tl.Start, tl.End)
	tl.Probes = append([]event.ProbeStatus(nil), a.statuses...)
	if h, err := diagnose.ReadHolders(a.opts.SysFS); err == nil {
		a.mu.Lock()
		a.holders = h
		a.mu.Unlock()
	}
	a.mu.Lock()
	tl.Holders = a.holders
	a.mu.Unlock()
}

// wall is the wall-clock time of an event time.
func (a *agent) wall(m event.Mono) time.Time { return a.wall0.Add(m.Sub(a.mono0)) }

// rules returns the rule set in use.
func (a *agent) rules() *rules.Set {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.set
}

// stageTable returns the stage table in use (nil: the built-in one).
func (a *agent) stageTable() *stage.Table {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stages
}

// reload loads the rules and the stage table again, each on its own: one
// that fails to load leaves the one in use, and says why (the reload
// counts as failed).
func (a *agent) reload() {
	if a.opts.LoadRules == nil && a.opts.LoadStages == nil {
		return
	}
	ok := true
	if a.opts.LoadRules != nil {
		if set, err := a.opts.LoadRules(); err != nil {
			ok = false
			fmt.Fprintf(a.opts.Log, "whyslow: SIGHUP: reloading the rules failed, the %d rules loaded before stay in use: %v\n", len(a.rules().Rules()), err)
		} else {
			a.mu.Lock()
			a.set = set
			a.mu.Unlock()
			fmt.Fprintf(a.opts.Log, "whyslow: SIGHUP: reloaded the rules: %d in use from the next window on\n", len(set.Rules()))
		}
	}
	if a.opts.LoadStages != nil {
		if t, err := a.opts.LoadStages(); err != nil {
			ok = false
			fmt.Fprintf(a.opts.Log, "whyslow: SIGHUP: reloading the stage table failed, the table loaded before stays in use: %v\n", err)
		} else {
			a.mu.Lock()
			a.stages = t
			a.mu.Unlock()
			which := "the built-in one"
			if t != nil {
				which = "the built-in one extended by --stages"
			}
			fmt.Fprintf(a.opts.Log, "whyslow: SIGHUP: reloaded the stage table: %s, in use from the next window on\n", which)
		}
	}
	a.m.Rules(len(a.rules().Rules()), true, ok)
}

// evaluate analyzes one window and publishes its result.
func (a *agent) evaluate(tl *timeline.Timeline) {
	tl.Sort()
	res, err := diagnose.AnalyzeWith(tl, a.rules(), a.opts.Devices, a.stageTable())
	if err != nil {
		fmt.Fprintf(a.opts.Log, "whyslow: evaluating the window ending %s: %v\n", a.wall(tl.End).Format(time.RFC3339), err)
		return
	}
	start, end := a.wall(tl.Start), a.wall(tl.End)
	rep := report.Build(tl, res.Run, res.Findings, report.Meta{
		Version:      a.opts.Version,
		StartedAt:    start,
		Duration:     a.opts.Window,
		MinLatency:   a.opts.MinLatency,
		Devices:      a.opts.Devices,
		RuleErrors:   res.RuleErrors,
		NotEvaluated: res.NotEvaluated,
	})
	freezes := map[string]uint64{}
	stages := map[[2]string]time.Duration{}
	for _, d := range res.Run.Devices {
		if n := d.Freezes.Count(); n > 0 {
			freezes[d.Name] += uint64(n)
		}
		// The application's view: the time the processes' storage calls
		// to the device were blocked, by stage (a closed set).
		for _, p := range d.Processes {
			for _, st := range p.Stages {
				name := st.Stage
				if !slices.Contains(stage.Vocabulary, name) {
					name = stage.Other
				}
				stages[[2]string{name, d.Name}] += st.Total
			}
		}
	}
	a.m.AddWindow(metrics.Window{End: end, Duration: tl.Duration(), Findings: res.Findings, Freezes: freezes,
		Stages: stages, RuleErrors: res.RuleErrors})
	for _, e := range res.RuleErrors {
		fmt.Fprintf(a.opts.Log, "whyslow: window ending %s: rule %s failed: %s\n", end.Format(time.RFC3339), e.Rule, e.What())
	}
	a.mu.Lock()
	a.last = &window{start: start, end: end, rep: rep, run: res.Run}
	a.mu.Unlock()
}

// lastWindow returns the last window evaluated, nil before the first.
func (a *agent) lastWindow() *window {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}
