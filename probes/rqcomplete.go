package probes

// One program of whyslow's per I/O on block_rq_complete. The service probe
// ends its span there (svc_rq_complete) and the submit probe its request's
// I/O accounting (sub_rq_done); each run of a program attached to a
// tracepoint costs its dispatch before it does anything, so while both
// probes run, service's program tail-calls submit's (its prog array
// rq_complete_next) instead of the kernel dispatching both. Each probe
// keeps its own program and job; rqComplete only decides how submit's is
// reached: through service's chain while one is there, else attached on
// its own. Swaps run the program in both ways for an instant, which is
// harmless: submit's end of a request frees its entry, so a second run finds
// none.

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// rqComplete is the process's chain on block_rq_complete.
var rqComplete rqChain

type rqChain struct {
	mu sync.Mutex
	// next is the prog array of the running service probe that leads the
	// chain, nil when none does.
	next *ebpf.Map
	// follower is the submit program reached through next; nil when the
	// slot is free.
	follower *rqFollower
	// own are the followers attached on their own.
	own map[*rqFollower]bool
}

// rqFollower is a program that runs on block_rq_complete, in the chain or
// on its own link.
type rqFollower struct {
	prog *ebpf.Program
	link link.Link // when attached on its own
}

// follow makes prog run on every block_rq_complete until the returned
// leave is called: through the leading service probe's chain when there
// is one with room, else attached on its own.
func (c *rqChain) follow(prog *ebpf.Program) (leave func() error, err error) {
	f := &rqFollower{prog: prog}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.next != nil && c.follower == nil && c.next.Put(uint32(0), prog) == nil {
		c.follower = f
	} else if err := f.attach(); err != nil {
		return nil, err
	} else {
		c.addOwn(f)
	}
	return func() error { return c.leave(f) }, nil
}

func (f *rqFollower) attach() error {
	ls, err := attachTPBTF(f.prog)
	if err != nil {
		return err
	}
	f.link = ls[0]
	return nil
}

func (c *rqChain) addOwn(f *rqFollower) {
	if c.own == nil {
		c.own = map[*rqFollower]bool{}
	}
	c.own[f] = true
}

func (c *rqChain) leave(f *rqFollower) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.follower == f {
		c.follower = nil
		// Removed from the array, the program is no longer held by it.
		if err := c.next.Delete(uint32(0)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("leaving block_rq_complete's chain: %w", err)
		}
		return nil
	}
	delete(c.own, f)
	if f.link != nil {
		return f.link.Close()
	}
	return nil
}

// lead makes next (a service probe's prog array, its program already
// attached) the chain, and moves a follower attached on its own into it;
// it returns what undoes that, called before the service program is
// detached. A second service probe in the process leads nothing.
func (c *rqChain) lead(next *ebpf.Map) (stop func() error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.next != nil {
		return func() error { return nil }
	}
	c.next = next
	for f := range c.own {
		// Into the chain first, then off its own link: never missing.
		if next.Put(uint32(0), f.prog) != nil {
			break
		}
		delete(c.own, f)
		c.follower = f
		if f.link != nil {
			f.link.Close()
			f.link = nil
		}
		break
	}
	return func() error { return c.unlead(next) }
}

// unlead ends the chain of next: its follower gets a link of its own
// before it leaves the array.
func (c *rqChain) unlead(next *ebpf.Map) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.next != next {
		return nil
	}
	var err error
	if f := c.follower; f != nil {
		if err = f.attach(); err != nil {
			err = fmt.Errorf("attaching %s on its own, as the service probe stops: %w", progName(f.prog), err)
		} else {
			c.addOwn(f)
		}
		c.follower = nil
		if derr := next.Delete(uint32(0)); derr != nil && !errors.Is(derr, ebpf.ErrKeyNotExist) && err == nil {
			err = fmt.Errorf("emptying block_rq_complete's chain: %w", derr)
		}
	}
	c.next = nil
	return err
}
