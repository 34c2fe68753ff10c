package probes

// The one way to start probes: Prepare checks what BPF probes need of the
// host (privilege, kernel BTF, the locked-memory limit), once, before
// anything loads; Start starts a set of probes at once and returns them as
// a Group, which stops them at once. `whyslow diagnose`, `whyslow probes`
// and `whyslow trace` all start their probes this way.

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/whyslow/whyslow/internal/event"
)

// DefaultBTF is where the running kernel publishes its BTF.
const DefaultBTF = "/sys/kernel/btf/vmlinux"

// ErrNotRoot means the run lacks the privilege to load BPF programs.
var ErrNotRoot = errors.New("needs root")

// Prepare checks, before anything is loaded, that BPF probes can start
// here: the privilege, and the kernel BTF at path (DefaultBTF, or "" for
// it, is the running kernel's, decoded once per process). It raises the
// locked-memory limit BPF maps are charged to before 5.11, and returns the
// kernel BTF for Config.KernelTypes.
func Prepare(path string) (*btf.Spec, error) {
	if euid := os.Geteuid(); euid != 0 {
		return nil, fmt.Errorf("%w: loading BPF programs and reading kernel stacks needs root (CAP_BPF, CAP_PERFMON, CAP_SYSLOG), running as uid %d; run it with sudo", ErrNotRoot, euid)
	}
	spec, err := loadBTF(path)
	if err != nil {
		return nil, err
	}
	if err := raiseMemlock(); err != nil {
		return nil, err
	}
	return spec, nil
}

func loadBTF(path string) (*btf.Spec, error) {
	if path == "" {
		path = DefaultBTF
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("kernel BTF not readable at %s (%w): the block, scheduler and exec probes need it (a kernel built with CONFIG_DEBUG_INFO_BTF=y, or --btf FILE); without it only the uevent listener could run, too little to diagnose", path, errors.Unwrap(err))
	}
	var spec *btf.Spec
	var err error
	if path == DefaultBTF {
		spec, err = KernelBTF()
	} else {
		spec, err = btf.LoadSpec(path)
	}
	if err != nil {
		return nil, fmt.Errorf("kernel BTF at %s is not usable: %w", path, err)
	}
	return spec, nil
}

// raiseMemlock removes the RLIMIT_MEMLOCK limit, once per process: kernels
// before 5.11 charge BPF maps to it, and its usual 64 KiB (8 MiB on newer
// distributions) makes map creation fail with EPERM. Kernels with
// memory-cgroup accounting of BPF need nothing, and rlimit leaves them be.
var raiseMemlock = sync.OnceValue(func() error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("raising the locked-memory limit for BPF maps: %w", err)
	}
	return nil
})

// Group is a set of started probes that deliver to one sink.
type Group struct {
	cfg  Config
	sink Sink
	// tap counts the completions no program saw, for devfault's loss
	// (missed.go), from every delivery of the group's run: the probes
	// deliver to run (sink, tapped) and each checkpoint's sink tapped.
	tap *missedTap
	run Sink

	// armMu serializes Arm and Disarm (arm.go); disarmed is the state
	// the last asked for.
	armMu    sync.Mutex
	disarmed bool

	mu       sync.Mutex
	statuses []event.ProbeStatus
	running  []started
}

type started struct {
	name string
	r    Running
}

// Start starts the probes at once (most of a start is the kernel verifying
// programs and reading kallsyms and BTF, which overlap) with cfg, on sink.
// A probe that cannot start never stops the others: its status says why.
// BPF probes need Prepare first.
func Start(cfg Config, sink Sink, ps ...Probe) *Group {
	tap := new(missedTap)
	g := &Group{cfg: cfg, sink: sink, tap: tap, run: tap.tapped(sink)}
	g.Start(ps...)
	return g
}

// Start starts more probes at once in the group and returns their
// statuses, in the order of ps.
func (g *Group) Start(ps ...Probe) []event.ProbeStatus {
	out := make([]event.ProbeStatus, len(ps))
	runs := make([]Running, len(ps))
	// Work a probe does once all have started waits for allStarted.
	cfg := g.cfg
	allStarted := make(chan struct{})
	cfg.started = allStarted
	// The chains shared by several of ps await their members, so that
	// a program never takes its own way only to leave it for a slot
	// moments later (chainwait.go): every seat before any start.
	seats := make([][]*seat, len(ps))
	for i, p := range ps {
		if m, ok := p.(chainMember); ok {
			seats[i] = m.seats()
		}
	}
	atOnce(len(ps), func(i int) {
		defer freeSeats(seats[i])
		r, st := ps[i].Start(cfg, g.run)
		if st.Name == "" {
			st.Name = ps[i].Decl().Name
		}
		runs[i], out[i] = r, st
	})
	close(allStarted)
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, st := range out {
		g.statuses = append(g.statuses, st)
		if runs[i] != nil {
			g.running = append(g.running, started{st.Name, runs[i]})
		}
	}
	return out
}

// Statuses returns the status of every probe started, in start order.
func (g *Group) Statuses() []event.ProbeStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]event.ProbeStatus(nil), g.statuses...)
}

// Running returns the names of the probes that run, in start order.
func (g *Group) Running() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]string, len(g.running))
	for i, s := range g.running {
		out[i] = s.name
	}
	return out
}

// Unavailable says in one line why each probe that could not start did
// not: "name: reason; ...".
func (g *Group) Unavailable() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var parts []string
	for _, st := range g.statuses {
		if st.Status != event.StatusOK {
			parts = append(parts, fmt.Sprintf("%s: %s", st.Name, st.Reason))
		}
	}
	return strings.Join(parts, "; ")
}

// Stop stops every running probe at once (detaching fentry and kprobe links
// takes the kernel a while each: a tenth of a second under qemu), which
// delivers what they still buffer, their histograms and their loss counts
// to the sink. The group is empty afterwards.
func (g *Group) Stop() error {
	g.mu.Lock()
	running := g.running
	g.running = nil
	g.mu.Unlock()
	errs := make([]error, len(running))
	atOnce(len(running), func(i int) { errs[i] = running[i].r.Stop() })
	if hasProbe(running, event.ProbeDevFault) {
		g.tap.deliver(g.sink)
	}
	var msgs []string
	for i, err := range errs {
		if err != nil {
			msgs = append(msgs, running[i].name+": "+err.Error())
		}
	}
	if len(msgs) > 0 {
		return fmt.Errorf("stopping probes: %s", strings.Join(msgs, "; "))
	}
	return nil
}

// Prune removes the sums of exited processes read by the last Checkpoint
// from every running probe that keeps them (Pruner). Call it right after
// that Checkpoint, never at the same time as Stop. It returns, by probe
// name, the processes whose every sum that probe removed (Pruner).
func (g *Group) Prune() (map[string][]uint32, error) {
	g.mu.Lock()
	running := slices.Clone(g.running)
	g.mu.Unlock()
	var msgs []string
	removed := map[string][]uint32{}
	for _, s := range running {
		if p, ok := s.r.(Pruner); ok {
			gone, err := p.Prune()
			if len(gone) > 0 {
				removed[s.name] = gone
			}
			if err != nil {
				msgs = append(msgs, s.name+": "+err.Error())
			}
		}
	}
	if len(msgs) > 0 {
		return removed, fmt.Errorf("pruning the probes' sums: %s", strings.Join(msgs, "; "))
	}
	return removed, nil
}

// Checkpoint delivers to sink the histograms and loss counts so far of every
// running probe that can tell them while it runs (Checkpointer). It must
// not run at the same time as Stop.
func (g *Group) Checkpoint(sink Sink) error {
	g.mu.Lock()
	running := slices.Clone(g.running)
	g.mu.Unlock()
	var msgs []string
	tapped := g.tap.tapped(sink)
	for _, s := range running {
		if cp, ok := s.r.(Checkpointer); ok {
			if err := cp.Checkpoint(tapped); err != nil {
				msgs = append(msgs, s.name+": "+err.Error())
			}
		}
	}
	if hasProbe(running, event.ProbeDevFault) {
		g.tap.deliver(sink)
	}
	if len(msgs) > 0 {
		return fmt.Errorf("checkpoint of the probes: %s", strings.Join(msgs, "; "))
	}
	return nil
}

// atOnce calls fn(0) to fn(n-1), each in a goroutine of its own, and
// returns when all have returned.
func atOnce(n int, fn func(i int)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(i)
		}()
	}
	wg.Wait()
}

// hasProbe says whether the probe named name is among running.
func hasProbe(running []started, name string) bool {
	for _, s := range running {
		if s.name == name {
			return true
		}
	}
	return false
}
