package cmd

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/whyslow/whyslow/diagnose"
	"github.com/whyslow/whyslow/internal/escape"
	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/flight"
	"github.com/whyslow/whyslow/internal/serve"
	"github.com/whyslow/whyslow/internal/stage"
	"github.com/whyslow/whyslow/internal/trouble"
	"github.com/whyslow/whyslow/probes"
	"github.com/whyslow/whyslow/rules"
)

// ServeOptions are the flags of `whyslow serve`.
type ServeOptions struct {
	IO         *IO
	Listen     string
	Window     time.Duration
	MinLatency time.Duration
	Rules      []string
	Stages     []string
	Devices    []string
	BTF        string
	Mechanism  []string
	// FlightRecorder is how much recent run /trace can dump;
	// FlightMemory the memory bound of the recorder ("64MiB").
	FlightRecorder time.Duration
	FlightMemory   string
	// ArmedMode is --armed-mode (experimental), as for diagnose.
	ArmedMode string
	// Cgroup is --cgroup, as for diagnose (armed mode auto only).
	Cgroup string
}

// defaultFlightMemory is --flight-recorder-memory's default.
const defaultFlightMemory = "64MiB"

// NewCmdServe builds `whyslow serve`; runF replaces the run for tests.
func NewCmdServe(ios *IO, runF func(*ServeOptions) error) *cobra.Command {
	opts := &ServeOptions{IO: ios}
	c := &cobra.Command{
		Use:   "serve",
		Short: "Run always: evaluate the rules every window, serve Prometheus metrics, reports and traces",
		Long: `Runs every storage probe continuously and evaluates the rules on every window
(--window) of what they observed. Serves, on --listen (loopback unless told
otherwise):

  /metrics                 Prometheus metrics: the findings of the last window
                           (whyslow_finding), latency histograms per device, queue
                           freezes, blocked time by stage, lost events, probes
  /report?format=FORMAT    the last window's report (text, json, markdown, html)
  /trace?seconds=N         the last N seconds (at most --flight-recorder) as a
                           trace for 'whyslow analyze'
  /healthz                 200 while the probes run and the windows go on

SIGHUP reloads --rules and --stages (a file that fails to load keeps the rules
or the stage table in use, and says why on stderr and in
whyslow_rules_last_reload_success). SIGINT or
SIGTERM stop it: the probes are detached and it exits 0. Needs root.`,
		Example: `  sudo whyslow serve
  sudo whyslow serve --listen 0.0.0.0:9717 --window 30s --rules /etc/whyslow/rules.d
  curl -s localhost:9717/report?format=markdown
  curl -s -o last5m.trace.gz 'localhost:9717/trace?seconds=300' && whyslow analyze last5m.trace.gz`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := opts.validate(); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			return serveRun(c.Context(), opts)
		},
	}
	f := c.Flags()
	f.StringVar(&opts.Listen, "listen", serve.DefaultListen, "address to serve on, host:port (0.0.0.0:9717 or [::]:9717 for every interface)")
	f.DurationVar(&opts.Window, "window", serve.DefaultWindow, "evaluate the rules on every window this long")
	f.DurationVar(&opts.MinLatency, "min-latency", time.Millisecond, "outlier threshold: slower submissions and longer blocked spans are recorded one by one")
	f.StringArrayVar(&opts.Rules, "rules", nil, "rule file, or directory of rule files (*.yaml, *.yml), to add (repeatable); reloaded on SIGHUP")
	addStagesFlag(c, &opts.Stages)
	f.StringArrayVar(&opts.Devices, "device", nil, "only analyze this block device (repeatable)")
	f.StringVar(&opts.BTF, "btf", probes.DefaultBTF, "kernel BTF file")
	f.StringArrayVar(&opts.Mechanism, "mechanism", nil, "force a mechanism: fentry, kprobe, tp_btf, ... for every probe that offers it, or PROBE=MECHANISM for one (repeatable)")
	f.DurationVar(&opts.FlightRecorder, "flight-recorder", flight.DefaultKeep, "how much of the recent run the flight recorder holds for /trace")
	f.StringVar(&opts.FlightMemory, "flight-recorder-memory", defaultFlightMemory, "memory bound of the flight recorder's events (KiB, MiB, GiB); past it the oldest are evicted, and counted as lost")
	f.StringVar(&opts.ArmedMode, "armed-mode", "", armedModeHelp)
	f.StringVar(&opts.Cgroup, "cgroup", "", cgroupHelp+" (with --armed-mode=auto: serve watches for trouble only then)")
	_ = c.RegisterFlagCompletionFunc("device", completeDevices)
	return c
}

func (o *ServeOptions) validate() error {
	if err := checkArmedMode(o.ArmedMode); err != nil {
		return err
	}
	if o.Cgroup != "" && o.ArmedMode != trouble.ModeAuto {
		return usagef("--cgroup %q: it scopes the PSI signals of armed mode auto; use it with --armed-mode=auto", o.Cgroup)
	}
	if _, _, err := net.SplitHostPort(o.Listen); err != nil {
		return usagef("--listen %q: want host:port, e.g. 127.0.0.1:9717 (%v)", o.Listen, err)
	}
	m, err := probes.ParseMechanism(o.Mechanism)
	if err != nil {
		return usagef("%s", err)
	}
	so, err := o.serveOptions(m, nil)
	if err != nil {
		return err
	}
	if err := so.Validate(); err != nil {
		return usageError{err}
	}
	return nil
}

func (o *ServeOptions) serveOptions(m probes.MechanismChoice, set *rules.Set) (serve.Options, error) {
	mem, err := parseSize(o.FlightMemory)
	if err != nil {
		return serve.Options{}, usagef("--flight-recorder-memory %q: %v", o.FlightMemory, err)
	}
	return serve.Options{Window: o.Window, MinLatency: o.MinLatency, Devices: o.Devices, Rules: set, BTF: o.BTF,
		Mechanism: m, FlightRecorder: o.FlightRecorder, FlightMemory: mem, Version: version(), Log: o.IO.ErrOut, ArmedMode: o.ArmedMode}, nil
}

// parseSize reads a size in bytes: a number with KiB, MiB or GiB (or K, M,
// G, taken as the same), or bytes alone.
func parseSize(s string) (int64, error) {
	num, unit := s, int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, unit = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || n <= 0 || n > (1<<40)/unit {
		return 0, fmt.Errorf("want a size such as 64MiB or 1GiB")
	}
	return n * unit, nil
}

func serveRun(ctx context.Context, opts *ServeOptions) error {
	mech, err := probes.ParseMechanism(opts.Mechanism)
	if err != nil {
		return usagef("%s", err)
	}
	if opts.BTF == probes.DefaultBTF {
		go probes.KernelBTF()
	}
	load := func() (*rules.Set, error) { return loadRules(opts.Rules) }
	set, err := load()
	if err != nil {
		return err
	}
	so, err := opts.serveOptions(mech, set)
	if err != nil {
		return err
	}
	so.LoadRules = load
	if so.Stages, err = loadStages(opts.Stages); err != nil {
		return err
	}
	so.LoadStages = func() (*stage.Table, error) { return loadStages(opts.Stages) }
	for _, d := range opts.Devices {
		if err := diagnose.CheckDevice("/sys", d); err != nil {
			return err
		}
	}
	if opts.Cgroup != "" {
		if so.Cgroup, err = trouble.CgroupDir("/proc", opts.Cgroup); err != nil {
			return usageError{err}
		}
	}
	if so.Kernel, err = probes.Prepare(opts.BTF); err != nil {
		return err
	}
	// The events held are bounded (the flight recorder's memory bound);
	// a window's analysis copies at most as many: without a limit the Go
	// heap could still grow to twice what is live.
	if os.Getenv("GOMEMLIMIT") == "" {
		defer debug.SetMemoryLimit(debug.SetMemoryLimit(3*so.FlightMemory + 128<<20))
	}
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", opts.Listen, err)
	}
	defer ln.Close()

	ctx, reload, stop := serveSignals(ctx, opts.IO)
	defer stop()
	so.Reload = reload
	so.Ready = func(addr net.Addr, statuses []event.ProbeStatus) {
		var ps []string
		for _, p := range statuses {
			if p.Status == event.StatusOK {
				ps = append(ps, fmt.Sprintf("%s %s", p.Name, p.Mechanism))
			} else {
				ps = append(ps, fmt.Sprintf("%s unavailable (%s)", p.Name, p.Reason))
			}
		}
		mode := ""
		if opts.ArmedMode != "" {
			mode = fmt.Sprintf("; armed mode %s (experimental): the programs on sys_enter/sys_exit/sched_switch/sched_waking start detached", opts.ArmedMode)
		}
		fmt.Fprintf(opts.IO.ErrOut, "whyslow: serving on http://%s (/metrics, /report, /trace, /healthz); window %s; flight recorder %s within %s; probes: %s%s\n",
			addr, so.Window, so.FlightRecorder, opts.FlightMemory, escape.String(strings.Join(ps, ", ")), mode)
	}
	if err := serve.Run(ctx, ln, so); err != nil {
		return err
	}
	fmt.Fprintln(opts.IO.ErrOut, "whyslow: stopped; probes detached")
	return nil
}

// serveSignals handles the signals of serve: SIGINT or SIGTERM end it
// (the context is cancelled; a second one exits at once, 128 + the
// signal), SIGHUP asks for the rules to be reloaded. A signal ignored at
// the start (nohup) stays ignored.
func serveSignals(ctx context.Context, ios *IO) (context.Context, <-chan struct{}, func()) {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithCancel(ctx)
	ch := make(chan os.Signal, 4)
	for _, sig := range stopSignals {
		if !signal.Ignored(sig) {
			signal.Notify(ch, sig)
		}
	}
	reload := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		stopping := false
		for {
			select {
			case <-done:
				return
			case sig := <-ch:
				switch {
				case sig == syscall.SIGHUP:
					select {
					case reload <- struct{}{}:
					default: // one is pending
					}
				case !stopping:
					stopping = true
					fmt.Fprintf(ios.ErrOut, "whyslow: %s: stopping (detaching the probes); again to exit at once\n", sigName(sig))
					cancel()
				default:
					fmt.Fprintf(ios.ErrOut, "whyslow: %s: exiting at once\n", sigName(sig))
					exit(128 + int(sig.(syscall.Signal)))
					return
				}
			}
		}
	}()
	return ctx, reload, func() {
		signal.Stop(ch)
		close(done)
		cancel()
	}
}
