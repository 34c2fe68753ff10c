// Package probes observes the kernel: each probe is one file here (and, for
// BPF probes, one bpf/<name>.bpf.c), registered in one place, and emits typed
// events, per-device histograms and loss counts into a Sink.
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
}

// Probe is one source of events.
type Probe interface {
	// Name is short and stable, e.g. "submit", "offcpu".
	Name() string
	// Describe says in one line what the probe measures.
	Describe() string
	// Start loads and attaches the probe on the best mechanism available and
	// begins delivering to sink. On failure it returns a nil Running and a
	// status saying why; nothing stays attached.
	Start(cfg Config, sink Sink) (Running, event.ProbeStatus)
}

// Running is a started probe.
type Running interface {
	// Stop detaches, delivers what is still buffered and the final
	// histograms and loss counts to the sink, and frees everything.
	Stop() error
}

var registry []Probe

// Register adds a probe; called from init functions, in a fixed order.
func Register(p Probe) { registry = append(registry, p) }

// All returns every registered probe in registration order.
func All() []Probe { return append([]Probe(nil), registry...) }
