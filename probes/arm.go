package probes

// Armed mode (experimental; issue 16, BENCHMARKS.md "arming and
// disarming the hot-hook programs"): a program attached to sys_enter,
// sys_exit, sched_switch or sched_waking costs every system call or
// context switch of the machine its dispatch, whatever it does (the floor
// of four empty programs there is some +20% on a pipe's round trip). So
// a Group can take every program of its probes off those four hooks
// (Disarm) and put them back (Arm), at run time, as often as it likes:
// the programs stay loaded and their maps keep what they hold, the ring
// buffers and the sums stay readable, and each probe's loss report says
// for how long it was disarmed and what was in flight as it was armed or
// disarmed. What decides when to arm (PSI triggers, ...) is not here.
//
// Probes on the four hooks (the armable ones): syscall (the leader of the
// chains there: sc_btf_enter, sc_btf_exit, sc_switch, sc_waking, or on its
// tracepoint rung its syscall tracepoints), offcpu (offcpu_switch,
// offcpu_wakeup, offcpu_sys_exit: in the syscall probe's slots or on links
// of their own), sysfs (sysfs_sys_enter in a slot, else its syscall
// tracepoints, which are handlers on sys_enter too) and exec's failed-exec
// programs (same, on sys_enter and sys_exit). Disarm detaches the
// leader's links first and leaves the followers in its slots, where
// nothing runs them (a slot's update patches the tail calls' jumps, which
// took the kernel 10-40 ms per probe on 6.18, where the four links'
// detach took 2 ms); a follower on a link or tracepoints of its own (no
// leader) leaves the hook. Arm attaches the leader's links again, which
// run the followers still in its slots; those that left join the chains
// again. The start-up rendezvous of chainwait.go is not run again: the
// chains await no seat then, and the Group orders the probes itself.
//
// What is in flight: a storage call in progress as the syscall probe
// disarms loses its end (its thread's state is kept, but a call that
// began before the last arming is not live: armed_at_ns in
// bpf/syscall.bpf.c); the blocked ones (the `inflight` map) are counted.
// As it arms, where the kernel allows it (task storage, tp_btf,
// bpf_task_pt_regs: 5.15+), the calls in progress are seeded from the
// threads' registers by an iter/task program (sc_seed,
// syscall_armed.go): timed from the arming, marked as lower bounds
// (FromArming, Before), their sleeps summed as if their entry had been
// seen. Those it cannot seed, and on the other kernels the threads /proc
// shows inside a storage call on a block device, are counted ("not
// timed") and, while they stay asleep in D in it, reported unfinished
// from the arming (a lower bound, Before set) at checkpoints, as
// hungSince does for the calls begun before the start.
// The off-CPU probe drops the sleeps it tracked as it disarms (counted)
// and, as it arms, seeds its map of sleeps with every thread /proc shows
// in D: their spans start at the arming (a lower bound) and keep their
// kernel stack and waker.

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
)

// armable is a running probe with programs on the hot hooks.
type armable interface {
	// armRank orders the probes, both ways: the leader of the chains
	// first (its followers in its slots run no more once it is
	// detached, and their state can be cleaned; they run again once it
	// is attached, and the off-CPU probe's seeding needs its programs
	// running).
	armRank() int
	// disarm takes its programs off the hot hooks; arm puts them back.
	// Both do nothing when already done, or once the probe has stopped.
	disarm() error
	arm() error
}

// armState is a probe's armed-mode bookkeeping; mu serializes arm, disarm
// and the detach at Stop.
type armState struct {
	mu      sync.Mutex
	stopped bool
	// since is when the running disarmed span began (zero: armed; under
	// tmu, which a reader takes alone: a checkpoint may hold other locks
	// of the probe that arm takes under mu). How long the probe was
	// disarmed is the caller's (trouble.Coverage), not the probe's.
	tmu   sync.Mutex
	since time.Time
	// past are the skipped runs of its followers' earlier stays on the
	// chains (hookchain.go, rqchain.go), by program.
	past map[*ebpf.Program]uint64
}

// disarmedNow says the probe is disarmed.
func (a *armState) disarmedNow() bool {
	a.tmu.Lock()
	defer a.tmu.Unlock()
	return !a.since.IsZero()
}

// markDisarmed and markArmed note a change of state (under mu).
func (a *armState) markDisarmed() {
	a.tmu.Lock()
	defer a.tmu.Unlock()
	a.since = time.Now()
}

func (a *armState) markArmed() {
	a.tmu.Lock()
	defer a.tmu.Unlock()
	a.since = time.Time{}
}

// keepSkips adds a follower's skipped runs of a stay that ended (under
// mu).
func (a *armState) keepSkips(p *ebpf.Program, n uint64) {
	if p == nil || n == 0 {
		return
	}
	if a.past == nil {
		a.past = map[*ebpf.Program]uint64{}
	}
	a.past[p] += n
}

// withPast adds the earlier stays' skips to m (under mu): a program not
// in m counts its own and those.
func (a *armState) withPast(m map[*ebpf.Program]uint64) map[*ebpf.Program]uint64 {
	if len(a.past) == 0 {
		return m
	}
	if m == nil {
		m = map[*ebpf.Program]uint64{}
	}
	for p, n := range a.past {
		if v, ok := m[p]; ok {
			m[p] = v + n
		} else {
			m[p] = skipsOf(p) + n
		}
	}
	return m
}

// Disarm takes every program of the group's probes off sys_enter,
// sys_exit, sched_switch and sched_waking (armed mode, experimental),
// keeping them loaded with their maps; Arm puts them back. Both may be
// called any number of times, at the same time as Checkpoint, Prune and
// Stop; calls of the two are serialized. A probe started later is armed.
func (g *Group) Disarm() error { return g.setArmed(false) }

// Arm puts back on the hot hooks what Disarm took off (see Disarm).
func (g *Group) Arm() error { return g.setArmed(true) }

// Gated names the running probes with programs on the hot hooks: those
// Disarm takes off.
func (g *Group) Gated() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for _, s := range g.running {
		if _, ok := s.r.(armable); !ok {
			continue
		}
		// A probe may have programs there only in some runs (exec's
		// failed-exec ones).
		if m, ok := s.r.(interface{ gates() bool }); ok && !m.gates() {
			continue
		}
		out = append(out, s.name)
	}
	return out
}

// Armed says whether the group's programs are on the hot hooks (true
// unless Disarm was called last).
func (g *Group) Armed() bool {
	g.armMu.Lock()
	defer g.armMu.Unlock()
	return !g.disarmed
}

func (g *Group) setArmed(on bool) error {
	g.armMu.Lock()
	defer g.armMu.Unlock()
	g.mu.Lock()
	var ps []armable
	names := map[armable]string{}
	for _, s := range g.running {
		if a, ok := s.r.(armable); ok {
			ps = append(ps, a)
			names[a] = s.name
		}
	}
	g.mu.Unlock()
	g.disarmed = !on
	// By rank: the probes of one rank take different chains (sysfs and
	// offcpu), so they move at once.
	ranks := map[int][]armable{}
	var order []int
	for _, p := range ps {
		if _, ok := ranks[p.armRank()]; !ok {
			order = append(order, p.armRank())
		}
		ranks[p.armRank()] = append(ranks[p.armRank()], p)
	}
	slices.Sort(order)
	var msgs []string
	for _, rk := range order {
		group := ranks[rk]
		errs := make([]error, len(group))
		atOnce(len(group), func(i int) {
			if on {
				errs[i] = group[i].arm()
			} else {
				errs[i] = group[i].disarm()
			}
		})
		for i, err := range errs {
			if err != nil {
				msgs = append(msgs, names[group[i]]+": "+err.Error())
			}
		}
	}
	if len(msgs) > 0 {
		what := "disarming"
		if on {
			what = "arming"
		}
		return fmt.Errorf("%s the probes: %s", what, strings.Join(msgs, "; "))
	}
	return nil
}

// procThreads calls fn with the directory of every thread in procfs
// (whyslow's own left out), its process and thread ids.
func procThreads(procfs string, fn func(tdir string, tgid, tid int)) {
	procs, err := os.ReadDir(procfs)
	if err != nil {
		return
	}
	self := os.Getpid()
	for _, p := range procs {
		tgid, err := strconv.Atoi(p.Name())
		if err != nil || tgid == self {
			continue
		}
		tasks, err := os.ReadDir(filepath.Join(procfs, p.Name(), "task"))
		if err != nil {
			continue
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			fn(filepath.Join(procfs, p.Name(), "task", t.Name()), tgid, tid)
		}
	}
}
