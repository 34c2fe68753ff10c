// Package live formats what `whyslow trace` prints: one record per event,
// as a line of text under a header (the columns of the classic tracing
// tools) or as one JSON object per line.
//
// Records are built from probe events (and, for queue freezes, from the
// spans facts.Build derives) with times in seconds since the trace started.
// Formatting is pure: nothing here reads the host.
package live

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/whyslow/whyslow/internal/escape"
	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/facts"
)

// Kind names what a trace prints.
type Kind string

// Kinds of trace.
const (
	KindSubmit Kind = "submit"
	KindExec   Kind = "exec"
	KindUevent Kind = "uevent"
	KindFreeze Kind = "freeze"
)

// Options change how records are formatted.
type Options struct {
	// JSON prints one JSON object per line and no header.
	JSON bool
	// Ms shows submission latency in milliseconds instead of microseconds.
	Ms bool
}

// Record is one formatted event.
type Record interface {
	// Kind is the trace the record belongs to.
	Kind() Kind
	text(o Options) string
}

// Header returns the column header of a text trace (with its newline), or
// "" for JSON.
func Header(k Kind, o Options) string {
	if o.JSON {
		return ""
	}
	switch k {
	case KindSubmit:
		lat := "LAT(us)"
		if o.Ms {
			lat = "LAT(ms)"
		}
		return fmt.Sprintf("%-12s %-16s %-7s %10s  %s\n", "TIME(s)", "COMM", "PID", lat, "DISK")
	case KindExec:
		return fmt.Sprintf("%-12s %-16s %-7s %-7s %3s %s\n", "TIME(s)", "COMM", "PID", "PPID", "RET", "ARGS")
	case KindUevent:
		return fmt.Sprintf("%-12s %-8s %-48s %-12s %s\n", "TIME(s)", "ACTION", "DEVPATH (SUBSYSTEM)", "DEVNAME", "SEQNUM")
	case KindFreeze:
		return fmt.Sprintf("%-12s %-16s %-7s %-12s %9s  %s\n", "TIME(s)", "COMM", "PID", "DEVICE", "DUR(ms)", "ATTR")
	}
	return ""
}

// Format returns a record as text (one or more lines) or as one JSON
// object, always ending in a newline.
func Format(r Record, o Options) ([]byte, error) {
	if o.JSON {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false) // "=>" in arguments stays readable
		if err := enc.Encode(r); err != nil {
			return nil, fmt.Errorf("encoding %s record: %w", r.Kind(), err)
		}
		return b.Bytes(), nil
	}
	return []byte(r.text(o)), nil
}

// Seconds is a time since the start of the trace, in seconds.
func Seconds(t, start event.Mono) float64 {
	return float64(t-start) / float64(time.Second)
}

// Submit is one slow bio submission.
type Submit struct {
	Event     string  `json:"event"`  // "submit"
	TimeS     float64 `json:"time_s"` // when the submission started, seconds since the trace started
	Comm      string  `json:"comm"`
	Pid       uint32  `json:"pid"` // process (thread group) id
	Tid       uint32  `json:"tid"` // thread id
	LatencyNs int64   `json:"latency_ns"`
	Disk      string  `json:"disk"` // whole-disk name, e.g. "loop0"; major:minor when unknown
	Dev       string  `json:"dev"`  // major:minor
	Op        string  `json:"op"`   // rwbs, e.g. "WS"; "" when the mechanism does not see it
	// Mechanism is how the latency was measured: "tp_btf" (block_bio_queue
	// to getrq/merge) or "fentry"/"kprobe" (submit_bio_noacct entry to return).
	Mechanism string `json:"mechanism"`
}

// Kind implements Record.
func (Submit) Kind() Kind { return KindSubmit }

// SubmitFromSlow is the record of a slow submission seen by the submit
// probe's tracepoints.
func SubmitFromSlow(e event.SlowSubmit, start event.Mono) Submit {
	return Submit{Event: string(KindSubmit), TimeS: Seconds(e.Start, start), Comm: e.Task.Comm, Pid: e.Task.Tgid, Tid: e.Task.Pid,
		LatencyNs: int64(e.Latency), Disk: e.Dev.String(), Dev: e.Dev.ID(), Op: e.Op, Mechanism: string(event.MechTPBTF)}
}

// SubmitFromCall is the record of a slow submit_bio_noacct call timed by
// the submitfn probe.
func SubmitFromCall(e event.SubmitCall, start event.Mono) Submit {
	return Submit{Event: string(KindSubmit), TimeS: Seconds(e.Start, start), Comm: e.Task.Comm, Pid: e.Task.Tgid, Tid: e.Task.Pid,
		LatencyNs: int64(e.Latency), Disk: e.Dev.String(), Dev: e.Dev.ID(), Mechanism: string(e.Mechanism)}
}

func (s Submit) text(o Options) string {
	lat := strconv.FormatInt(s.LatencyNs/int64(time.Microsecond), 10)
	if o.Ms {
		lat = strconv.FormatFloat(float64(s.LatencyNs)/float64(time.Millisecond), 'f', 3, 64)
	}
	return fmt.Sprintf("%-12.6f %-16s %-7d %10s  %s\n", s.TimeS, escape.String(orDash(s.Comm)), s.Pid, lat, escape.String(orDash(s.Disk)))
}

// Exec is one execve: one that ran, or one that failed (when the syscall
// tracepoints could be attached).
type Exec struct {
	Event      string  `json:"event"`  // "exec"
	TimeS      float64 `json:"time_s"` // seconds since the trace started
	Comm       string  `json:"comm"`
	Pid        uint32  `json:"pid"`
	Tid        uint32  `json:"tid"`
	PPid       uint32  `json:"ppid"`
	ParentComm string  `json:"parent_comm"`
	UID        uint32  `json:"uid"`
	// Ret is the return value of execve: 0, or the error (-errno, as
	// execsnoop shows it) of one that failed; then Comm, Pid and Tid are
	// the caller's.
	Ret           int      `json:"ret"`
	Filename      string   `json:"filename"`
	Args          []string `json:"args"`
	ArgsTruncated bool     `json:"args_truncated"`
}

// Kind implements Record.
func (Exec) Kind() Kind { return KindExec }

// ExecFrom is the record of an exec.
func ExecFrom(e event.Exec, start event.Mono) Exec {
	args := e.Args
	if args == nil {
		args = []string{}
	}
	return Exec{Event: string(KindExec), TimeS: Seconds(e.Time, start), Comm: e.Task.Comm, Pid: e.Task.Tgid, Tid: e.Task.Pid,
		PPid: e.PPid, ParentComm: e.ParentComm, UID: e.UID, Filename: e.Filename, Args: args, ArgsTruncated: e.ArgsTruncated,
		Ret: int(e.Ret)}
}

func (e Exec) text(Options) string {
	args := make([]string, len(e.Args))
	for i, a := range e.Args {
		args[i] = escape.String(a)
	}
	line := strings.Join(args, " ")
	if line == "" {
		line = escape.String(orDash(e.Filename))
	}
	if e.ArgsTruncated {
		line += " ..."
	}
	return fmt.Sprintf("%-12.6f %-16s %-7d %-7d %3d %s\n", e.TimeS, escape.String(orDash(e.Comm)), e.Pid, e.PPid, e.Ret, line)
}

// Uevent is one kernel uevent.
type Uevent struct {
	Event     string  `json:"event"`  // "uevent"
	TimeS     float64 `json:"time_s"` // when it was received, seconds since the trace started
	Action    string  `json:"action"`
	DevPath   string  `json:"devpath"`
	Subsystem string  `json:"subsystem"`
	DevName   string  `json:"devname"` // "" when the uevent has none
	DevType   string  `json:"devtype"` // "" when the uevent has none
	Seqnum    uint64  `json:"seqnum"`
}

// Kind implements Record.
func (Uevent) Kind() Kind { return KindUevent }

// UeventFrom is the record of a uevent.
func UeventFrom(e event.Uevent, start event.Mono) Uevent {
	return Uevent{Event: string(KindUevent), TimeS: Seconds(e.Time, start), Action: e.Action, DevPath: e.DevPath,
		Subsystem: e.Subsystem, DevName: e.DevName, DevType: e.DevType, Seqnum: e.Seqnum}
}

func (u Uevent) text(Options) string {
	where := escape.String(u.DevPath) + " (" + escape.String(u.Subsystem) + ")"
	return fmt.Sprintf("%-12.6f %-8s %-48s %-12s %d\n", u.TimeS, escape.String(orDash(u.Action)), where, escape.String(orDash(u.DevName)), u.Seqnum)
}

// Freeze is one freeze of a request queue: who froze it, which device, for
// how long, and the freezer's stacks.
type Freeze struct {
	Event string  `json:"event"`  // "freeze"
	TimeS float64 `json:"time_s"` // when it started, seconds since the trace started
	Comm  string  `json:"comm"`   // the freezer
	Pid   uint32  `json:"pid"`
	Tid   uint32  `json:"tid"`
	// DurationNs is freeze start to unfreeze when measured directly (kind
	// "freeze"), else the freezer's wait for the queue to drain (kind
	// "freeze-wait", inferred from off-CPU stacks).
	DurationNs int64 `json:"duration_ns"`
	// Device is the frozen queue's device; "" when no event named it.
	Device string `json:"device"`
	// Attr is the sysfs attribute the freezer had just opened for writing,
	// e.g. "queue/scheduler"; "" when none was seen.
	Attr string `json:"attr"`
	// Kind is "freeze" (timed at the freeze functions) or "freeze-wait"
	// (inferred from the freezer blocked in blk_mq_freeze_queue_wait).
	SpanKind string `json:"kind"`
	// Source says how it was measured, as the report does.
	Source string `json:"source"`
	// KernelStack and UserStack are the freezer's frames, innermost first,
	// as "symbol+0xoff" with " [module]" for modules and user binaries.
	KernelStack []string `json:"kernel_stack"`
	UserStack   []string `json:"user_stack"`
}

// Kind implements Record.
func (Freeze) Kind() Kind { return KindFreeze }

// FreezeFrom is the record of a freeze span of facts (KindFreeze or
// KindFreezeWait), whose times are relative to the start of the trace.
func FreezeFrom(s facts.Span) Freeze {
	return Freeze{Event: string(KindFreeze), TimeS: float64(s.Start) / float64(time.Second), Comm: s.Comm, Pid: s.Tgid, Tid: s.Pid,
		DurationNs: int64(s.Duration()), Device: s.Device, Attr: s.Attr, SpanKind: s.Kind, Source: s.Source,
		KernelStack: event.FormatStack(s.KernelStack), UserStack: event.FormatStack(s.UserStack)}
}

func (f Freeze) text(Options) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-12.6f %-16s %-7d %-12s %9.3f  %s\n", f.TimeS, escape.String(orDash(f.Comm)), f.Pid, escape.String(orDash(f.Device)),
		float64(f.DurationNs)/float64(time.Millisecond), escape.String(orDash(f.Attr)))
	for _, fr := range f.KernelStack {
		fmt.Fprintf(&b, "    %s\n", escape.String(fr))
	}
	if len(f.UserStack) > 0 {
		b.WriteString("    -- user --\n")
		for _, fr := range f.UserStack {
			fmt.Fprintf(&b, "    %s\n", escape.String(fr))
		}
	}
	b.WriteString("\n")
	return b.String()
}

// orDash is s, or "-" when s is empty.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
