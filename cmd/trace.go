package cmd

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cilium/ebpf/btf"
	"github.com/spf13/cobra"

	"github.com/whyslow/whyslow/diagnose"
	"github.com/whyslow/whyslow/internal/live"
	"github.com/whyslow/whyslow/probes"
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

// traceSpec describes one `whyslow trace` subcommand: its help and flags
// (what it starts is live's: live.Probes, live.NeedsBPF).
type traceSpec struct {
	kind                 live.Kind
	short, long, example string
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
		min: true, filters: true, ms: true,
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
		min: true, filters: true,
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
	f.StringVar(&opts.BTF, "btf", probes.DefaultBTF, "kernel BTF file")
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
	if err := m.Check(live.Probes(o.Kind)); err != nil {
		return usagef("%s", err)
	}
	return nil
}

func traceRun(ctx context.Context, opts *TraceOptions) error {
	mech, err := probes.ParseMechanism(opts.Mechanism)
	if err != nil {
		return usagef("%s", err)
	}
	var kernel *btf.Spec
	if live.NeedsBPF(opts.Kind) {
		if opts.Device != "" {
			if err := diagnose.CheckDevice("/sys", opts.Device); err != nil {
				return err
			}
		}
		if kernel, err = probes.Prepare(opts.BTF); err != nil {
			return err
		}
	}
	if ctx == nil {
		ctx = context.Background()
	}
	// Ctrl-C, kill or a terminal that hangs up end the trace (exit 0); a
	// signal the process was started with ignored stays ignored.
	var sigs []os.Signal
	for _, sig := range stopSignals {
		if !signal.Ignored(sig) {
			sigs = append(sigs, sig)
		}
	}
	if len(sigs) > 0 { // none would mean every signal
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, sigs...)
		defer stop()
	}
	// With SIGPIPE notified, a write to a closed pipe fails with EPIPE
	// instead of killing the process, so the probes are stopped cleanly.
	sigpipe := make(chan os.Signal, 1)
	signal.Notify(sigpipe, syscall.SIGPIPE)
	defer signal.Stop(sigpipe)
	return live.Trace(ctx, live.TraceOptions{
		Kind: opts.Kind, Out: opts.IO.Out, ErrOut: opts.IO.ErrOut, Duration: opts.Duration,
		Format: live.Options{JSON: opts.JSON, Ms: opts.Ms}, Min: opts.Min, Pid: opts.Pid, Device: opts.Device,
		Mechanism: mech, Kernel: kernel,
	})
}
