package probes

// One program of whyslow's per I/O on block_rq_complete. Three probes have
// a program there: submit (sub_rq_done, the I/O accounting's end of a
// request), service (svc_rq_complete, the end of a service span) and
// devfault (df_rq_complete, a failed request). Each run of a program
// attached to a tracepoint costs its dispatch (RCU, migrate-disable, the
// recursion check, an indirect call, the statistics' clock reads when they
// are on) before it does anything. So the programs of the probes that run
// form a chain in a fixed order, submit, service, devfault: the first is
// attached, and each ends in a tail call through a one-slot program array
// of its own (rq_complete_next; devfault's has none, it is always last)
// that holds the next one. A probe that is off or failed is not in the
// chain; one that stops leaves it, and the chain closes over the gap.
//
// Every change adds the new way before it removes the old one (a program
// that becomes the first is attached before its caller's link closes; a
// slot is refilled, which replaces its program at once), so for an
// instant a program may run twice on an event: harmless for sub_rq_done (a
// second end finds no entry), and for svc_rq_complete and df_rq_complete
// one request's sample or fault counted twice at a probe's start or stop,
// never one lost.
//
// Where the kernel refuses a program in a slot (a prog array takes only
// programs compatible with its first user: same type, same attach type
// and, on newer kernels, the same attach point), the program is attached
// on its own instead and the refusal kept (rqChain.refused).
//
// A tail-called program runs inside its caller's run: the kernel counts
// its time and its runs in the first program's statistics, and a run of
// the first that the kernel skips (recursion_misses) skips the whole
// chain. Those skips are every chained program's lost events: skips gives
// each its share for the time it was chained.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Ranks on block_rq_complete: the order of the chain.
const (
	rankSubmit = iota
	rankService
	rankDevfault
)

// Ranks on sys_enter and sys_exit (syschain: the syscall probe's
// tp_btf rung first, then the sysfs probe's on sys_enter or the off-CPU
// probe's on sys_exit, the exec probe's last).
const (
	rankSyscall = iota
	rankSysfsOrOffCPU
	rankExecCall
)

// The process's chains: on block_rq_complete, and on sys_enter and
// sys_exit, where the syscall probe's tp_btf program (fixed: attached by
// its probe) leads, the sysfs and exec probes' programs run from a slot
// instead of their syscall tracepoints (their fallback), and the off-CPU
// probe's instead of its own link.
var (
	chainRqComplete = &rqChain{hook: "block_rq_complete", attach: attachOwn}
	chainSysEnter   = &rqChain{hook: "sys_enter", attach: attachOwn}
	chainSysExit    = &rqChain{hook: "sys_exit", attach: attachOwn}
)

// rqChain runs the programs of several probes on one hook, in rank order,
// with one dispatch by the kernel.
type rqChain struct {
	hook   string
	attach func(*ebpf.Program) (func() error, error)
	mu     sync.Mutex
	// members are the programs on the hook, by rank.
	members []*rqMember
	// refused is the last error of the kernel refusing a program in a
	// slot (nil when none was refused).
	refused error
	// coming are the members the chain awaits before one of higher rank
	// joins it (chainwait.go).
	coming arrivals
	// detours counts the own ways undone because their program moved
	// into a slot (each a detach the kernel may take a while over; tests).
	detours int
}

// rqMember is one probe's program on the chain's hook.
type rqMember struct {
	rank int
	prog *ebpf.Program
	// next is the program's one-slot prog array, nil when it has none;
	// holds the program in it (nil: empty); noSlot is set when the kernel
	// refused a program in it.
	next   *ebpf.Map
	holds  *rqMember
	noSlot bool
	// close detaches the program's own link, nil when it has none (it
	// runs from its predecessor's slot).
	close func() error
	// head is the attached program that runs this one (itself when
	// attached); its skips since base are this one's while it is not
	// itself. inherited are those of earlier heads.
	head            *rqMember
	inherited, base uint64
	gone            bool
	// fixed: the program is attached to the hook by its probe, which
	// leaves the chain before it detaches it (the first of a chain).
	fixed bool
	// own, when set, is how the program's probe sees its events while no
	// program on the hook runs it: another attachment (syscall
	// tracepoints), not on the hook, so its slot then runs nothing and
	// is offered to none. It returns what undoes it.
	own func() (func() error, error)
	// onHook: the program runs on the hook (attached there, fixed, or
	// in a slot of one that does).
	onHook bool
}

// joinWith is join for a member attached by its probe (fixed), or with a
// way of its own off the hook (own; already made when close is not nil,
// close undoes it; else made only if the program finds no slot). It
// first waits for the members of lower rank the chain awaits
// (chainwait.go).
func (c *rqChain) joinWith(rank int, prog *ebpf.Program, next *ebpf.Map, fixed bool, own func() (func() error, error), close func() error) (*rqMember, error) {
	m := &rqMember{rank: rank, prog: prog, next: next, fixed: fixed, own: own, close: close}
	c.coming.await(rank)
	defer c.coming.arrive(rank)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.members = append(c.members, m)
	sort.SliceStable(c.members, func(i, j int) bool { return c.members[i].rank < c.members[j].rank })
	if err := c.settle(); err != nil {
		c.remove(m)
		err2 := c.settle()
		if fixed {
			m.close = nil // the probe's to detach
		}
		c.detach(m)
		return nil, errors.Join(err, err2)
	}
	return m, nil
}

// inSlot reports whether m's program runs from another's slot now.
func (c *rqChain) inSlot(m *rqMember) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return m != nil && m.head != nil && m.head != m
}

// join puts prog (rank, with its slot next or nil) on the chain's hook;
// it returns the member to leave with.
func (c *rqChain) join(rank int, prog *ebpf.Program, next *ebpf.Map) (*rqMember, error) {
	return c.joinWith(rank, prog, next, false, nil, nil)
}

// leave takes m's program off the hook: its successor moves to its
// predecessor's slot, or to a link of its own.
func (c *rqChain) leave(m *rqMember) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if m == nil || m.gone {
		return nil
	}
	m.gone = true
	c.remove(m)
	err := c.settle()
	return errors.Join(err, c.detach(m))
}

// remove takes m out of the members (under mu).
func (c *rqChain) remove(m *rqMember) {
	for i, x := range c.members {
		if x == m {
			c.members = append(c.members[:i], c.members[i+1:]...)
			return
		}
	}
}

// detach ends every way m's program was reached, once m is out of the
// members and settled: its own link, its slot's program, its skips.
func (c *rqChain) detach(m *rqMember) error {
	var err error
	m.settleHead(nil)
	if m.close != nil {
		err = m.close()
		m.close = nil
	}
	if m.holds != nil {
		if derr := m.next.Delete(uint32(0)); derr != nil && !errors.Is(derr, ebpf.ErrKeyNotExist) {
			err = errors.Join(err, fmt.Errorf("emptying %s's slot on %s: %w", progName(m.prog), c.hook, derr))
		}
		m.holds = nil
	}
	return err
}

// settle makes the members' ways what their order says (under mu): the
// first attached, each next in its predecessor's slot (attached when the
// predecessor has no slot, or the kernel refused it there). New ways
// first, old ones after.
func (c *rqChain) settle() error {
	var errs []error
	via := make(map[*rqMember]*rqMember, len(c.members))
	var prev *rqMember
	for _, m := range c.members {
		var p *rqMember
		if prev != nil && prev.onHook && prev.next != nil && !prev.noSlot {
			p = prev
			if p.holds != m {
				if err := p.next.Put(uint32(0), m.prog); err != nil {
					p.noSlot = true
					c.refused = fmt.Errorf("%s in %s's slot: %w", progName(m.prog), progName(p.prog), err)
					p = nil
				} else {
					p.holds = m
				}
			}
		}
		m.onHook = p != nil || m.fixed || m.own == nil
		if p == nil && m.close == nil && !m.fixed {
			attach, what := func() (func() error, error) { return c.attach(m.prog) }, "attaching %s to %s: %w"
			if m.own != nil {
				attach, what = m.own, "attaching %s's way off %s: %w"
			}
			cl, err := attach()
			if err != nil {
				errs = append(errs, fmt.Errorf(what, progName(m.prog), c.hook, err))
				m.onHook = false
			} else {
				m.close = cl
			}
		}
		via[m] = p
		prev = m
	}
	// The old ways: own links of programs now in a slot, slots whose
	// program is now reached otherwise (or gone).
	for _, m := range c.members {
		if via[m] != nil && m.close != nil {
			c.detours++
			if err := m.close(); err != nil {
				errs = append(errs, err)
			}
			m.close = nil
		}
	}
	for _, m := range c.members {
		if m.holds != nil && via[m.holds] != m {
			if err := m.next.Delete(uint32(0)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("emptying %s's slot on %s: %w", progName(m.prog), c.hook, err))
			}
			m.holds = nil
		}
	}
	// Whose skipped runs are whose.
	var head *rqMember
	for _, m := range c.members {
		if via[m] == nil {
			head = m
			if !m.onHook {
				head = nil // off the hook: none runs it here
			}
		}
		m.settleHead(head)
	}
	return errors.Join(errs...)
}

// settleHead makes h the program that runs m (nil: none), keeping the
// skipped runs of its head until now.
func (m *rqMember) settleHead(h *rqMember) {
	if m.head == h {
		return
	}
	if m.head != nil && m.head != m {
		if n := skipsOf(m.head.prog); n > m.base {
			m.inherited += n - m.base
		}
	}
	m.head = h
	if h != nil && h != m {
		m.base = skipsOf(h.prog)
	}
}

// skips are the runs of m's program the kernel skipped: its own
// recursion_misses, and its heads' while it ran from their chain.
func (c *rqChain) skips(m *rqMember) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := m.inherited + skipsOf(m.prog)
	if h := m.head; h != nil && h != m {
		if k := skipsOf(h.prog); k > m.base {
			n += k - m.base
		}
	}
	return n
}

// order lists the chain's programs in the order they run on an event, as
// name, with "|" before one attached on its own (or by its probe), ">"
// before one in its predecessor's slot, "~" before one off the hook (its
// own way, such as syscall tracepoints) (tests, logs).
func (c *rqChain) order() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := ""
	for _, m := range c.members {
		switch {
		case m.head == m:
			s += "|"
		case m.head == nil:
			s += "~" // off the hook, on its own way (or nowhere)
		default:
			s += ">"
		}
		s += progName(m.prog)
	}
	return s
}

// syscallTP is a syscalls:* tracepoint a program attaches to as its way
// off a chain's hook; one not required may be missing from the kernel.
type syscallTP struct {
	prog     *ebpf.Program
	name     string
	required bool
}

// attachSyscallTPs makes the own way of a chain member: attaching its
// programs to their syscall tracepoints (again, each time the chain lets
// it go), all or none, and what detaches them.
func attachSyscallTPs(tps ...syscallTP) func() (func() error, error) {
	return func() (func() error, error) {
		var links []link.Link
		for _, tp := range tps {
			l, err := link.Tracepoint("syscalls", tp.name, tp.prog, nil)
			if err != nil {
				if !tp.required && errors.Is(err, os.ErrNotExist) {
					continue
				}
				closeAll(links)
				return nil, fmt.Errorf("attaching tracepoint syscalls/%s: %w", tp.name, err)
			}
			links = append(links, l)
		}
		return func() error { closeAll(links); return nil }, nil
	}
}

// tracefsRoots are where cilium/ebpf looks for tracefs (ensureTracefs
// mounts it at the first when at neither).
var tracefsRoots = []string{tracefsDir, debugTracefsDir}

// requireSyscallTPs checks, without attaching anything, that the kernel
// has the required tracepoints of tps: a program that joins a chain with
// them as its own way may go straight into a slot, and find out only
// when the chain lets it go that it has no way of its own.
func requireSyscallTPs(tps ...syscallTP) error {
	for _, tp := range tps {
		if !tp.required {
			continue
		}
		found := false
		for _, root := range tracefsRoots {
			if _, err := os.Stat(filepath.Join(root, "events", "syscalls", tp.name, "id")); err == nil {
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("attaching tracepoint syscalls/%s: %w", tp.name, os.ErrNotExist)
		}
	}
	return nil
}

// rqClock is the block probes' per-CPU word (struct rq_clock,
// bpf/include/devhist.h): the submit and service probes get the same map,
// so that the first program of block_rq_complete's chain reads the clock
// for the others. Made at the first start of either, closed when the last
// of them has stopped (users), so that a run leaves no BPF object open.
var rqClock struct {
	mu    sync.Mutex
	m     *ebpf.Map
	users int
	// byHelper is set once a kernel's verifier refused ptr_bits' store
	// of a pointer into the map (ptr_by_map): later loads start with the
	// helper.
	byHelper bool
}

// shareRQClock puts the process's rq_clock into opts for spec (made from
// spec's at the first call). Each call that returns nil takes a use,
// which releaseRQClock gives back.
func shareRQClock(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions) error {
	ms, ok := spec.Maps["rq_clock"]
	if !ok {
		return errors.New("rq_clock: no such map in the object")
	}
	rqClock.mu.Lock()
	defer rqClock.mu.Unlock()
	if rqClock.m == nil {
		m, err := ebpf.NewMap(ms)
		if err != nil {
			return fmt.Errorf("creating rq_clock: %w", err)
		}
		rqClock.m = m
	}
	// A chain of the submit and devfault probes alone leaves each CPU's
	// last request in its word (the devfault program does not empty
	// it): emptied here, so that a service program that starts on a link
	// of its own never takes such a time for a later completion of the
	// same request. (Where the service program runs behind the submit
	// probe's, the word is written on every completion before it runs.)
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("emptying rq_clock: %w", err)
	}
	if err := rqClock.m.Put(uint32(0), make([]submitRqClock, ncpu)); err != nil {
		return fmt.Errorf("emptying rq_clock: %w", err)
	}
	if opts.MapReplacements == nil {
		opts.MapReplacements = map[string]*ebpf.Map{}
	}
	opts.MapReplacements["rq_clock"] = rqClock.m
	rqClock.users++
	return nil
}

// releaseRQClock gives back a use of rq_clock that shareRQClock took,
// and closes the map with the last (a loaded collection holds a clone of
// its own).
func releaseRQClock() {
	rqClock.mu.Lock()
	defer rqClock.mu.Unlock()
	if rqClock.users == 0 {
		return
	}
	rqClock.users--
	if rqClock.users == 0 && rqClock.m != nil {
		rqClock.m.Close()
		rqClock.m = nil
	}
}

// loadPtrBits loads spec with load, ptr_bits by the map first
// (ptr_by_map), and again with the helper when the kernel's verifier
// refuses that; the refusal is remembered for later loads.
func loadPtrBits(spec *ebpf.CollectionSpec, load func() error) error {
	v, ok := spec.Variables["ptr_by_map"]
	if !ok {
		return errors.New("ptr_by_map: no such variable in the object")
	}
	rqClock.mu.Lock()
	byHelper := rqClock.byHelper
	rqClock.mu.Unlock()
	if !byHelper {
		err := load()
		var ve *ebpf.VerifierError
		if !errors.As(err, &ve) {
			return err
		}
	}
	if err := v.Set(uint8(0)); err != nil {
		return fmt.Errorf("setting ptr_by_map: %w", err)
	}
	if err := load(); err != nil {
		return err
	}
	rqClock.mu.Lock()
	rqClock.byHelper = true
	rqClock.mu.Unlock()
	return nil
}
