package cmd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/whyslow/whyslow/diagnose"
	"github.com/whyslow/whyslow/internal/escape"
	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/stackexport"
	"github.com/whyslow/whyslow/internal/tracefile"
	"github.com/whyslow/whyslow/rules"
)

// AnalyzeOptions are the flags of `whyslow analyze`.
type AnalyzeOptions struct {
	IO      *IO
	Trace   string
	Rules   []string // --rules files and directories
	Devices []string
	Outputs Outputs
}

// Outputs are the files a diagnosis writes, shared by `diagnose storage`
// and `analyze`.
type Outputs struct {
	Format    string // report format, one of report.Formats
	Output    string // report file; "" or "-" is standard output
	FailOn    string
	StacksOut string // pprof profile of the blocked stacks
	Folded    string // folded blocked stacks
	Record    string // trace of the run (diagnose only)
}

// addOutputFlags declares the flags of Outputs shared by both commands.
func addOutputFlags(c *cobra.Command, o *Outputs) {
	f := c.Flags()
	f.StringVarP(&o.Format, "format", "f", "text", "report format: "+strings.Join(reportFormats, ", "))
	f.StringVarP(&o.Output, "output", "o", "", "write the report to this file instead of standard output")
	f.StringVar(&o.FailOn, "fail-on", "none", "exit with code 3 when a finding of at least this severity is reported: "+strings.Join(failOnValues, ", "))
	f.StringVar(&o.StacksOut, "stacks-out", "", "write the blocked (off-CPU) stacks to this file as a pprof profile (go tool pprof)")
	f.StringVar(&o.Folded, "folded", "", "write the blocked stacks to this file as folded stacks, for flame graphs")
	_ = c.RegisterFlagCompletionFunc("format", cobra.FixedCompletions(reportFormats, cobra.ShellCompDirectiveNoFileComp))
	_ = c.RegisterFlagCompletionFunc("fail-on", cobra.FixedCompletions(failOnValues, cobra.ShellCompDirectiveNoFileComp))
}

func (o *Outputs) validate() error {
	if !oneOf(o.Format, reportFormats) {
		return usagef("--format %q: want one of %s", o.Format, strings.Join(reportFormats, ", "))
	}
	if !oneOf(o.FailOn, failOnValues) {
		return usagef("--fail-on %q: want one of %s", o.FailOn, strings.Join(failOnValues, ", "))
	}
	seen := map[string]string{}
	for _, p := range [][2]string{{"--output", o.Output}, {"--record", o.Record}, {"--stacks-out", o.StacksOut}, {"--folded", o.Folded}} {
		if p[1] == "" || p[1] == "-" && p[0] == "--output" {
			continue
		}
		if other, ok := seen[p[1]]; ok {
			return usagef("%s and %s name the same file %s", other, p[0], p[1])
		}
		seen[p[1]] = p[0]
	}
	return nil
}

// NewCmdAnalyze builds `whyslow analyze`; runF replaces the run for tests.
func NewCmdAnalyze(ios *IO, runF func(*AnalyzeOptions) error) *cobra.Command {
	opts := &AnalyzeOptions{IO: ios}
	c := &cobra.Command{
		Use:   "analyze TRACE",
		Short: "Report on a trace recorded with diagnose storage --record",
		Long: `Reads a trace that 'whyslow diagnose storage --record FILE' wrote and runs the
analysis again: the same facts, rules and report as the live run gave (with
the same rules; --rules adds or replaces rules). Needs no root and no BPF, so
a trace from a production host can be analyzed anywhere. --device defaults to
the devices the run was restricted to.`,
		Example: `  sudo whyslow diagnose storage --duration 30s --record run.trace.gz
  whyslow analyze run.trace.gz --format html --output report.html
  whyslow analyze run.trace.gz --format json --fail-on critical`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			opts.Trace = args[0]
			if err := opts.Outputs.validate(); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			return analyzeRun(opts)
		},
	}
	addOutputFlags(c, &opts.Outputs)
	f := c.Flags()
	f.StringArrayVar(&opts.Rules, "rules", nil, "rule file, or directory of rule files (*.yaml, *.yml), to add (repeatable); a rule with a built-in rule's id replaces it")
	f.StringArrayVar(&opts.Devices, "device", nil, "only analyze this block device (repeatable); default: the devices the run was restricted to")
	return c
}

func analyzeRun(opts *AnalyzeOptions) error {
	set, err := loadRules(opts.Rules)
	if err != nil {
		return err
	}
	tl, info, err := tracefile.ReadFile(opts.Trace)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return fmt.Errorf("reading trace: %w", err)
		}
		return fmt.Errorf("reading trace %w", err)
	}
	if ign := info.Ignored(); ign != "" {
		fmt.Fprintf(opts.IO.ErrOut, "whyslow: warning: %s was written by a newer whyslow (%s); skipped what this version does not know: %s\n", opts.Trace, info.Version, ign)
	}
	if len(opts.Devices) > 0 {
		info.Devices = opts.Devices
	}
	res, err := diagnose.Analyze(tl, set, info.Devices)
	if err != nil {
		return err
	}
	if err := checkTraceDevices(opts.Trace, opts.Devices, res.Devices); err != nil {
		return err
	}
	outs, err := openOutputs(opts.IO, opts.Outputs)
	if err != nil {
		return err
	}
	return outs.finish(res, info)
}

// checkTraceDevices reports --device names the trace has no device of,
// with the names it has, as diagnose reports names that are no block
// device of the host.
func checkTraceDevices(trace string, asked, has []string) error {
	var unknown []string
	for _, d := range asked {
		if q := `"` + escape.String(d) + `"`; !slices.Contains(has, d) && !slices.Contains(unknown, q) {
			unknown = append(unknown, q)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	which := "no block device"
	if len(has) > 0 {
		names := make([]string, len(has))
		for i, d := range has {
			names[i] = escape.String(d) // names from the trace: host strings
		}
		which = "only " + strings.Join(names, ", ")
	}
	return fmt.Errorf("--device %s: no such device in the trace %s, which has %s", strings.Join(unknown, ", "), trace, which)
}

// outputs are the opened destinations of a diagnosis. They are opened
// before the run, so that a bad path fails at once, and removed when the
// run fails, so that no half-written file is left.
type outputs struct {
	ios                    *IO
	opts                   Outputs
	report                 io.Writer
	closeR                 func(ok bool) error
	files                  []*outFile
	record, stacks, folded *outFile
}

type outFile struct {
	flag, path string
	f          *os.File
}

func openOutputs(ios *IO, o Outputs) (*outputs, error) {
	out := &outputs{ios: ios, opts: o}
	for _, p := range []struct {
		flag, path string
		dst        **outFile
	}{{"--record", o.Record, &out.record}, {"--stacks-out", o.StacksOut, &out.stacks}, {"--folded", o.Folded, &out.folded}} {
		if p.path == "" {
			continue
		}
		f, err := os.OpenFile(p.path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			out.abort()
			return nil, fmt.Errorf("%s: %w", p.flag, err)
		}
		*p.dst = &outFile{flag: p.flag, path: p.path, f: f}
		out.files = append(out.files, *p.dst)
	}
	w, closeR, err := openOutput(ios, o.Output)
	if err != nil {
		out.abort()
		return nil, err
	}
	out.report, out.closeR = w, closeR
	return out, nil
}

// abort closes and removes every file.
func (o *outputs) abort() {
	for _, f := range o.files {
		f.f.Close()
		_ = os.Remove(f.path)
	}
	if o.closeR != nil {
		_ = o.closeR(false)
	}
}

// finish writes the trace, the report and the stack files of a diagnosis,
// then applies --fail-on. info describes the run as the report shows it.
func (o *outputs) finish(res *diagnose.Result, info tracefile.Info) error {
	write := func(f *outFile, fn func(io.Writer) error) error {
		if f == nil {
			return nil
		}
		if err := fn(f.f); err != nil {
			return fmt.Errorf("%s %s: %w", f.flag, f.path, err)
		}
		return nil
	}
	err := write(o.record, func(w io.Writer) error { return tracefile.Write(w, res.Timeline, info) })
	var rep *report.Report
	if err == nil {
		rep = buildReport(res, info)
		if rerr := render(o.report, rep, res, o.opts.Format); rerr != nil {
			err = fmt.Errorf("writing report: %w", rerr)
		}
	}
	if err == nil {
		err = write(o.stacks, func(w io.Writer) error { return stackexport.Pprof(w, res.Timeline, info.StartedAt) })
	}
	if err == nil {
		err = write(o.folded, func(w io.Writer) error { return stackexport.Folded(w, res.Timeline) })
	}
	if err != nil {
		o.abort()
		return err
	}
	for _, f := range o.files {
		if cerr := f.f.Close(); cerr != nil {
			o.abort()
			return fmt.Errorf("%s %s: %w", f.flag, f.path, cerr)
		}
	}
	if err := o.closeR(true); err != nil {
		return err
	}
	if len(res.RuleErrors) > 0 {
		return exitError{code: ExitError, msg: "whyslow: " + ruleFailures(res.RuleErrors)}
	}
	return failOn(o.opts.FailOn, res.Findings)
}

// ruleFailures says in one line which rules failed while evaluated, where
// and why, once the report (and trace) holding the others' findings are
// written.
func ruleFailures(errs rules.RuleErrors) string {
	parts := make([]string, len(errs))
	for i, e := range errs {
		parts[i] = fmt.Sprintf("%s at %s:%d:%d: %s", e.Rule, e.File, e.Line, e.Column, e.What())
	}
	what := "rule failed: " + parts[0]
	if len(parts) > 1 {
		what = fmt.Sprintf("%d rules failed: %s", len(parts), strings.Join(parts, "; "))
	}
	return what + "; the report has the findings of the other rules"
}

// buildReport makes the report of a diagnosis: the live run and the
// analysis of its trace pass the same info and so get the same report.
func buildReport(res *diagnose.Result, info tracefile.Info) *report.Report {
	meta := report.Meta{
		Version:      info.Version,
		StartedAt:    info.StartedAt,
		Duration:     info.Duration,
		Devices:      info.Devices,
		RuleErrors:   res.RuleErrors,
		NotEvaluated: res.NotEvaluated,
	}
	if res.Timeline != nil {
		meta.Hostname = res.Timeline.Hostname
		meta.MinLatency = res.Timeline.MinLatency
	}
	return report.Build(res.Timeline, res.Run, res.Findings, meta)
}

// render writes the report in one of report.Formats.
func render(w io.Writer, rep *report.Report, res *diagnose.Result, format string) error {
	return report.Write(w, rep, res.Run, format)
}

// runInfo is what the live run records about itself.
func runInfo(started time.Time, duration time.Duration, devices []string) tracefile.Info {
	return tracefile.Info{Version: version(), StartedAt: started, Duration: duration, Devices: devices}
}
