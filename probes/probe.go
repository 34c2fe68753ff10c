// Package probes observes the kernel: each probe is one file here (and, for
// BPF probes, one bpf/<name>.bpf.c) that declares it (Decl: its name,
// mechanisms and documentation) and registers it, and emits typed events,
// per-device histograms and loss counts into a Sink. The order probes are
// listed and started in, and the event kinds each emits, are those of
// timeline.Sources. Start (start.go) is the one way to start a set of them.
//
// A probe that cannot start never stops the others: Start returns a status
// saying why, and the run goes on with what works.
package probes

import (
	"errors"
	"time"

	"github.com/cilium/ebpf/btf"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
)

// ErrNotSupported means the kernel lacks what a probe needs.
var ErrNotSupported = errors.New("not supported by this kernel")

// Sink receives what probes observe. Implementations must be safe for
// concurrent use: every probe delivers from its own goroutine.
type Sink interface {
	Event(event.Event)
	Loss(event.Loss)
	// Histogram delivers a device's final histogram when a probe stops.
	Histogram(kind timeline.HistKind, dev event.Device, h *hist.Histogram)
}

// Config is what every probe is started with.
type Config struct {
	// MinLatency is the threshold above which single slow events (submissions,
	// blocked spans) are streamed to user space; shorter ones are only counted.
	MinLatency time.Duration
	// KernelTypes is the kernel BTF; nil means the running kernel's.
	KernelTypes *btf.Spec
	// ProcFS and SysFS are the roots of /proc and /sys (tests may point them elsewhere).
	ProcFS, SysFS string
	// Mechanism forces probes that offer several mechanisms onto one
	// (--mechanism); the zero value lets each pick its best.
	Mechanism MechanismChoice
	// FailedExecs makes the exec probe also report execs that fail
	// (event.Exec with Ret < 0), from the syscalls:sys_{enter,exit}_execve
	// and execveat tracepoints, where they can be attached.
	FailedExecs bool

	// started, when not nil, is closed once every probe started with this
	// Config (one Group.Start) has started: work a probe needs only after
	// its start (reading kallsyms to symbolize stacks) waits for it, so
	// that it does not take the CPUs from the others' loads.
	started <-chan struct{}
}

// afterStart calls fn in a goroutine of its own once every probe started
// with cfg has started (at once outside a Group).
func (cfg Config) afterStart(fn func()) {
	go func() {
		if cfg.started != nil {
			<-cfg.started
		}
		fn()
	}()
}

// Probe is one source of events.
type Probe interface {
	// Decl declares the probe: its name, mechanisms and documentation.
	Decl() Decl
	// Start loads and attaches the probe on the best mechanism available and
	// begins delivering to sink. On failure it returns a nil Running and a
	// status saying why; nothing stays attached. Callers start probes
	// through Start (start.go), which checks the host first.
	Start(cfg Config, sink Sink) (Running, event.ProbeStatus)
}

// Decl declares a probe: everything about it but its code. The event kinds
// it emits are declared with their streams in timeline.Sources, low in the
// import graph where facts, trace files and reports see them.
type Decl struct {
	// Name is its event.Probe* name, as listed in timeline.Sources.
	Name string
	// Mechanisms are the ways it can run, best first.
	Mechanisms []Rung
	// Forceable says --mechanism can force it onto one of its mechanisms:
	// it climbs them on the ladder (ladder.go). Others choose on their own.
	Forceable bool
	// Describe says in one line what the probe measures (whyslow probes).
	Describe string
	// Attach and Records are its row of the README's probe table, in
	// markdown: where it attaches, and what it records.
	Attach, Records string
}

// Rung is one mechanism a probe can run on.
type Rung struct {
	Mech event.Mechanism
	// InferredBy names the probe whose events stand in for this one's on
	// this rung, which runs nothing of its own; "" for a rung that measures.
	InferredBy string
}

// Mechs lists the probe's mechanisms, best first.
func (d Decl) Mechs() []event.Mechanism {
	out := make([]event.Mechanism, len(d.Mechanisms))
	for i, r := range d.Mechanisms {
		out[i] = r.Mech
	}
	return out
}

// InferredBy names the probe that does the work when this one runs on
// mech, or "" when it measures itself there.
func (d Decl) InferredBy(mech event.Mechanism) string {
	for _, r := range d.Mechanisms {
		if r.Mech == mech {
			return r.InferredBy
		}
	}
	return ""
}

// started is the status of a probe that runs on its first (for most, its
// only) mechanism.
func (d Decl) started() event.ProbeStatus { return okStatus(d.Name, d.Mechanisms[0].Mech) }

// Running is a started probe.
type Running interface {
	// Stop detaches, delivers what is still buffered and the final
	// histograms and loss counts to the sink, and frees everything.
	Stop() error
}

// Checkpointer is a running probe that can deliver, while it runs, what it
// would deliver when it stops besides its events: its per-device
// histograms and its loss counts so far (cumulative, to a sink of their
// own, not added to those Stop delivers). A trace recorded as the run goes
// holds them at its checkpoints, so that one cut short still has them.
type Checkpointer interface {
	Checkpoint(sink Sink) error
}

// Pruner is a running probe that keeps sums per process (Checkpointer:
// the syscall probe in the kernel's maps and drained from them, the submit
// probe in user space) and can remove those of the processes that had
// exited when the last Checkpoint read them, whose sums that checkpoint
// delivered final: an agent that runs for days calls it after each
// checkpoint it keeps (serve), or the sums grow with every process long
// gone until their bound, and the new ones' are lost. The states after it lack those sums:
// count a window along every checkpoint in it (flight.AddSumsChain). A
// one-shot run never calls it: its final read has every process's sums.
// It returns the processes (tgids) whose every sum it removed: a sum of
// theirs read later is counted anew (a pid reused).
type Pruner interface {
	Prune() (removed []uint32, err error)
}

// registry holds every probe by name; register fills it from each probe's
// file. Their order is timeline.Sources'.
var registry = map[string]Probe{}

// register adds a probe; every probe's file calls it from init.
func register(p Probe) {
	name := p.Decl().Name
	if _, dup := registry[name]; dup {
		panic("probes: " + name + " registered twice")
	}
	registry[name] = p
}

// All returns every probe, in the order of timeline.Sources.
func All() []Probe {
	var out []Probe
	for _, name := range timeline.ProbeNames() {
		if p, ok := registry[name]; ok {
			out = append(out, p)
		}
	}
	return out
}

// Named returns the probes of these names, in that order; ok is false
// when a name is no probe's.
func Named(names ...string) (ps []Probe, ok bool) {
	for _, n := range names {
		p, found := registry[n]
		if !found {
			return nil, false
		}
		ps = append(ps, p)
	}
	return ps, true
}
