package cmd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/whyslow/whyslow/diagnose"
	"github.com/whyslow/whyslow/internal/escape"
	"github.com/whyslow/whyslow/internal/tracefile"
	"github.com/whyslow/whyslow/rules"
)

// AnalyzeOptions are the flags of `whyslow analyze`.
type AnalyzeOptions struct {
	IO      *IO
	Trace   string
	Rules   []string // --rules files and directories
	Stages  []string // --stages files and directories
	Devices []string
	Outputs Outputs
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
	addStagesFlag(c, &opts.Stages)
	f.StringArrayVar(&opts.Devices, "device", nil, "only analyze this block device (repeatable); default: the devices the run was restricted to")
	return c
}

func analyzeRun(opts *AnalyzeOptions) error {
	inputs := []input{{"the trace", opts.Trace}}
	for _, r := range opts.Rules {
		inputs = append(inputs, input{"--rules", r})
	}
	outs, err := openOutputs(opts.IO, opts.Outputs, "", inputs...)
	if err != nil {
		return err
	}
	// A signal aborts at once (SIGHUP excepted: the analysis goes on to
	// write its outputs).
	_, interrupts := handleInterrupts(context.Background(), opts.IO, false, outs.abort)
	defer interrupts.stop()
	set, err := loadRules(opts.Rules)
	if err != nil {
		return err
	}
	stages, err := loadStages(opts.Stages)
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
	if info.Incomplete {
		fmt.Fprintf(opts.IO.ErrOut, "whyslow: warning: %s is incomplete (%s): the report covers only the first %s of the run\n", opts.Trace, info.Cut, tl.Duration().Round(time.Millisecond))
	}
	if ign := info.Ignored(); ign != "" {
		fmt.Fprintf(opts.IO.ErrOut, "whyslow: warning: %s was written by a newer whyslow (%s); skipped what this version does not know: %s\n", opts.Trace, info.Version, ign)
	}
	if len(opts.Devices) > 0 {
		info.Devices = opts.Devices
	}
	res, err := diagnose.AnalyzeWith(tl, set, info.Devices, stages)
	if err != nil {
		return err
	}
	if err := checkTraceDevices(opts.Trace, opts.Devices, res.Devices); err != nil {
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

// runInfo is what the live run records about itself.
func runInfo(started time.Time, duration time.Duration, devices []string) tracefile.Info {
	return tracefile.Info{Version: version(), StartedAt: started, Duration: duration, Devices: devices}
}
