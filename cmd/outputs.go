package cmd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/whyslow/whyslow/diagnose"
	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/output"
	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/stackexport"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/internal/tracefile"
)

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

// validate checks the values of the flags; the files they name are checked
// by openOutputs, before any work.
func (o *Outputs) validate() error {
	if !oneOf(o.Format, reportFormats) {
		return usagef("--format %q: want one of %s", o.Format, strings.Join(reportFormats, ", "))
	}
	if !oneOf(o.FailOn, failOnValues) {
		return usagef("--fail-on %q: want one of %s", o.FailOn, strings.Join(failOnValues, ", "))
	}
	return nil
}

// outputs are the files a diagnosis writes, checked before any work
// (internal/output): each is written to a temporary file and renamed into
// place when complete, or written in place when it is not a regular file.
// A failure leaves what was at each path untouched, and the outputs
// already completed stay.
type outputs struct {
	ios   *IO
	opts  Outputs
	set   *output.Set
	ready *output.File
	// report is nil when the report goes to standard output.
	report, record, stacks, folded *output.File
	// recordErr is why the --record trace, written as the run went, is
	// not complete.
	recordErr error
}

// input is a file a command reads, which no output may be.
type input struct{ what, path string }

// openOutputs declares and checks the outputs of a command: two that are
// the same file, or one that is an input, are a usage error. readyFile is
// --ready-file (diagnose only).
func openOutputs(ios *IO, o Outputs, readyFile string, inputs ...input) (*outputs, error) {
	out := &outputs{ios: ios, opts: o, set: &output.Set{}}
	s := out.set
	if o.Output != "-" {
		out.report = s.Add("--output", o.Output)
	}
	if out.report == nil {
		if f, ok := ios.Out.(*os.File); ok {
			s.AddStream("standard output (the report)", f)
		}
	}
	out.record = s.Add("--record", o.Record)
	out.stacks = s.Add("--stacks-out", o.StacksOut)
	out.folded = s.Add("--folded", o.Folded)
	if out.ready = s.Add("--ready-file", readyFile); out.ready != nil {
		out.ready.NoWait = true
	}
	for _, in := range inputs {
		s.Input(in.what, in.path)
	}
	if err := s.Check(); err != nil {
		var ce *output.ConflictError
		if errors.As(err, &ce) {
			return nil, usageError{err}
		}
		return nil, err
	}
	return out, nil
}

// abort gives up every output in progress at once (a second signal): their
// temporary files are removed; completed outputs stay.
func (o *outputs) abort() { o.set.Abort() }

// finish writes the report and the stack files of a diagnosis (its trace is
// written as it runs: streamRecord), then applies --fail-on. info describes the run as the report shows it.
// Each output is complete or not written at all: one that fails is named
// in the error (one line, with the others that failed) and the others are
// written still, since each stands on its own (a report on a terminal that
// hung up does not cost the trace).
func (o *outputs) finish(res *diagnose.Result, info tracefile.Info) error {
	var errs []string
	if o.recordErr != nil {
		errs = append(errs, o.recordErr.Error())
	}
	write := func(f *output.File, fn func(io.Writer) error) {
		if f == nil {
			return
		}
		if err := f.WriteFile(fn); err != nil {
			errs = append(errs, err.Error())
		}
	}
	rep := buildReport(res, info)
	writeReport := func(w io.Writer) error { return render(w, rep, res, o.opts.Format) }
	if o.report != nil {
		write(o.report, writeReport)
	} else if err := writeReport(o.ios.Out); err != nil {
		errs = append(errs, fmt.Sprintf("writing the report: %v", err))
	}
	write(o.stacks, func(w io.Writer) error { return stackexport.Pprof(w, res.Timeline, info.StartedAt) })
	write(o.folded, func(w io.Writer) error { return stackexport.Folded(w, res.Timeline) })
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	if len(res.RuleErrors) > 0 {
		return exitError{code: ExitError, msg: "whyslow: " + ruleFailures(res.RuleErrors)}
	}
	return failOn(o.opts.FailOn, res.Findings)
}

// streamRecord starts the --record trace of a live run, if asked: it is
// written as the run goes (tracefile.Recorder, flushed and synced every
// second), to a temporary file that takes its place at the path once the
// first checkpoint is written, so that a run killed after that leaves a
// trace of what it observed. done completes it once the run is over; a
// trace that failed is the error finish reports.
func (o *outputs) streamRecord(info tracefile.Info) (rec diagnose.Recorder, done func(), err error) {
	if o.record == nil {
		return nil, func() {}, nil
	}
	w, err := o.record.Create()
	if err != nil {
		return nil, nil, err
	}
	r := &streamedTrace{Recorder: tracefile.NewRecorder(w, info), w: w}
	r.Recorder.Sync = w.Sync
	return r, func() {
		err := r.Recorder.Err()
		switch {
		case r.published:
			if cerr := w.Commit(); err == nil {
				err = cerr
			}
		default:
			w.Abort() // nothing of the run: what was at the path stays
		}
		if err != nil {
			o.recordErr = fmt.Errorf("%s %s: %w", o.record.Flag, o.record.Path, err)
			if r.published {
				o.recordErr = fmt.Errorf("%w (the trace holds the run up to its last checkpoint)", o.recordErr)
			}
		}
	}, nil
}

// streamedTrace is a trace written as the run goes, put in place at its
// first checkpoint.
type streamedTrace struct {
	*tracefile.Recorder
	w         *output.Writer
	published bool
}

func (s *streamedTrace) Checkpoint(state *timeline.Timeline, at event.Mono) error {
	if err := s.Recorder.Checkpoint(state, at); err != nil {
		return err
	}
	if !s.published {
		s.published = true
		return s.w.Publish()
	}
	return nil
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
		Incomplete:   info.Incomplete,
		Cut:          info.Cut,
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
