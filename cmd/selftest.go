package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/output"
	"github.com/whyslow/whyslow/internal/selftest"
	"github.com/whyslow/whyslow/internal/tracefile"
	"github.com/whyslow/whyslow/probes"
)

// SelftestOptions are the flags of `whyslow selftest`.
type SelftestOptions struct {
	IO        *IO
	Duration  time.Duration
	Period    time.Duration
	Rules     []string
	BTF       string
	Mechanism []string
	// Report is where to write the diagnosis's report, in Format.
	Report, Format string
	guard          bool
}

// NewCmdSelftest builds `whyslow selftest`.
func NewCmdSelftest(ios *IO) *cobra.Command {
	opts := &SelftestOptions{IO: ios}
	c := &cobra.Command{
		Use:   "selftest",
		Short: "Reproduce the udev queue-freeze incident on a loop device and check whyslow finds its cause",
		Long: `For CI on a new kernel or machine: reproduces the incident whyslow was built
for on a loop device of its own (a udev rule that rewrites the queue's scheduler
on "change" uevents, a shell that runs 'udevadm trigger' for the device every
--period, a writer doing synced O_DIRECT writes), diagnoses it for --duration,
prints which probe ran on which mechanism, and exits 0 only if the top finding
is the whole chain: periodic-trigger → uevent-freeze → queue-freeze-stall on
that device. Otherwise it prints what was missing and exits 1.

It leaves nothing behind whatever happens: the loop device is attached over an
unnamed file with autoclear (the kernel detaches it when the selftest's
process is gone), the udev rule is in /run/udev/rules.d, a udevd it had to
start is stopped, and a guard process undoes what is left if the selftest is
killed. SIGINT, SIGTERM or SIGHUP stop it: it cleans up and exits 128 + the
signal. Needs root, udevadm and the loop driver.`,
		Example: `  sudo whyslow selftest
  sudo whyslow selftest --duration 40s   # a slow machine (qemu without KVM)`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if opts.guard {
				return selftest.Guard(os.Stdin, ios.ErrOut)
			}
			return selftestRun(c.Context(), opts)
		},
	}
	f := c.Flags()
	f.DurationVar(&opts.Duration, "duration", selftest.DefaultDuration, "how long the diagnosis observes the incident")
	f.DurationVar(&opts.Period, "period", selftest.DefaultPeriod, "how often the trigger runs (the chain needs 3 runs within --duration)")
	f.StringArrayVar(&opts.Rules, "rules", nil, "rule file, or directory of rule files, to add (repeatable)")
	f.StringVar(&opts.BTF, "btf", probes.DefaultBTF, "kernel BTF file")
	f.StringArrayVar(&opts.Mechanism, "mechanism", nil, "force a mechanism: fentry, kprobe, tp_btf, ... for every probe that offers it, or PROBE=MECHANISM for one (repeatable)")
	f.StringVar(&opts.Report, "report", "", "also write the diagnosis's report to this file (a CI artifact)")
	f.StringVarP(&opts.Format, "format", "f", "text", "format of --report: "+strings.Join(reportFormats, ", "))
	_ = c.RegisterFlagCompletionFunc("format", cobra.FixedCompletions(reportFormats, cobra.ShellCompDirectiveNoFileComp))
	f.BoolVar(&opts.guard, "guard", false, "run as the selftest's guard (internal)")
	_ = f.MarkHidden("guard")
	return c
}

func selftestRun(ctx context.Context, opts *SelftestOptions) error {
	if opts.Duration < time.Second || opts.Duration > time.Hour {
		return usagef("--duration must be between 1s and 1h, got %s", opts.Duration)
	}
	if opts.Period < 500*time.Millisecond || opts.Period > opts.Duration {
		return usagef("--period must be at least 500ms and at most --duration (%s), got %s", opts.Duration, opts.Period)
	}
	if !oneOf(opts.Format, reportFormats) {
		return usagef("--format %q: want one of %s", opts.Format, strings.Join(reportFormats, ", "))
	}
	mech, err := probes.ParseMechanism(opts.Mechanism)
	if err != nil {
		return usagef("%s", err)
	}
	if err := mech.Check(probes.All()); err != nil {
		return usageError{err}
	}
	outs := &output.Set{}
	rep := outs.Add("--report", opts.Report)
	for _, r := range opts.Rules {
		outs.Input("--rules", r)
	}
	if err := outs.Check(); err != nil {
		var ce *output.ConflictError
		if errors.As(err, &ce) {
			return usageError{err}
		}
		return err
	}
	set, err := loadRules(opts.Rules)
	if err != nil {
		return err
	}
	if 3*opts.Period > opts.Duration {
		fmt.Fprintf(opts.IO.ErrOut, "whyslow selftest: warning: the trigger runs fewer than 3 times in --duration %s (every %s): a periodic trigger cannot be found\n", opts.Duration, opts.Period)
	}
	kernel, err := probes.Prepare(opts.BTF)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding whyslow's own binary for the selftest's guard: %w", err)
	}

	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, stopSignals...)
	defer signal.Stop(sigs)
	var got os.Signal
	stopped := make(chan struct{})
	defer close(stopped)
	caught := make(chan os.Signal, 1)
	go func() {
		first := true
		for {
			select {
			case <-stopped:
				return
			case sig := <-sigs:
				if first {
					first = false
					caught <- sig
					fmt.Fprintf(opts.IO.ErrOut, "whyslow selftest: %s: stopping and cleaning up\n", sigName(sig))
					cancel()
				} else {
					fmt.Fprintf(opts.IO.ErrOut, "whyslow selftest: %s: still cleaning up (SIGKILL leaves it to the guard)\n", sigName(sig))
				}
			}
		}
	}()

	started := time.Now()
	res, err := selftest.Run(ctx, selftest.Options{Duration: opts.Duration, Period: opts.Period, Rules: set, BTF: opts.BTF,
		Kernel: kernel, Mechanism: mech, Guard: []string{self, "selftest", "--guard"}, Log: opts.IO.ErrOut})
	select {
	case got = <-caught:
	default:
	}
	if got != nil {
		msg := fmt.Sprintf("whyslow selftest: stopped by %s", sigName(got))
		if err != nil && !errors.Is(err, context.Canceled) {
			msg += ": " + err.Error()
		}
		return exitError{code: 128 + int(got.(syscall.Signal)), msg: msg}
	}
	if err != nil {
		return fmt.Errorf("selftest: %w", err)
	}
	printSelftest(opts.IO, res)
	if rep != nil {
		info := tracefile.Info{Version: version(), StartedAt: started, Duration: opts.Duration, Devices: []string{res.Device}}
		r := buildReport(res.Diagnosis, info)
		if err := rep.WriteFile(func(w io.Writer) error { return render(w, r, res.Diagnosis, opts.Format) }); err != nil {
			return err
		}
	}
	if !res.Found {
		return exitError{code: ExitError, msg: "whyslow selftest: FAIL: " + res.Missing}
	}
	return nil
}

// printSelftest prints the probes and their mechanisms, the chain and the
// verdict.
func printSelftest(ios *IO, r *selftest.Result) {
	fmt.Fprintf(ios.Out, "whyslow selftest: kernel %s, /dev/%s\n\n", r.Kernel, r.Device)
	tw := tabwriter.NewWriter(ios.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "probe\tmechanism\tstatus")
	for _, p := range r.Probes {
		status := string(p.Status)
		if p.Status != event.StatusOK && p.Reason != "" {
			status += ": " + p.Reason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Name, orDash(string(p.Mechanism)), status)
	}
	tw.Flush()
	fmt.Fprintln(ios.Out)
	if len(r.Steps) > 0 {
		fmt.Fprintf(ios.Out, "top finding's chain:\n  %s\n\n", strings.Join(r.Steps, "\n  → "))
	}
	if r.Found {
		fmt.Fprintf(ios.Out, "PASS: the chain %s was found on /dev/%s\n", strings.Join(selftest.Chain, " → "), r.Device)
	} else {
		fmt.Fprintf(ios.Out, "FAIL: %s\n", r.Missing)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
