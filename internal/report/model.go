// Package report turns one diagnosis (timeline, facts, ranked findings) into
// the report users read: a stable JSON document, the contract for scripts and
// CI (schema "whyslow.report/v1", described in docs/report-schema.md), and a
// text rendering of the same data for terminals.
//
// Build makes the Report; JSON and Text render it. Units are in the field
// names (_us, _ms, _seconds); arrays are never null; numbers are rounded
// (microseconds to 0.1, milliseconds to 0.01).
package report

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// SchemaID names the version of the JSON contract. Additive changes keep it;
// renaming or removing a field, or changing its meaning or unit, bumps it.
const SchemaID = "whyslow.report/v1"

// ToolName is the tool field's name.
const ToolName = "whyslow"

// Report is one diagnosis, as written to JSON.
type Report struct {
	Schema string `json:"schema"`
	Tool   Tool   `json:"tool"`
	Host   Host   `json:"host"`
	// Kernel is the observed host's kernel release, the same as Host.Kernel.
	Kernel    string    `json:"kernel"`
	StartedAt time.Time `json:"started_at"` // RFC 3339, whole seconds
	// DurationSeconds is the observed window; it is shorter than
	// RequestedDurationSeconds when the run was interrupted.
	DurationSeconds          float64 `json:"duration_seconds"`
	RequestedDurationSeconds float64 `json:"requested_duration_seconds"`
	// Incomplete says the report comes from a trace that was cut (the run
	// was killed or the machine lost power as it recorded): it covers the
	// run up to the trace's last checkpoint, CoveredSeconds of it, and
	// IncompleteReason says where the trace ends. All three are present
	// only then.
	Incomplete       bool     `json:"incomplete,omitempty"`
	CoveredSeconds   *float64 `json:"covered_seconds,omitempty"`
	IncompleteReason string   `json:"incomplete_reason,omitempty"`
	MinLatencyUs     float64  `json:"min_latency_us"`
	DeviceFilter     []string `json:"device_filter"`
	LostEvents       uint64   `json:"lost_events"`
	Losses           []Loss   `json:"losses"`
	Probes           []Probe  `json:"probes"`
	Devices          []Device `json:"devices"`
	// Affected are the processes whose storage system calls the syscall
	// probe traced, the most time in those calls first (at most
	// MaxAffected); present only when there are any.
	Affected []Affected `json:"affected,omitempty"`
	Findings []Finding  `json:"findings"`
	// RuleErrors are the rules that failed while they were evaluated: their
	// findings are missing, those of the other rules are in Findings.
	RuleErrors []RuleError `json:"rule_errors"`
	// NotEvaluated are the rules that were not evaluated because no probe
	// of the run supplied the facts they need; present only when there
	// are any.
	NotEvaluated []NotEvaluated `json:"not_evaluated,omitempty"`
	// Trouble is what the trouble watcher saw (shadow armed mode); present
	// only for a live run, not for a report from a trace.
	Trouble *Trouble `json:"trouble,omitempty"`
	// Coverage says when the hot-hook programs were attached, for a run
	// in an armed mode (--armed-mode, experimental); absent in the
	// default mode, where they are all the run.
	Coverage *Coverage `json:"coverage,omitempty"`
	Summary  Summary   `json:"summary"`
}

// NotEvaluated is a rule that was not evaluated, and why.
type NotEvaluated struct {
	Rule   string `json:"rule"`
	Reason string `json:"reason"` // the facts it needs and why no probe supplied them
}

// RuleError is a rule that failed while it was evaluated.
type RuleError struct {
	Rule   string `json:"rule"`
	File   string `json:"file"`
	Line   int    `json:"line"`
	Column int    `json:"column"`
	// Error says what failed and why: "when (on loop0): index out of
	// range: 100 (array length is 10)", with " (and N more)" when the rule
	// failed more than once.
	Error string `json:"error"`
}

// Tool names the program that wrote the report.
type Tool struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// Host is the machine the run observed.
type Host struct {
	Hostname string `json:"hostname"`
	Kernel   string `json:"kernel"`
}

// Loss is a count of events a probe could not deliver.
type Loss struct {
	Probe string `json:"probe"`
	What  string `json:"what"`
	Count uint64 `json:"count"`
	// Overlap names the class of events this loss counts that losses of
	// other probes count too (event.Loss.Overlap): LostEvents counts the
	// class once, at its largest probe's count. Empty (omitted) when the
	// events are this probe's own.
	Overlap string `json:"overlap,omitempty"`
}

// overlapNote is what a loss line of an overlap class adds.
func overlapNote(l Loss) string {
	if l.Overlap == "" {
		return ""
	}
	return " (" + l.Overlap + ": the same events as other probes' lines of it, counted once in the total)"
}

// Probe says whether a probe ran, how, and why not.
type Probe struct {
	Name      string `json:"name"`
	Mechanism string `json:"mechanism"`
	Status    string `json:"status"` // "ok" or "unavailable"
	Reason    string `json:"reason"`
	Skipped   []Skip `json:"skipped"`
}

// Skip is a better mechanism a probe did not use, and why.
type Skip struct {
	Mechanism string `json:"mechanism"`
	Reason    string `json:"reason"`
}

// Device summarizes one block device.
type Device struct {
	Name    string   `json:"name"`
	ID      string   `json:"id"` // major:minor
	Lower   []string `json:"lower"`
	Upper   []string `json:"upper"`
	Submit  Latency  `json:"submit"`
	Service Latency  `json:"service"`
	// SubmitCall is the time per call in submit_bio_noacct, measured at the
	// function (probe submitfn); count 0 when it did not run directly.
	SubmitCall Latency `json:"submit_call"`
	// Stalls are slow submissions, above the min latency.
	Stalls SpanStats `json:"stalls"`
	// QueueWaits are tasks blocked entering the device's frozen queue.
	QueueWaits SpanStats `json:"queue_waits"`
	// Freezes are freezers waiting for the device's queue to drain.
	Freezes SpanStats   `json:"freezes"`
	Uevents UeventStats `json:"uevents"`
}

// Affected is a process and what its storage system calls cost: per call
// their latency, and where their time off CPU went, by stage.
type Affected struct {
	Pid    uint32 `json:"pid"`
	Comm   string `json:"comm"`
	Cgroup string `json:"cgroup"` // cgroup v2 path, "" when unknown
	// Blkio is its cgroup v1 blkio path, where that hierarchy is mounted.
	Blkio   string   `json:"blkio,omitempty"`
	Devices []string `json:"devices"` // the most time first; "all" for sync(2)
	// TotalMs is the time in its storage calls, the order of affected[].
	TotalMs float64        `json:"total_ms"`
	Calls   []AffectedCall `json:"calls"` // the most time first
	// BlockedMs is the part of TotalMs off CPU: asleep, or runnable and
	// not running.
	BlockedMs float64      `json:"blocked_ms"`
	Stages    []StageShare `json:"stages"` // BlockedMs split, the most time first
	// Unfinished are its calls still in the kernel when the run ended
	// (their time so far is in TotalMs, BlockedMs and Stages), the
	// longest first; omitted when none.
	Unfinished []UnfinishedCall `json:"unfinished,omitempty"`
}

// UnfinishedCall is a storage call still in the kernel when the run ended.
type UnfinishedCall struct {
	Tid     uint32 `json:"tid"`  // the thread in it
	Comm    string `json:"comm"` // the thread's name
	Syscall string `json:"syscall"`
	Device  string `json:"device"`
	// InCallMs is its time in the call up to the end of the run,
	// BlockedMs the part off CPU.
	InCallMs  float64 `json:"in_call_ms"`
	BlockedMs float64 `json:"blocked_ms"`
	// Stage is the stage of its latest sleep (which may last still); ""
	// when its stack was not taken.
	Stage string `json:"stage,omitempty"`
	// LowerBound: the call was in the kernel already when the probe
	// started or an armed mode armed it, and InCallMs and BlockedMs count
	// from then; omitted when false.
	LowerBound bool `json:"lower_bound,omitempty"`
}

// AffectedCall is one system call of an affected process.
type AffectedCall struct {
	Syscall string  `json:"syscall"`
	Count   uint64  `json:"count"`
	P50Us   float64 `json:"p50_us"`
	P99Us   float64 `json:"p99_us"`
	MaxUs   float64 `json:"max_us"`
	TotalMs float64 `json:"total_ms"` // with the time so far of the unfinished ones
	// Unfinished counts the calls still in the kernel when the run ended
	// (not in count and the percentiles); omitted when none.
	Unfinished int `json:"unfinished,omitempty"`
	// FromArming counts, of count, the calls in progress already when an
	// armed mode armed the probe: timed from the arming, their latencies
	// are lower bounds; omitted when none.
	FromArming uint64 `json:"from_arming,omitempty"`
}

// StageShare is the time an affected process spent in one stage.
type StageShare struct {
	Stage   string  `json:"stage"`
	TotalMs float64 `json:"total_ms"`
	Share   float64 `json:"share"` // of blocked_ms, 0..1
	// Frames, for stage other, are the top frames of its largest stack
	// (or why it has none).
	Frames string `json:"frames,omitempty"`
}

// MaxAffected is how many processes a report lists.
const MaxAffected = 10

// Latency summarizes a latency distribution, in microseconds.
type Latency struct {
	Count  uint64  `json:"count"`
	MeanUs float64 `json:"mean_us"`
	P50Us  float64 `json:"p50_us"`
	P99Us  float64 `json:"p99_us"`
	MaxUs  float64 `json:"max_us"`
}

// SpanStats summarizes a set of time spans, in milliseconds.
type SpanStats struct {
	Count   int     `json:"count"`
	TotalMs float64 `json:"total_ms"`
	MaxMs   float64 `json:"max_ms"`
}

// UeventStats counts a device's uevents.
type UeventStats struct {
	Count     int     `json:"count"`
	PerSecond float64 `json:"per_second"`
	// ByAction counts them per action, the most frequent first (then by
	// action).
	ByAction []ActionCount `json:"by_action"`
}

// ActionCount counts a device's uevents of one action.
type ActionCount struct {
	Action    string  `json:"action"`
	Count     int     `json:"count"`
	PerSecond float64 `json:"per_second"`
}

// Finding is one ranked cause.
type Finding struct {
	Rank        int       `json:"rank"`
	Rule        string    `json:"rule"`
	Severity    string    `json:"severity"`
	Score       float64   `json:"score"` // ms of I/O delay explained
	Title       string    `json:"title"`
	Explanation string    `json:"explanation"`
	Devices     []string  `json:"devices"`
	Processes   []Process `json:"processes"`
	Trigger     *Trigger  `json:"trigger"` // null when the chain names no command
	Steps       []Step    `json:"steps"`
	Evidence    Evidence  `json:"evidence"`
	Stacks      []Stack   `json:"stacks"`
	Remedy      string    `json:"remedy"`
	// Precision says how the facts behind the finding were measured, e.g.
	// "direct: kprobe __bio_queue_enter" or "inferred: off-CPU stacks"
	// ("; "-separated, most precise first); "" when the rule does not say.
	Precision string `json:"precision"`
}

// Parts of a process in a finding (Process.Part).
const (
	PartCause  = "cause"
	PartVictim = "victim"
)

// Process is a process a finding names, with its part in it.
type Process struct {
	Pid  uint32 `json:"pid"`
	Comm string `json:"comm"`
	Role string `json:"role"`
	// Part is "cause" or "victim" when the rule knows it, else "".
	Part string `json:"part"`
	// Cgroup is the cgroup its I/O is charged to; omitted when the rule
	// does not know it.
	Cgroup string `json:"cgroup,omitempty"`
}

// Trigger is the command that starts a finding's chain.
type Trigger struct {
	Pid           uint32   `json:"pid"`
	PPid          uint32   `json:"ppid"`
	Comm          string   `json:"comm"`
	ParentComm    string   `json:"parent_comm"`
	Filename      string   `json:"filename"`
	Args          []string `json:"args"`
	Pipeline      string   `json:"pipeline"` // the whole shell pipeline, "" when not in one
	Count         int      `json:"count"`
	PeriodSeconds float64  `json:"period_seconds"` // 0 when not periodic
}

// Step is one link of a causal chain, first cause first.
type Step struct {
	Rule  string `json:"rule"`
	Title string `json:"title"`
}

// Stack is a group of blocked spans with the same stacks.
type Stack struct {
	Kind      string   `json:"kind"` // "queue-enter", "freeze-wait" or "freeze"
	Count     int      `json:"count"`
	TotalMs   float64  `json:"total_ms"`
	MaxMs     float64  `json:"max_ms"`
	Processes []string `json:"processes"` // comms, most frequent first
	Kernel    []string `json:"kernel"`    // innermost first
	User      []string `json:"user"`      // innermost first
}

// Summary is what CI checks look at.
type Summary struct {
	Findings      int    `json:"findings"`
	WorstSeverity string `json:"worst_severity"` // "critical", "warning", "info" or "none"
}

// EvidenceItem is one named value a rule computed. Values are JSON values:
// numbers (float64), strings, booleans, null, arrays and objects of them.
type EvidenceItem struct {
	Name  string
	Value any
}

// Evidence is a finding's named values in the order the rule lists them. It
// is written as a JSON object whose keys keep that order.
type Evidence []EvidenceItem

// MarshalJSON writes the items as one object, in order.
func (e Evidence) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, it := range e {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(it.Name)
		if err != nil {
			return nil, err
		}
		v, err := json.Marshal(it.Value)
		if err != nil {
			return nil, fmt.Errorf("evidence %q: %w", it.Name, err)
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// UnmarshalJSON reads an object, keeping its key order.
func (e *Evidence) UnmarshalJSON(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok == nil { // null
		*e = Evidence{}
		return nil
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return fmt.Errorf("evidence: want an object, got %v", tok)
	}
	out := Evidence{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		name, ok := tok.(string)
		if !ok {
			return fmt.Errorf("evidence: want a key, got %v", tok)
		}
		var v any
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("evidence %q: %w", name, err)
		}
		out = append(out, EvidenceItem{Name: name, Value: v})
	}
	if _, err := dec.Token(); err != nil { // closing brace
		return err
	}
	*e = out
	return nil
}
