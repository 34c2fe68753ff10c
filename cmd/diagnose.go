package cmd

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/whyslow/whyslow/diagnose"
	"github.com/whyslow/whyslow/report"
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
	Format     string
	Output     string
	RulesDir   string
	Devices    []string
	BTF        string
	FailOn     string
}

// Formats the report can be written in.
var reportFormats = []string{"text", "json"}

// Severities --fail-on accepts.
var failOnValues = []string{"none", "warning", "critical"}

// NewCmdStorage builds `whyslow diagnose storage`; runF replaces the run for tests.
func NewCmdStorage(ios *IO, runF func(*StorageOptions) error) *cobra.Command {
	opts := &StorageOptions{IO: ios}
	c := &cobra.Command{
		Use:   "storage",
		Short: "Find why storage is slow: run every storage probe, then print ranked causes",
		Long: `Runs every storage probe for --duration (Ctrl-C ends the run early and still
reports), puts their events on one timeline, evaluates the rules and prints a
ranked report of causes with their evidence and a remedy. Needs root.`,
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
	f.StringVarP(&opts.Format, "format", "f", "text", "report format: "+strings.Join(reportFormats, ", "))
	f.StringVarP(&opts.Output, "output", "o", "", "write the report to this file instead of standard output")
	f.StringVar(&opts.RulesDir, "rules", "", "directory of extra rule files (*.yaml); a rule with a built-in rule's id replaces it")
	f.StringArrayVar(&opts.Devices, "device", nil, "only analyze this block device (repeatable), e.g. --device sda")
	f.StringVar(&opts.BTF, "btf", diagnose.DefaultBTF, "kernel BTF file")
	f.StringVar(&opts.FailOn, "fail-on", "none", "exit with code 3 when a finding of at least this severity is reported: "+strings.Join(failOnValues, ", "))
	_ = c.RegisterFlagCompletionFunc("format", cobra.FixedCompletions(reportFormats, cobra.ShellCompDirectiveNoFileComp))
	_ = c.RegisterFlagCompletionFunc("fail-on", cobra.FixedCompletions(failOnValues, cobra.ShellCompDirectiveNoFileComp))
	_ = c.RegisterFlagCompletionFunc("device", completeDevices)
	_ = c.MarkFlagDirname("rules")
	return c
}

func (o *StorageOptions) validate() error {
	if o.Duration <= 0 {
		return usagef("--duration must be positive, got %s", o.Duration)
	}
	if o.MinLatency < 0 {
		return usagef("--min-latency must not be negative, got %s", o.MinLatency)
	}
	if !oneOf(o.Format, reportFormats) {
		return usagef("--format %q: want one of %s", o.Format, strings.Join(reportFormats, ", "))
	}
	if !oneOf(o.FailOn, failOnValues) {
		return usagef("--fail-on %q: want one of %s", o.FailOn, strings.Join(failOnValues, ", "))
	}
	return nil
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

// loadRules returns the built-in rules, with the files of dir added or
// replacing built-ins of the same id.
func loadRules(dir string) (*rules.Set, error) {
	set, err := rules.Default()
	if err != nil {
		return nil, fmt.Errorf("built-in rules: %w", err)
	}
	if dir == "" {
		return set, nil
	}
	extra, err := rules.LoadDir(dir)
	if err != nil {
		return nil, err
	}
	return set.Merge(extra), nil
}

func storageRun(ctx context.Context, opts *StorageOptions) error {
	set, err := loadRules(opts.RulesDir)
	if err != nil {
		return err
	}
	dopts := diagnose.Options{
		Duration:   opts.Duration,
		MinLatency: opts.MinLatency,
		Devices:    opts.Devices,
		Rules:      set,
		BTF:        opts.BTF,
	}
	if _, err := diagnose.Check(dopts); err != nil {
		return err
	}
	out, closeOut, err := openOutput(opts.IO, opts.Output)
	if err != nil {
		return err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	started := time.Now()
	if opts.IO.ErrTTY {
		dopts.Progress = progressLine(opts.IO)
	}
	res, err := diagnose.Storage(ctx, dopts)
	if opts.IO.ErrTTY {
		fmt.Fprint(opts.IO.ErrOut, "\r\033[K")
	}
	if err != nil {
		closeOut(false)
		return err
	}
	rep := report.Build(res.Timeline, res.Run, res.Findings, report.Meta{
		Version:    version(),
		Hostname:   res.Timeline.Hostname,
		StartedAt:  started,
		Duration:   opts.Duration,
		MinLatency: opts.MinLatency,
		Devices:    opts.Devices,
	})
	if err := render(out, rep, opts.Format); err != nil {
		closeOut(false)
		return fmt.Errorf("writing report: %w", err)
	}
	if err := closeOut(true); err != nil {
		return err
	}
	return failOn(opts.FailOn, res.Findings)
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

func render(w io.Writer, rep *report.Report, format string) error {
	switch format {
	case "json":
		return report.JSON(w, rep)
	default:
		return report.Text(w, rep, report.TextOptions{})
	}
}

// openOutput opens the report destination before the run starts, so a bad
// path fails at once rather than after the run. The returned close function
// removes a file that got no complete report.
func openOutput(ios *IO, path string) (w io.Writer, closeFn func(ok bool) error, err error) {
	if path == "" || path == "-" {
		return ios.Out, func(bool) error { return nil }, nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("--output: %w", err)
	}
	return f, func(ok bool) error {
		cerr := f.Close()
		if !ok {
			_ = os.Remove(path)
			return nil
		}
		if cerr != nil {
			return fmt.Errorf("--output: %w", cerr)
		}
		return nil
	}, nil
}

// progressLine draws one live status line on the terminal.
func progressLine(ios *IO) func(diagnose.Progress) {
	return func(p diagnose.Progress) {
		var parts []string
		for _, k := range []string{"slow submits", "blocked spans", "execs", "uevents", "sysfs writes"} {
			parts = append(parts, fmt.Sprintf("%s %d", k, p.Events[k]))
		}
		lost := ""
		if p.Lost > 0 {
			lost = fmt.Sprintf("  LOST %d", p.Lost)
		}
		fmt.Fprintf(ios.ErrOut, "\r\033[K%s / %s  %s%s", p.Elapsed.Truncate(time.Second), p.Total, strings.Join(parts, ", "), lost)
	}
}
