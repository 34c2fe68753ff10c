package probes

// Probes start at once (Group.Start), so the order in which their
// programs reach a shared hook's chain (hookchain.go, rqchain.go) is a
// race. A program that comes before the one whose slot it belongs in
// takes its own way first (a link of its own, or its syscall
// tracepoints) and moves into the slot when that one comes; the move
// detaches the own way. On 6.18 each such attach or detach on
// sys_enter/sys_exit, the syscall tracepoints or sched_switch/waking
// waits for the kernel (close of a syscall tracepoint's perf event 44-52
// ms, of a tp_btf link 11-20 ms, a link's creation up to 20 ms): some
// 250 ms of whyslow's start went there. So Group.Start makes the chains
// await the probes that take a place on them (chainMember), and a
// program waits, before it joins a chain, for the members of lower rank
// still on their way: until each has joined (or failed to), or its
// probe's Start has returned. It then goes straight into its slot, or,
// when none comes, its own way, once.

import "sync"

// chainMember is a probe whose programs take a place on chains that
// programs of other probes run behind (a leader, or a member with a
// slot). Group.Start makes those chains await it.
type chainMember interface {
	// seats makes each chain the probe joins await it, at its rank.
	seats() []*seat
}

// arrivals are the members a chain awaits that have not come yet.
type arrivals struct {
	mu      sync.Mutex
	cond    *sync.Cond
	pending []*seat
}

// seat is one member a chain awaits, at its rank.
type seat struct {
	a    *arrivals
	rank int
}

// expect makes the chain await a member of rank, until it arrives or the
// seat is freed.
func (a *arrivals) expect(rank int) *seat {
	s := &seat{a: a, rank: rank}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pending = append(a.pending, s)
	return s
}

// arrive notes that a member of rank has come to the chain (joined it, or
// failed to): the chain awaits one fewer of that rank.
func (a *arrivals) arrive(rank int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.pending {
		if s.rank == rank {
			a.drop(s)
			return
		}
	}
}

// free ends the wait for s's member, come or not (its probe's Start has
// returned).
func (s *seat) free() {
	s.a.mu.Lock()
	defer s.a.mu.Unlock()
	s.a.drop(s)
}

// drop takes s out of the pending seats, if there, and wakes the waiters
// (under mu).
func (a *arrivals) drop(s *seat) {
	for i, p := range a.pending {
		if p == s {
			a.pending = append(a.pending[:i], a.pending[i+1:]...)
			if a.cond != nil {
				a.cond.Broadcast()
			}
			return
		}
	}
}

// await returns once no member of lower rank than rank is awaited.
func (a *arrivals) await(rank int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for a.awaits(rank) {
		if a.cond == nil {
			a.cond = sync.NewCond(&a.mu)
		}
		a.cond.Wait()
	}
}

// awaits says whether a member of lower rank than rank is awaited (under
// mu).
func (a *arrivals) awaits(rank int) bool {
	for _, s := range a.pending {
		if s.rank < rank {
			return true
		}
	}
	return false
}

// freeSeats frees every seat of ss.
func freeSeats(ss []*seat) {
	for _, s := range ss {
		s.free()
	}
}
