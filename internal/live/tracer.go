package live

// The tracer behind `whyslow trace KIND`: it starts the probes a kind of
// trace rests on (probes.Start), turns their events into records and
// writes them, one at a time, until the trace ends.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/probes"
)

// TraceOptions configure a trace.
type TraceOptions struct {
	Kind Kind
	// Out gets the records; ErrOut the start line, warnings and losses.
	Out, ErrOut io.Writer
	// Duration is how long to trace; 0 means until ctx ends.
	Duration time.Duration
	// Format options of the records.
	Format Options
	// Min is the threshold of submit and freeze traces.
	Min time.Duration
	// Pid and Device filter submit and freeze traces: 0 and "" show all.
	Pid    int
	Device string
	// Mechanism forces probes onto a mechanism (--mechanism).
	Mechanism probes.MechanismChoice
	// Kernel is the kernel BTF probes.Prepare returned; NeedsBPF says
	// when it is needed.
	Kernel *btf.Spec
}

// plan is what a kind of trace starts.
type plan struct {
	// probe is the probe the trace rests on: without it there is no trace.
	probe string
	// inferredAlso are started, as helpers, when probe runs on an inferred
	// rung, beside the probe that infers its events.
	inferredAlso []string
	// helpers are started beside it (before inferredAlso); the trace
	// goes on without them.
	helpers []string
	bpf     bool
}

var plans = map[Kind]plan{
	KindSubmit: {probe: event.ProbeSubmitFn, bpf: true},
	KindExec:   {probe: event.ProbeExec, bpf: true},
	KindUevent: {probe: event.ProbeUevent},
	KindFreeze: {probe: event.ProbeFreeze, inferredAlso: []string{event.ProbeSubmit}, helpers: []string{event.ProbeSysfs}, bpf: true},
}

// NeedsBPF says whether a kind of trace loads BPF programs (and so needs
// probes.Prepare).
func NeedsBPF(k Kind) bool { return plans[k].bpf }

// Probes returns every probe a kind of trace may start, for --mechanism.
func Probes(k Kind) []probes.Probe {
	p := plans[k]
	names := []string{p.probe}
	if ps, ok := probes.Named(p.probe); ok {
		for _, r := range ps[0].Decl().Mechanisms {
			if r.InferredBy != "" && !slices.Contains(names, r.InferredBy) {
				names = append(names, r.InferredBy)
			}
		}
	}
	names = append(append(names, p.inferredAlso...), p.helpers...)
	ps, _ := probes.Named(names...)
	return ps
}

// Trace runs a trace until its duration passes, ctx ends or the output is
// gone, then stops its probes and says on ErrOut what they lost.
func Trace(ctx context.Context, o TraceOptions) error {
	t, err := newTracer(o)
	if err != nil {
		return err
	}
	line, err := t.startProbes()
	if err != nil {
		return err
	}
	until := "until Ctrl-C"
	if o.Duration > 0 {
		until = fmt.Sprintf("for %s (Ctrl-C ends early)", o.Duration)
	}
	fmt.Fprintf(o.ErrOut, "whyslow: %s; %s\n", line, until)
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
	opts  TraceOptions
	cfg   probes.Config
	start event.Mono

	mu      sync.Mutex
	w       *bufio.Writer
	open    bool              // the header is written: records go out at once
	pending []Record          // records that came before the header
	werr    error             // the first write error; nothing is written after it
	failed  chan struct{}     // closed on the first write error
	losses  timeline.Timeline // only its Losses: counted as a run counts them

	freezes *Freezes // freeze traces only
	group   *probes.Group
}

func newTracer(o TraceOptions) (*tracer, error) {
	start, err := event.Now()
	if err != nil {
		return nil, err
	}
	t := &tracer{opts: o, start: start, w: bufio.NewWriter(o.Out), failed: make(chan struct{}),
		cfg: probes.Config{MinLatency: o.Min, KernelTypes: o.Kernel, ProcFS: "/proc", SysFS: "/sys",
			Mechanism: o.Mechanism, FailedExecs: o.Kind == KindExec}}
	if o.Kind == KindFreeze {
		t.freezes = NewFreezes(t.start, nil, o.Min)
	}
	return t, nil
}

var _ probes.Sink = (*tracer)(nil)

// Event implements probes.Sink.
func (t *tracer) Event(e event.Event) {
	switch t.opts.Kind {
	case KindSubmit:
		var r Submit
		switch v := e.(type) {
		case event.SlowSubmit:
			r = SubmitFromSlow(v, t.start)
		case event.SubmitCall:
			r = SubmitFromCall(v, t.start)
		default:
			return
		}
		if t.keep(r.Pid, r.Tid, r.Disk) {
			t.emit(r)
		}
	case KindExec:
		if v, ok := e.(event.Exec); ok {
			t.emit(ExecFrom(v, t.start))
		}
	case KindUevent:
		if v, ok := e.(event.Uevent); ok {
			t.emit(UeventFrom(v, t.start))
		}
	case KindFreeze:
		t.freezes.Add(e)
	}
}

// Loss implements probes.Sink.
func (t *tracer) Loss(l event.Loss) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.losses.AddLoss(l)
}

// Histogram implements probes.Sink: a trace shows single events only.
func (t *tracer) Histogram(timeline.HistKind, event.Device, *hist.Histogram) {}

// keep applies the pid and device filters.
func (t *tracer) keep(pid, tid uint32, dev string) bool {
	if p := t.opts.Pid; p != 0 && uint32(p) != pid && uint32(p) != tid {
		return false
	}
	return t.opts.Device == "" || t.opts.Device == dev
}

// emit writes a record, or keeps it until the header is written.
func (t *tracer) emit(r Record) {
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
func (t *tracer) write(r Record) {
	if t.werr != nil {
		return
	}
	b, err := Format(r, t.opts.Format)
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
	if h := Header(t.opts.Kind, t.opts.Format); h != "" {
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

// startProbes starts the probes of the trace's plan and returns the line
// that says what runs on which mechanism. When the probe the trace rests
// on runs on an inferred rung, the probe that infers its events starts
// too. If either cannot start, everything is stopped and the error says
// why.
func (t *tracer) startProbes() (string, error) {
	p := plans[t.opts.Kind]
	t.group = probes.Start(t.cfg, t)
	start := func(name string) event.ProbeStatus {
		ps, ok := probes.Named(name)
		if !ok {
			return event.ProbeStatus{Name: name, Status: event.StatusUnavailable, Reason: "no such probe"}
		}
		return t.group.Start(ps...)[0]
	}
	fail := func(st event.ProbeStatus) (string, error) {
		_ = t.stopProbes()
		return "", fmt.Errorf("probe %s cannot run: %s", st.Name, st.Reason)
	}
	st := start(p.probe)
	if st.Status != event.StatusOK {
		return fail(st)
	}
	var by event.ProbeStatus // the probe that infers st's events, if any
	if st.InferredBy != "" {
		if by = start(st.InferredBy); by.Status != event.StatusOK {
			return fail(by)
		}
	}
	var aux []string // the helpers that run, as "name on mechanism"
	var warns []string
	helpers := p.helpers
	if st.InferredBy != "" {
		helpers = append(slices.Clone(helpers), p.inferredAlso...)
	}
	for _, name := range helpers {
		h := start(name)
		if h.Status != event.StatusOK {
			warns = append(warns, fmt.Sprintf("%s unavailable (%s)", name, h.Reason))
			continue
		}
		aux = append(aux, fmt.Sprintf("%s on %s", h.Name, h.Mechanism))
	}
	if t.freezes != nil {
		t.freezes.SetProbes(t.group.Statuses())
	}
	for _, w := range warns {
		fmt.Fprintf(t.opts.ErrOut, "whyslow: %s: freezes may lack their device or attribute\n", w)
	}
	return t.startLine(st, by, aux), nil
}

// startLine says what the trace measures, with which probe on which
// mechanism: st is the probe the trace rests on, by the probe that infers
// its events (zero when st measures), aux the helpers that run.
func (t *tracer) startLine(st, by event.ProbeStatus, aux []string) string {
	on := strings.TrimPrefix(st.Reason, "on ") // the functions a direct rung probes
	var line string
	switch t.opts.Kind {
	case KindSubmit:
		what := fmt.Sprintf("tracing bio submissions slower than %s", t.cfg.MinLatency)
		if by.Name == "" {
			return fmt.Sprintf("%s: %s on %s (%s, entry to return)", what, st.Name, st.Mechanism, on)
		}
		return fmt.Sprintf("%s: %s on %s (block_bio_queue to getrq/merge)%s", what, by.Name, by.Mechanism, t.skippedNote(st))
	case KindExec:
		if len(st.Skipped) > 0 { // the failed execs' tracepoints could not attach
			return fmt.Sprintf("tracing execs: %s on %s (sched_process_exec; successful execs only: %s)", st.Name, st.Mechanism, st.Reason)
		}
		return fmt.Sprintf("tracing execs: %s on %s (sched_process_exec; failed ones from syscalls:sys_exit_execve and sys_exit_execveat)", st.Name, st.Mechanism)
	case KindUevent:
		return fmt.Sprintf("tracing kernel uevents: %s on %s (kernel group)", st.Name, st.Mechanism)
	case KindFreeze:
		what := fmt.Sprintf("tracing queue freezes longer than %s", t.cfg.MinLatency)
		if by.Name == "" {
			line = fmt.Sprintf("%s: %s on %s (%s, freeze to unfreeze)", what, st.Name, st.Mechanism, on)
		} else {
			line = fmt.Sprintf("%s: inferred by %s on %s from freezers blocked in blk_mq_freeze_queue_wait%s", what, by.Name, by.Mechanism, t.skippedNote(st))
		}
		if len(aux) > 0 {
			line += "; devices named with " + strings.Join(aux, " and ")
		}
	}
	return line
}

// skippedNote says why a probe did not run on its better mechanisms.
func (t *tracer) skippedNote(st event.ProbeStatus) string {
	if len(st.Skipped) == 0 {
		return ""
	}
	if ps, ok := probes.Named(st.Name); ok && t.cfg.Mechanism.For(ps[0].Decl()) != "" {
		return fmt.Sprintf("; %s forced onto %s by --mechanism", st.Name, st.Mechanism)
	}
	var parts []string
	for _, s := range st.Skipped {
		parts = append(parts, fmt.Sprintf("%s: %s", s.Mechanism, s.Reason))
	}
	return fmt.Sprintf("; %s could not run directly: %s", st.Name, strings.Join(parts, ", "))
}

// wait returns when the trace should end: its duration passed, ctx ended,
// or the output is gone. Freeze traces print settled freezes meanwhile.
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
	gone := readerGone(t.opts.Out, done)
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
	now, err := event.Now()
	if err != nil {
		if !final {
			return
		}
		now = 0 // final: every freeze is printed whatever the time
	}
	for _, s := range t.freezes.Ready(now, final) {
		r := FreezeFrom(s)
		if t.keep(r.Pid, r.Tid, r.Device) {
			t.emit(r)
		}
	}
}

// stopProbes stops every started probe, which delivers what they still
// buffer and their loss counts, then prints the freezes still held.
func (t *tracer) stopProbes() error {
	var err error
	if t.group != nil {
		err = t.group.Stop()
	}
	if t.freezes != nil {
		t.printFreezes(true)
		if n := t.freezes.Dropped(); n > 0 {
			t.Loss(event.Loss{Probe: "trace", What: "freeze attribution buffer full", Count: n})
		}
	}
	t.mu.Lock()
	if t.werr == nil {
		if ferr := t.w.Flush(); ferr != nil {
			t.fail(ferr)
		}
	}
	t.mu.Unlock()
	return err
}

// printLosses says on ErrOut how many events the probes could not deliver.
func (t *tracer) printLosses() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.losses.Losses) == 0 {
		return
	}
	parts := make([]string, 0, len(t.losses.Losses))
	for _, l := range t.losses.Losses {
		parts = append(parts, fmt.Sprintf("%s: %s %d", l.Probe, l.What, l.Count))
	}
	slices.Sort(parts)
	fmt.Fprintf(t.opts.ErrOut, "whyslow: lost %d events (%s)\n", t.losses.LostEvents(), strings.Join(parts, "; "))
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
