package probes

// One program of whyslow's per hook on sched_switch and sched_waking
// (sys_exit's chain, which has a third member, the exec probe's, is an
// rqChain now: rqchain.go). The syscall probe and the off-CPU probe both have a
// program there; each run of a program attached to a tracepoint costs its
// dispatch (RCU, migrate-disable, the recursion check, an indirect call,
// the statistics' clock reads when they are on) before it does anything.
// So while both run, the syscall probe's program (tp_btf) ends in a tail
// call through a one-slot program array of its own (sched_switch_next,
// sched_waking_next), and the off-CPU probe puts its
// program there instead of attaching it: the kernel dispatches one program
// per event there instead of two. Each probe keeps its own program and
// job; a hookChain only decides how the follower's program is reached:
// through the leading probe's slot while there is one, else on a link of
// its own. Every move adds the new way before it removes the old one, so
// for an instant the program runs twice on an event, which is harmless for
// the off-CPU programs (a second run of a span's end finds no entry, of a
// wake-up a waker already noted, of a sleep the same sleep).
//
// A tail-called program runs inside its caller's run: the kernel counts
// its time and its runs in the caller's statistics, and a run of the
// caller that the kernel skips (recursion_misses: a BPF program already
// running on its CPU) skips the follower too. Those skips are the
// follower's lost events as much as the caller's: skips gives them to the
// follower's loss report.

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
)

// The process's chains, one per shared hook.
var (
	chainSchedSwitch = &hookChain{hook: "sched_switch"}
	chainSchedWaking = &hookChain{hook: "sched_waking"}
)

type hookChain struct {
	hook string
	mu   sync.Mutex
	// next is the one-slot prog array of the running leader, nil when
	// none leads; leader is its program (attached), whose skipped runs
	// the follower in the slot shares.
	next   *ebpf.Map
	leader *ebpf.Program
	// follower is the program in next's slot; nil when the slot is free.
	follower *hookFollower
	// own are the followers attached on their own.
	own map[*hookFollower]bool
	// coming is the leader (rank 0) the chain awaits before a follower
	// (rank 1) joins it (chainwait.go).
	coming arrivals
	// detours counts the followers' own links undone as they moved into
	// a leader's slot (tests).
	detours int
}

// hookFollower is a program that runs on a chain's hook, in the chain or
// on a link of its own.
type hookFollower struct {
	prog  *ebpf.Program
	close func() error // its own link's, when attached on its own
	// inherited are the leader's skipped runs while the follower was in
	// its slot (ended stays), and base the leader's count when it joined
	// the slot it is in now.
	inherited, base uint64
	gone            bool
}

// follow makes prog run on every event of c's hook until leave: through
// the leader's slot when there is one free, else attached on its own by
// attach (which returns what detaches it).
func (c *hookChain) follow(prog *ebpf.Program, attach func(*ebpf.Program) (func() error, error)) (*hookFollower, error) {
	f := &hookFollower{prog: prog}
	c.coming.await(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.next != nil && c.follower == nil && c.next.Put(uint32(0), prog) == nil {
		c.join(f)
		return f, nil
	}
	cl, err := attach(prog)
	if err != nil {
		return nil, err
	}
	f.close = cl
	c.addOwn(f)
	return f, nil
}

// join makes f the follower in the slot (under mu).
func (c *hookChain) join(f *hookFollower) {
	c.follower = f
	f.base = skipsOf(c.leader)
}

// part ends f's stay in the slot (under mu): the leader's skips meanwhile
// are f's.
func (c *hookChain) part(f *hookFollower) {
	if n := skipsOf(c.leader); n > f.base {
		f.inherited += n - f.base
	}
	c.follower = nil
}

// skipsOf is p's recursion_misses (0 for none, or when its statistics
// can't be read).
func skipsOf(p *ebpf.Program) uint64 {
	if p == nil {
		return 0
	}
	st, err := p.Stats()
	if err != nil {
		return 0
	}
	return st.RecursionMisses
}

func (c *hookChain) addOwn(f *hookFollower) {
	if c.own == nil {
		c.own = map[*hookFollower]bool{}
	}
	c.own[f] = true
}

// skips are the runs of f's program the kernel skipped: its own
// recursion_misses, and its leader's while it was in the leader's slot.
func (c *hookChain) skips(f *hookFollower) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := f.inherited + skipsOf(f.prog)
	if c.follower == f {
		if m := skipsOf(c.leader); m > f.base {
			n += m - f.base
		}
	}
	return n
}

// leave stops f's program running on the hook, from the slot or from its
// own link.
func (c *hookChain) leave(f *hookFollower) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.gone {
		return nil
	}
	f.gone = true
	if c.follower == f {
		c.part(f)
		// Out of the array, the program is no longer held by it.
		if err := c.next.Delete(uint32(0)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("leaving %s's chain: %w", c.hook, err)
		}
		return nil
	}
	delete(c.own, f)
	if f.close != nil {
		cl := f.close
		f.close = nil
		return cl()
	}
	return nil
}

// lead makes next (the slot of leader, a program already attached to the
// hook that tail-calls through it) the chain, and moves a follower
// attached on its own into it; it returns what undoes that, to be called
// before leader is detached. A second leader in the process leads nothing.
func (c *hookChain) lead(leader *ebpf.Program, next *ebpf.Map) (stop func() error) {
	defer c.coming.arrive(0)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.next != nil || next == nil || leader == nil {
		return func() error { return nil }
	}
	c.next, c.leader = next, leader
	for f := range c.own { // any one: the slot holds one
		// Into the slot first, then off its own link: never missing.
		if next.Put(uint32(0), f.prog) == nil {
			delete(c.own, f)
			c.join(f)
			if f.close != nil {
				c.detours++
				f.close()
				f.close = nil
			}
		}
		break
	}
	return func() error { return c.unlead(next) }
}

// unlead ends the chain of next: its follower gets a link of its own
// before it leaves the slot.
func (c *hookChain) unlead(next *ebpf.Map) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.next != next {
		return nil
	}
	var err error
	if f := c.follower; f != nil {
		cl, aerr := attachOwn(f.prog)
		if aerr != nil {
			err = fmt.Errorf("attaching %s on its own, as the leader on %s stops: %w", progName(f.prog), c.hook, aerr)
		} else {
			f.close = cl
			c.addOwn(f)
		}
		c.part(f)
		if derr := next.Delete(uint32(0)); derr != nil && !errors.Is(derr, ebpf.ErrKeyNotExist) && err == nil {
			err = fmt.Errorf("emptying %s's chain: %w", c.hook, derr)
		}
	}
	c.next, c.leader = nil, nil
	return err
}

// attachOwn attaches a tp_btf follower on a link of its own.
func attachOwn(p *ebpf.Program) (func() error, error) {
	ls, err := attachTPBTF(p)
	if err != nil {
		return nil, err
	}
	return ls[0].Close, nil
}

// chained reports whether f's program runs through a leader's slot now.
func (c *hookChain) chained(f *hookFollower) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.follower == f
}
