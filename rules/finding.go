package rules

import "time"

// Severity ranks how bad a finding is.
type Severity string

// Severities, worst first.
const (
	Critical Severity = "critical"
	Warning  Severity = "warning"
	Info     Severity = "info"
)

// Finding is one cause the rules found, with the chain of causes behind it.
type Finding struct {
	Rank     int      // 1 = most important
	Rule     string   // id of the rule that produced it
	Severity Severity // of the rule
	// Score is the milliseconds of I/O delay the finding explains; it orders findings.
	Score       float64
	Title       string
	Explanation string
	Remedy      string
	Devices     []string
	Processes   []Process
	// Trigger is the command behind the chain, when a rule named one.
	Trigger *Trigger
	// Steps is the causal chain from the first cause to the effect; the last
	// step is this finding's own rule. A finding no other explains has one step.
	Steps []Step
	// Evidence is the rule's named values, in the order the rule lists them.
	Evidence []Evidence
	// Precision says what the finding rests on: how the facts it used were
	// measured, e.g. "direct: kprobe __bio_queue_enter" or "inferred:
	// off-CPU stacks"; several are joined by "; ", most precise first. ""
	// when the rule does not say.
	Precision string

	// stages are the stages of blocked time the finding explains, of
	// the rules of its chain together (Rule.Stages); nil: all of them.
	stages []string
}

// Process is a process a finding names.
type Process struct {
	Pid  uint32
	Tgid uint32 // its process id, when Pid names a thread; 0 when not known
	Comm string
	Role string // "freezer", "submitter", "trigger", ...
	// Part is "cause" or "victim" when the rule says (facts.PartCause,
	// facts.PartVictim), else "".
	Part string
	// Cgroup is the cgroup its I/O is charged to, when the rule knows it.
	Cgroup string
}

// Trigger is a command that starts a causal chain.
type Trigger struct {
	Pid        uint32
	PPid       uint32
	Comm       string
	ParentComm string
	Filename   string
	Args       []string
	// Pipeline is the whole shell pipeline the command ran in, or "".
	Pipeline string
	Count    int
	Period   time.Duration
}

// Step is one link of a causal chain.
type Step struct {
	Rule string
	// Title is the rule's short step text, or its title when it has none.
	Title string
}

// Evidence is one named value a rule computed.
type Evidence struct {
	Name  string
	Value any
}
