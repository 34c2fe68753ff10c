package cmd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/diagnose"
	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/live"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/probes"
	"github.com/whyslow/whyslow/rules"
)

// TraceOptions are the flags of `whyslow trace submit|exec|uevent|freeze`.
type TraceOptions struct {
	IO   *IO
	Kind live.Kind
	// Duration is how long to trace; 0 means until Ctrl-C (or SIGTERM).
	Duration time.Duration
	JSON     bool
	// Mechanism is --mechanism, as for diagnose.
	Mechanism []string
	BTF       string
	// Min is the threshold of submit and freeze: shorter ones are not shown.
	Min time.Duration
	// Ms shows submission latency in milliseconds (submit).
	Ms bool
	// Pid and Device filter submit and freeze: 0 and "" show all.
	Pid    int
	Device string
}

// traceSpec describes one `whyslow trace` subcommand.
type traceSpec struct {
	kind                 live.Kind
	short, long, example string
	probes               []string // every probe it may start (for --mechanism)
	bpf                  bool     // needs root and BTF
	min, filters, ms     bool
}

var traceSpecs = []traceSpec{
	{
		kind:  live.KindSubmit,
		short: "Print each slow bio submission: time, comm, pid, latency, disk",
		long: `Prints one line per bio submission slower than --min: seconds since the trace
started (when the submission began), the submitting process's comm and pid, the
latency (microseconds; milliseconds with --ms) and the disk.

The latency is measured by the best mechanism this kernel allows, said on stderr
at the start: submit_bio_noacct timed from entry to return (probe submitfn, on
fentry or kprobe) or else block_bio_queue to block_getrq/merge (probe submit, on
tracepoints), the wait before request accounting where frozen queues, throttling
and tag waits show. Needs root.`,
		example: `  sudo whyslow trace submit --min 5ms
  sudo whyslow trace submit --ms -d sda -p 1234 --duration 30s
  sudo whyslow trace submit --json | jq 'select(.latency_ns > 10e6)'`,
		probes: []string{event.ProbeSubmitFn, "submit"}, bpf: true, min: true, filters: true, ms: true,
	},
	{
		kind:  live.KindExec,
		short: "Print each program executed: time, comm, pid, ppid, ret, args",
		long: `Prints one line per exec, with execsnoop's columns: seconds since the trace
started, the new program's comm, its pid and parent pid, the return value and
the command line.

Execs that ran come from the sched_process_exec tracepoint (RET 0). Execs that
failed come from the syscalls:sys_exit_execve and sys_exit_execveat tracepoints:
RET is the error (-2: no such file, -13: permission denied), COMM and PID are
the caller's and ARGS what it asked for. Where those tracepoints cannot be
attached, the start line says so and only successful execs are shown. Needs root.`,
		example: `  sudo whyslow trace exec
  sudo whyslow trace exec --json --duration 10s`,
		probes: []string{"exec"}, bpf: true,
	},
	{
		kind:  live.KindUevent,
		short: "Print each kernel uevent: time, action, devpath (subsystem), devname, seqnum",
		long: `Prints one line per kernel uevent, as 'udevadm monitor --kernel' sees them:
seconds since the trace started (when the uevent was received), the action, the
device path and its subsystem, the device node name and the uevent's sequence
number. It listens on the kernel's netlink uevent socket, without BPF: it
needs neither root nor BTF.`,
		example: `  whyslow trace uevent
  whyslow trace uevent --json | grep '"devname":"sda"'`,
		probes: []string{"uevent"},
	},
	{
		kind:  live.KindFreeze,
		short: "Print each request queue freeze: freezer, device, duration, stacks",
		long: `Prints one entry per request queue freeze longer than --min: seconds since the
trace started, the freezer's comm and pid, the device, the duration in
milliseconds, the sysfs attribute the freezer had just opened for writing
(e.g. queue/scheduler), then the freezer's kernel and user stacks.

Where the kernel lets the freeze probe time the freeze functions (fentry or
kprobe), the duration is freeze start to unfreeze. Otherwise freezes are
inferred from freezers blocked in blk_mq_freeze_queue_wait (off-CPU stacks),
and the duration is that wait for the queue to drain. Devices are named as a
diagnosis names them: from the freezer's own sysfs write, else the waiters it
woke, else the one device whose submissions stalled meanwhile; entries are
printed about a quarter second after the freeze ends, once those events are
in. Needs root.`,
		example: `  sudo whyslow trace freeze
  sudo whyslow trace freeze -d sda --json --duration 60s`,
		probes: []string{event.ProbeFreeze, "offcpu", "sysfs", "submit"}, bpf: true, min: true, filters: true,
	},
}

func newCmdTrace(ios *IO) *cobra.Command {
	c := &cobra.Command{
		Use:   "trace",
		Short: "Print block layer, exec and uevent events live, one line each",
		Long: `Prints events as they happen, one line each (or one JSON object per line with
--json), until --duration passes or Ctrl-C. Losses are counted and printed on
stderr at the end.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return usagef("trace needs an event kind: whyslow trace submit|exec|uevent|freeze")
		},
	}
	for _, s := range traceSpecs {
		c.AddCommand(NewCmdTraceKind(ios, s.kind, nil))
	}
	return c
}

func specOf(k live.Kind) traceSpec {
	for _, s := range traceSpecs {
		if s.kind == k {
			return s
		}
	}
	panic("no trace spec for " + string(k))
}

// NewCmdTraceKind builds `whyslow trace KIND`; runF replaces the run for tests.
func NewCmdTraceKind(ios *IO, kind live.Kind, runF func(*TraceOptions) error) *cobra.Command {
	spec := specOf(kind)
	opts := &TraceOptions{IO: ios, Kind: kind}
	c := &cobra.Command{
		Use:     string(kind),
		Short:   spec.short,
		Long:    spec.long,
		Example: spec.example,
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := opts.validate(); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			return traceRun(c.Context(), opts)
		},
	}
	f := c.Flags()
	f.DurationVar(&opts.Duration, "duration", 0, "how long to trace; 0 traces until Ctrl-C")
	f.BoolVar(&opts.JSON, "json", false, "print one JSON object per line (fields: docs/trace-commands.md)")
	f.StringArrayVar(&opts.Mechanism, "mechanism", nil, "force a mechanism: fentry, kprobe, tp_btf, ... for every probe that offers it, or PROBE=MECHANISM for one (repeatable)")
	f.StringVar(&opts.BTF, "btf", diagnose.DefaultBTF, "kernel BTF file")
	if spec.min {
		f.DurationVar(&opts.Min, "min", time.Millisecond, "show only those that took at least this long")
	}
	if spec.ms {
		f.BoolVar(&opts.Ms, "ms", false, "show latency in milliseconds instead of microseconds")
	}
	if spec.filters {
		f.IntVarP(&opts.Pid, "pid", "p", 0, "show only this process (pid or thread id)")
		f.StringVarP(&opts.Device, "device", "d", "", "show only this block device, e.g. sda")
		_ = c.RegisterFlagCompletionFunc("device", completeDevices)
	}
	return c
}

func (o *TraceOptions) validate() error {
	if o.Duration < 0 {
		return usagef("--duration must not be negative, got %s", o.Duration)
	}
	if o.Min < 0 {
		return usagef("--min must not be negative, got %s", o.Min)
	}
	if o.Pid < 0 {
		return usagef("--pid must not be negative, got %d", o.Pid)
	}
	m, err := probes.ParseMechanism(o.Mechanism)
	if err != nil {
		return usagef("%s", err)
	}
	if err := m.Check(probesNamed(specOf(o.Kind).probes)); err != nil {
		return usagef("%s", err)
	}
	return nil
}

// probesNamed returns the registered probes of these names, in that order.
func probesNamed(names []string) []probes.Probe {
	var out []probes.Probe
	for _, n := range names {
		for _, p := range probes.All() {
			if p.Decl().Name == n {
				out = append(out, p)
			}
		}
	}
	return out
}

func traceRun(ctx context.Context, opts *TraceOptions) error {
	spec := specOf(opts.Kind)
	mech, err := probes.ParseMechanism(opts.Mechanism)
	if err != nil {
		return usagef("%s", err)
	}
	var kernel *btf.Spec
	if spec.bpf {
		var devices []string
		if opts.Device != "" {
			devices = []string{opts.Device}
		}
		// The same checks as diagnose: privilege, BTF, devices. Check wants a
		// duration and a rule set; a trace needs neither.
		kernel, err = diagnose.Check(diagnose.Options{Duration: 1, Rules: &rules.Set{}, BTF: opts.BTF,
			Devices: devices, Mechanism: mech, Probes: probesNamed(spec.probes)})
		if err != nil {
			return err
		}
		if err := rlimit.RemoveMemlock(); err != nil {
			return fmt.Errorf("raising the locked-memory limit for BPF maps: %w", err)
		}
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	// With SIGPIPE notified, a write to a closed pipe fails with EPIPE
	// instead of killing the process, so the probes are stopped cleanly.
	sigpipe := make(chan os.Signal, 1)
	signal.Notify(sigpipe, syscall.SIGPIPE)
	defer signal.Stop(sigpipe)

	t := newTracer(opts, probes.Config{MinLatency: opts.Min, KernelTypes: kernel, ProcFS: "/proc", SysFS: "/sys", Mechanism: mech,
		FailedExecs: opts.Kind == live.KindExec})
	line, err := t.startProbes()
	if err != nil {
		return err
	}
	until := "until Ctrl-C"
	if opts.Duration > 0 {
		until = fmt.Sprintf("for %s (Ctrl-C ends early)", opts.Duration)
	}
	fmt.Fprintf(opts.IO.ErrOut, "whyslow: %s; %s\n", line, until)
	t.openOutput()
	t.wait(ctx)
	stopErr := t.stopProbes()
	t.printLosses()
	if stopErr != nil {
		return stopErr
	}
	return t.outputErr()
}

// tracer is the probes.Sink of a trace: it turns events into records and
// writes them, one at a time, to the output.
type tracer struct {
	opts  *TraceOptions
	cfg   probes.Config
	lopts live.Options
	start event.Mono

	mu      sync.Mutex
	w       *bufio.Writer
	open    bool          // the header is written: records go out at once
	pending []live.Record // records that came before the header
	werr    error         // the first write error; nothing is written after it
	failed  chan struct{} // closed on the first write error
	losses  []event.Loss

	freezes *live.Freezes // freeze traces only
	running []probes.Running
}

func newTracer(opts *TraceOptions, cfg probes.Config) *tracer {
	t := &tracer{opts: opts, cfg: cfg, lopts: live.Options{JSON: opts.JSON, Ms: opts.Ms},
		w: bufio.NewWriter(opts.IO.Out), failed: make(chan struct{})}
	t.start = monoNow()
	if opts.Kind == live.KindFreeze {
		t.freezes = live.NewFreezes(t.start, nil, cfg.MinLatency)
	}
	return t
}

var _ probes.Sink = (*tracer)(nil)

// Event implements probes.Sink.
func (t *tracer) Event(e event.Event) {
	switch t.opts.Kind {
	case live.KindSubmit:
		var r live.Submit
		switch v := e.(type) {
		case event.SlowSubmit:
			r = live.SubmitFromSlow(v, t.start)
		case event.SubmitCall:
			r = live.SubmitFromCall(v, t.start)
		default:
			return
		}
		if t.keep(r.Pid, r.Tid, r.Disk) {
			t.emit(r)
		}
	case live.KindExec:
		if v, ok := e.(event.Exec); ok {
			t.emit(live.ExecFrom(v, t.start))
		}
	case live.KindUevent:
		if v, ok := e.(event.Uevent); ok {
			t.emit(live.UeventFrom(v, t.start))
		}
	case live.KindFreeze:
		t.freezes.Add(e)
	}
}

// Loss implements probes.Sink.
func (t *tracer) Loss(l event.Loss) {
	if l.Count == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range t.losses {
		if t.losses[i].Probe == l.Probe && t.losses[i].What == l.What {
			t.losses[i].Count += l.Count
			return
		}
	}
	t.losses = append(t.losses, l)
}

// Histogram implements probes.Sink: a trace shows single events only.
func (t *tracer) Histogram(timeline.HistKind, event.Device, *hist.Histogram) {}

// keep applies -p and -d.
func (t *tracer) keep(pid, tid uint32, dev string) bool {
	if p := t.opts.Pid; p != 0 && uint32(p) != pid && uint32(p) != tid {
		return false
	}
	return t.opts.Device == "" || t.opts.Device == dev
}

// emit writes a record, or keeps it until the header is written.
func (t *tracer) emit(r live.Record) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.open {
		t.pending = append(t.pending, r)
		return
	}
	t.write(r)
}

// write formats and writes one record and flushes it, so that a reader
// (a pipe into grep or head) sees each line at once. t.mu is held.
func (t *tracer) write(r live.Record) {
	if t.werr != nil {
		return
	}
	b, err := live.Format(r, t.lopts)
	if err == nil {
		_, err = t.w.Write(b)
	}
	if err == nil {
		err = t.w.Flush()
	}
	if err != nil {
		t.fail(err)
	}
}

func (t *tracer) fail(err error) {
	if t.werr == nil {
		t.werr = err
		close(t.failed)
	}
}

// openOutput writes the header and the records that came before it.
func (t *tracer) openOutput() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if h := live.Header(t.opts.Kind, t.lopts); h != "" {
		if _, err := t.w.WriteString(h); err != nil {
			t.fail(err)
		} else if err := t.w.Flush(); err != nil {
			t.fail(err)
		}
	}
	t.open = true
	for _, r := range t.pending {
		t.write(r)
	}
	t.pending = nil
}

// outputErr is the write error that ended the trace, or nil. A reader that
// went away (EPIPE: `| head`) ends a trace normally.
func (t *tracer) outputErr() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.werr == nil || errors.Is(t.werr, unix.EPIPE) {
		return nil
	}
	return fmt.Errorf("writing the trace: %w", t.werr)
}

// startProbes starts the probes of the trace and returns the line that
// says what runs on which mechanism. If the probe the trace rests on cannot
// start, everything is stopped and the error says why.
func (t *tracer) startProbes() (string, error) {
	var statuses []event.ProbeStatus
	start := func(name string) (probes.Running, event.ProbeStatus) {
		p := probesNamed([]string{name})[0]
		r, st := p.Start(t.cfg, t)
		if st.Name == "" {
			st.Name = name
		}
		if r != nil {
			t.running = append(t.running, r)
		}
		statuses = append(statuses, st)
		return r, st
	}
	fail := func(st event.ProbeStatus) (string, error) {
		_ = t.stopProbes()
		return "", fmt.Errorf("probe %s cannot run: %s", st.Name, st.Reason)
	}
	var warns []string
	aux := func(name string) string {
		r, st := start(name)
		if r == nil {
			warns = append(warns, fmt.Sprintf("%s unavailable (%s)", name, st.Reason))
			return ""
		}
		return fmt.Sprintf("%s on %s", name, st.Mechanism)
	}
	var line string
	switch t.opts.Kind {
	case live.KindSubmit:
		r, st := start(event.ProbeSubmitFn)
		if r == nil {
			return fail(st)
		}
		what := fmt.Sprintf("tracing bio submissions slower than %s", t.cfg.MinLatency)
		if direct(st.Mechanism) {
			line = fmt.Sprintf("%s: %s on %s (%s, entry to return)", what, st.Name, st.Mechanism, strings.TrimPrefix(st.Reason, "on "))
			break
		}
		// The direct rungs did not work: the submit probe's tracepoints
		// measure instead (the inferred rung itself runs nothing).
		_ = r.Stop()
		t.running = t.running[:len(t.running)-1]
		r2, st2 := start("submit")
		if r2 == nil {
			return fail(st2)
		}
		line = fmt.Sprintf("%s: %s on %s (block_bio_queue to getrq/merge)%s", what, st2.Name, st2.Mechanism, skippedNote(st))
	case live.KindExec:
		r, st := start("exec")
		if r == nil {
			return fail(st)
		}
		if strings.HasPrefix(st.Reason, "failed execs not seen") {
			line = fmt.Sprintf("tracing execs: %s on %s (sched_process_exec; successful execs only: %s)", st.Name, st.Mechanism, st.Reason)
		} else {
			line = fmt.Sprintf("tracing execs: %s on %s (sched_process_exec; failed ones from syscalls:sys_exit_execve and sys_exit_execveat)", st.Name, st.Mechanism)
		}
	case live.KindUevent:
		r, st := start("uevent")
		if r == nil {
			return fail(st)
		}
		line = fmt.Sprintf("tracing kernel uevents: %s on %s (kernel group)", st.Name, st.Mechanism)
	case live.KindFreeze:
		r, st := start(event.ProbeFreeze)
		if r == nil {
			return fail(st)
		}
		what := fmt.Sprintf("tracing queue freezes longer than %s", t.cfg.MinLatency)
		var names []string
		if direct(st.Mechanism) {
			line = fmt.Sprintf("%s: %s on %s (%s, freeze to unfreeze)", what, st.Name, st.Mechanism, strings.TrimPrefix(st.Reason, "on "))
		} else {
			r2, st2 := start("offcpu")
			if r2 == nil {
				return fail(st2)
			}
			line = fmt.Sprintf("%s: inferred by %s on %s from freezers blocked in blk_mq_freeze_queue_wait%s", what, st2.Name, st2.Mechanism, skippedNote(st))
			if s := aux("submit"); s != "" {
				names = append(names, s)
			}
		}
		if s := aux("sysfs"); s != "" {
			names = append([]string{s}, names...)
		}
		if len(names) > 0 {
			line += "; devices named with " + strings.Join(names, " and ")
		}
		t.freezes.SetProbes(statuses)
	}
	for _, w := range warns {
		fmt.Fprintf(t.opts.IO.ErrOut, "whyslow: %s: freezes may lack their device or attribute\n", w)
	}
	return line, nil
}

func direct(m event.Mechanism) bool { return m == event.MechFentry || m == event.MechKprobe }

// skippedNote says why a probe did not run on its better mechanisms.
func skippedNote(st event.ProbeStatus) string {
	if len(st.Skipped) == 0 {
		return ""
	}
	forced := true
	for _, s := range st.Skipped {
		forced = forced && strings.HasPrefix(s.Reason, "not tried: --mechanism")
	}
	if forced {
		return fmt.Sprintf("; %s forced onto %s by --mechanism", st.Name, st.Mechanism)
	}
	var parts []string
	for _, s := range st.Skipped {
		parts = append(parts, fmt.Sprintf("%s: %s", s.Mechanism, s.Reason))
	}
	return fmt.Sprintf("; %s could not run directly: %s", st.Name, strings.Join(parts, ", "))
}

// wait returns when the trace should end: --duration passed, Ctrl-C or
// SIGTERM, or the output is gone. Freeze traces print settled freezes
// meanwhile.
func (t *tracer) wait(ctx context.Context) {
	var deadline <-chan time.Time
	if t.opts.Duration > 0 {
		timer := time.NewTimer(t.opts.Duration)
		defer timer.Stop()
		deadline = timer.C
	}
	var tick <-chan time.Time
	if t.freezes != nil {
		ticker := time.NewTicker(100 * time.Millisecond)
		defer ticker.Stop()
		tick = ticker.C
	}
	done := make(chan struct{})
	defer close(done)
	gone := readerGone(t.opts.IO.Out, done)
	for {
		select {
		case <-ctx.Done():
			return
		case <-deadline:
			return
		case <-t.failed:
			return
		case <-gone:
			return
		case <-tick:
			t.printFreezes(false)
		}
	}
}

// printFreezes writes the freezes that have settled (all, when final).
func (t *tracer) printFreezes(final bool) {
	for _, s := range t.freezes.Ready(monoNow(), final) {
		r := live.FreezeFrom(s)
		if t.keep(r.Pid, r.Tid, r.Device) {
			t.emit(r)
		}
	}
}

// stopProbes stops every started probe, last started first, which
// delivers what they still buffer and their loss counts.
func (t *tracer) stopProbes() error {
	var errs []string
	for i := len(t.running) - 1; i >= 0; i-- {
		if err := t.running[i].Stop(); err != nil {
			errs = append(errs, err.Error())
		}
	}
	t.running = nil
	if t.freezes != nil {
		t.printFreezes(true)
		if n := t.freezes.Dropped(); n > 0 {
			t.Loss(event.Loss{Probe: "trace", What: "freeze attribution buffer full", Count: n})
		}
	}
	t.mu.Lock()
	if t.werr == nil {
		if err := t.w.Flush(); err != nil {
			t.fail(err)
		}
	}
	t.mu.Unlock()
	if len(errs) > 0 {
		return fmt.Errorf("stopping probes: %s", strings.Join(errs, "; "))
	}
	return nil
}

// printLosses says on stderr how many events the probes could not deliver.
func (t *tracer) printLosses() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.losses) == 0 {
		return
	}
	var total uint64
	parts := make([]string, 0, len(t.losses))
	for _, l := range t.losses {
		total += l.Count
		parts = append(parts, fmt.Sprintf("%s: %s %d", l.Probe, l.What, l.Count))
	}
	slices.Sort(parts)
	fmt.Fprintf(t.opts.IO.ErrOut, "whyslow: lost %d events (%s)\n", total, strings.Join(parts, "; "))
}

// readerGone returns a channel closed when w is a pipe whose reader has
// gone (`whyslow trace exec | head -n 1` after head exits), so that a trace
// with no more events to write still ends; nil when w is not a pipe.
func readerGone(w io.Writer, done <-chan struct{}) <-chan struct{} {
	f, ok := w.(*os.File)
	if !ok {
		return nil
	}
	fd := int(f.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		return nil
	}
	gone := make(chan struct{})
	go func() {
		// A pipe's write end polls POLLERR once no reader is left.
		fds := []unix.PollFd{{Fd: int32(fd)}}
		for {
			select {
			case <-done:
				return
			default:
			}
			n, err := unix.Poll(fds, 200)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return
			}
			if n > 0 && fds[0].Revents&(unix.POLLERR|unix.POLLHUP) != 0 {
				close(gone)
				return
			}
		}
	}()
	return gone
}

// monoNow reads CLOCK_MONOTONIC, the clock of every event.
func monoNow() event.Mono {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return event.Mono(time.Now().UnixNano())
	}
	return event.Mono(ts.Nano())
}
