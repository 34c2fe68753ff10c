package probes

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/symbolize"
)

// offcpuProbe records spans tasks spend blocked in uninterruptible sleep
// (D state), with the kernel and user stacks they blocked in and the task
// that woke them: the wait for a frozen queue shows up here as
// __bio_queue_enter, and the freezer as blk_mq_freeze_queue_wait.
//
// Cost: sched_switch runs on every context switch. Its fast path (prev not
// in a voluntary D sleep, next not tracked) is a flag test and one hash
// lookup. Stacks are walked only for the spans that end up at least
// MinLatency long (see bpf/offcpu.bpf.c): the kernel stack when the task
// comes back, on the sleeping task; the user stack in the task's own
// context, when the system call it slept in returns (sys_exit, which runs
// on every system call but does nothing while no span waits) or at its next
// switch-out. A short D sleep costs a one-frame user walk and a map update.
//
// Records carry both stacks inline (up to 64 kernel and 32 user frames);
// symbolized kernel stacks are cached by their addresses. Maps: about 2.1
// MB of tracked sleeps, 1.3 MB of spans waiting for their user stacks and a
// 512 KiB ring buffer.
type offcpuProbe struct{}

func init() { register(offcpuProbe{}) }

// Bound of the cache of symbolized kernel stacks, by their addresses.
const offcpuMaxCachedStacks = 4096

// How each counter of the `stack_losses` array is reported, at its value
// of enum stack_loss (bpf/offcpu.bpf.c).
var offcpuStackLossWhat = [offcpuStackLossSTACK_LOSS_KINDS]string{
	offcpuStackLossSTACK_LOSS_KERNEL: "kernel stack lost",
	offcpuStackLossSTACK_LOSS_USER:   "user stack lost",
	// The kernel may refuse to walk a task's stack (bpf_get_task_stack
	// fails): a task whose stack it lets no one read, one whose stack is
	// gone. Expected, like a user stack that cannot be walked; see
	// bpf/offcpu.bpf.c.
	offcpuStackLossSTACK_LOSS_KERNEL_REFUSED: "kernel stack refused",
	// A span whose wake-up was not seen: sent without its waker (rare,
	// see bpf/offcpu.bpf.c).
	offcpuStackLossSTACK_LOSS_WAKER: "waker lost",
}

// Decl implements Probe.
func (offcpuProbe) Decl() Decl {
	return Decl{
		Name:       event.ProbeOffCPU,
		Mechanisms: []Rung{{Mech: event.MechTPBTF}},
		Describe:   "time tasks spend blocked in uninterruptible sleep (D state), with kernel and user stacks and the waker",
		Attach:     "tp_btf `sched_switch` + `sched_waking` + `sys_exit`",
		Records:    "spans blocked in D state above `--min-latency`, with kernel and user stacks and the waker; classified by frames: queue enter (`__bio_queue_enter`), queue freeze (`blk_mq_freeze_queue_wait`), tag wait, I/O wait. Stacks are walked only for those spans: the kernel stack when the task comes back, the user stack when its system call returns",
	}
}

// seats implements chainMember: the exec probe's program on sys_exit
// runs from its program's slot there.
func (offcpuProbe) seats() []*seat {
	return []*seat{chainSysExit.coming.expect(rankSysfsOrOffCPU)}
}

func (p offcpuProbe) Start(cfg Config, sink Sink) (Running, event.ProbeStatus) {
	r, err := startOffcpu(cfg, sink)
	if err != nil {
		return nil, unavailableStatus(p.Decl().Name, err)
	}
	st := p.Decl().started()
	if r.ksymsErr != nil {
		// The spans are still right; kernel frames carry addresses only.
		st.Reason = "kernel stacks not symbolized: " + r.ksymsErr.Error()
	}
	return r, st
}

type offcpuRunning struct {
	sink   Sink
	procfs string
	objs   offcpuObjects
	links  []link.Link
	// follows are its programs on the hooks it shares with the syscall
	// probe, each in that probe's chain or on a link of its own
	// (hookchain.go).
	follows []offcpuFollow
	// sysExit is offcpu_sys_exit on sys_exit's chain (rqchain.go).
	sysExit *rqMember
	// armst is its armed-mode state (arm.go, offcpu_armed.go): follows
	// and sysExit change under its mu; armed are its counts.
	armst armState
	armed offcpuArmed
	// left: disarm took its programs off the chains (arm puts them back).
	left bool
	ring
	ksyms    *symbolize.Kernel // set before ksymsReady is closed
	ksymsErr error
	// ksymsReady is closed once kallsyms is read (or failed).
	ksymsReady chan struct{}
	// schedText are the kernel's .sched.text and .lock.text, [lo, hi):
	// the scheduler's frames the program puts back in front of a stack.
	schedText [][2]uint64
	users     *symbolize.UserCache

	// Used by the processor goroutine only: symbolized kernel stacks by
	// their addresses (they come from a few hundred code paths and repeat).
	// The frames are shared by the events: nothing downstream changes them.
	kstacks *stackCache

	// The backlog between the reader and the processor (see enqueue).
	qmu         sync.Mutex
	qcond       *sync.Cond
	queue       []offcpuOffcpuEvent
	qclosed     bool
	backlogFull uint64 // spans dropped: backlog full (reader goroutine)
	procDone    chan struct{}
	// unfinished counts the spans still waiting for their user stack when
	// the probe stopped (sent without one).
	unfinished uint64

	stopOnce sync.Once
	stopErr  error
}

func startOffcpu(cfg Config, sink Sink) (_ *offcpuRunning, err error) {
	kernel, err := kernelSpec(cfg)
	if err != nil {
		return nil, err
	}
	n, err := offcpuSwitchArgs(kernel)
	if err != nil {
		return nil, err
	}
	var hasState uint8
	if n >= 4 { // preempt, prev, next, prev_state
		hasState = 1
	}
	procfs := cfg.ProcFS
	if procfs == "" {
		procfs = "/proc"
	}
	r := &offcpuRunning{
		sink:    sink,
		procfs:  procfs,
		users:   symbolize.NewUserCache(procfs, 0, 0),
		kstacks: newStackCache(offcpuMaxCachedStacks),
	}
	// kallsyms is read in the background once every probe has started
	// (the programs do not need it, and its parsing would take the CPU
	// from their verification): the reader waits for it before it
	// symbolizes the first stack. Whether it will give symbols is told
	// now, from its first line.
	r.ksymsErr = symbolize.KernelAddressesVisible(procfs)
	r.ksymsReady = make(chan struct{})
	cfg.afterStart(func() {
		defer close(r.ksymsReady)
		ksyms, err := symbolize.LoadKernel(procfs)
		if err != nil {
			return
		}
		r.ksyms = ksyms
		for _, sec := range [][2]string{{"__sched_text_start", "__sched_text_end"}, {"__lock_text_start", "__lock_text_end"}} {
			lo, ok1 := ksyms.Addr(sec[0])
			hi, ok2 := ksyms.Addr(sec[1])
			if ok1 && ok2 && lo < hi {
				r.schedText = append(r.schedText, [2]uint64{lo, hi})
			}
		}
	})
	consts := spanConsts(cfg)
	consts["switch_has_state"] = hasState
	spec, err := loadSpec(loadOffcpu, consts)
	if err != nil {
		return nil, err
	}
	if err := spec.LoadAndAssign(&r.objs, collectionOptions(kernel)); err != nil {
		return nil, fmt.Errorf("loading objects: %w", err)
	}
	defer func() {
		if err != nil {
			r.leaveChains()
			closeAll(r.links)
			if r.rd != nil {
				r.rd.Close()
			}
			r.objs.Close()
		}
	}()
	if err = r.openRing(r.objs.Events); err != nil {
		return nil, fmt.Errorf("opening ring buffer: %w", err)
	}
	// The wake-up and system-call exit sides first, so every tracked sleep
	// can see its waker and every pending span its completion.
	// Each through the syscall probe's program on its hook when that
	// runs, else on a link of its own.
	// On sys_exit it is second in a chain (rqchain.go): behind the
	// syscall probe's program, before the exec probe's, which it runs
	// from its slot.
	if err = r.joinChains(); err != nil {
		return nil, err // the deferred undo leaves the chains
	}
	// The reader drains the ring buffer into the backlog at once; the
	// processor symbolizes from it once kallsyms is read, so that the ring
	// does not fill while kallsyms loads.
	r.qcond = sync.NewCond(&r.qmu)
	r.procDone = make(chan struct{})
	go r.process()
	r.readAll(r.sink, event.ProbeOffCPU, r.enqueue)
	return r, nil
}

// offcpuMaxBacklog bounds the spans read but not yet symbolized (about
// 850 bytes each); beyond, spans are dropped and counted.
const offcpuMaxBacklog = 16384

// enqueue decodes a record into the backlog (reader goroutine).
func (r *offcpuRunning) enqueue(raw []byte) {
	var e offcpuOffcpuEvent
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
		r.decode++
		return
	}
	r.qmu.Lock()
	if len(r.queue) >= offcpuMaxBacklog {
		r.backlogFull++
	} else {
		r.queue = append(r.queue, e)
	}
	r.qmu.Unlock()
	r.qcond.Signal()
}

// process symbolizes and delivers the backlog, once kallsyms is read, until
// the reader is done and the backlog empty.
func (r *offcpuRunning) process() {
	defer close(r.procDone)
	<-r.ksymsReady
	for {
		r.qmu.Lock()
		for len(r.queue) == 0 && !r.qclosed {
			r.qcond.Wait()
		}
		batch := r.queue
		r.queue = nil
		closed := r.qclosed
		r.qmu.Unlock()
		for i := range batch {
			r.deliver(&batch[i])
		}
		if closed && len(batch) == 0 {
			return
		}
	}
}

// offcpuSwitchArgs counts sched_switch's arguments; tests replace it to
// force the path of kernels before 5.18, where prev_state is read from the
// task.
var offcpuSwitchArgs = func(kernel *btf.Spec) (int, error) { return tpParamCount(kernel, "sched_switch") }

func (r *offcpuRunning) deliver(e *offcpuOffcpuEvent) {
	ev := event.OffCPU{
		Start:       event.Mono(e.StartNs),
		Duration:    time.Duration(e.DurationNs),
		Task:        event.Task{Pid: e.Pid, Tgid: e.Tgid, Comm: cString(e.Comm[:])},
		KernelStack: r.kernelStack(r.schedFrames(offcpuKernelFrames(e), int(e.KstackPrefix))),
		UserStack:   r.userStack(e.Tgid, offcpuUserFrames(e)),
	}
	if w := &e.Waker; w.Comm[0] != 0 {
		ev.Waker = event.Task{Pid: w.Pid, Tgid: w.Tgid, Comm: cString(w.Comm[:])}
	}
	r.sink.Event(ev)
}

// schedFrames keeps, of the prefix frames the program put in front of a
// walked stack (see bpf/offcpu.bpf.c), the first (the exact return address
// into __schedule) and those in the scheduler's sections.
func (r *offcpuRunning) schedFrames(addrs []uint64, prefix int) []uint64 {
	<-r.ksymsReady
	if prefix <= 1 || prefix > len(addrs) {
		return addrs
	}
	out := append(make([]uint64, 0, len(addrs)), addrs[0])
	for _, a := range addrs[1:prefix] {
		for _, sec := range r.schedText {
			if a >= sec[0] && a < sec[1] {
				out = append(out, a)
				break
			}
		}
	}
	return append(out, addrs[prefix:]...)
}

// kernelStack symbolizes a kernel stack, innermost first.
func (r *offcpuRunning) kernelStack(addrs []uint64) []event.Frame {
	if len(addrs) == 0 {
		return nil
	}
	return r.kstacks.kernel(r.ksyms, addrs)
}

// offcpuKernelFrames returns the kernel frames carried in a record,
// innermost first: kstack_len of them, up to the first zero address.
func offcpuKernelFrames(e *offcpuOffcpuEvent) []uint64 {
	n := min(int(e.KstackLen), len(e.Kstack))
	for i, a := range e.Kstack[:n] {
		if a == 0 {
			n = i
			break
		}
	}
	return e.Kstack[:n]
}

// offcpuUserFrames returns the user frames carried in a record, innermost
// first: ustack_len of them, up to the first zero address.
func offcpuUserFrames(e *offcpuOffcpuEvent) []uint64 {
	n := min(int(e.UstackLen), len(e.Ustack))
	for i, a := range e.Ustack[:n] {
		if a == 0 {
			n = i
			break
		}
	}
	return e.Ustack[:n]
}

// userStack symbolizes user frames in process tgid, now, while the process
// is likely still there.
func (r *offcpuRunning) userStack(tgid uint32, addrs []uint64) []event.Frame {
	if len(addrs) == 0 {
		return nil
	}
	fr, err := r.users.Frames(tgid, addrs)
	if err != nil {
		return fr // the process is gone: addresses only
	}
	return trimUserGarbage(fr)
}

// trimTracingFrames drops the innermost frames that belong to the tracing
// machinery (the BPF program, bpf_trace_run, the tracepoint's dispatch), so
// a stack starts in the scheduler. A stack walked on a sleeping task has
// none; one walked in the running task's context (the freeze and syscall
// probes') has, as its leading frames: the program itself (once or twice,
// under whatever name kallsyms gives a JIT image it did not list), then the
// dispatch. Only that leading run is dropped.
// Deeper in a stack, a frame of a BPF trampoline created after kallsyms was
// read (an fentry/fexit program's, on a function the task slept under)
// resolves to the nearest symbol, on 6.x often a bpf_prog_* one of the
// same pages: dropping up to it lost the frames from __schedule to the
// traced function (on 6.12, every stack below whyslow's own fexit on
// __submit_bio started at __submit_bio+5).
func trimTracingFrames(fr []event.Frame) []event.Frame {
	const (
		lead   = 3 // the program's own frames, under whatever name, before the dispatch
		window = 8 // the machinery is a few frames deep
	)
	first := -1
	for i := 0; i < len(fr) && i < lead; i++ {
		if tracingFrame(fr[i].Symbol) {
			first = i
			break
		}
	}
	if first < 0 {
		return fr
	}
	cut := first
	for i := first + 1; i < len(fr) && i < window && tracingFrame(fr[i].Symbol); i++ {
		cut = i
	}
	if cut+1 >= len(fr) {
		return fr
	}
	return fr[cut+1:]
}

// tracingFrame tells the frames of the tracing machinery by name.
func tracingFrame(s string) bool {
	return strings.HasPrefix(s, "bpf_trace_run") || strings.HasPrefix(s, "__bpf_trace_") ||
		strings.HasPrefix(s, "__traceiter_") || strings.HasPrefix(s, "bpf_prog_")
}

// trimUserGarbage ends a user stack at its first frame outside every
// executable mapping: code built without frame pointers (libc) makes the
// walk read data as return addresses.
func trimUserGarbage(fr []event.Frame) []event.Frame {
	for i, f := range fr {
		if f.Module == "" {
			return fr[:i]
		}
	}
	return fr
}

// offcpuFollow is a program of the probe on a shared hook.
type offcpuFollow struct {
	c *hookChain
	f *hookFollower
}

// joinChains puts the programs on the shared hooks: the wake-up and
// system-call exit sides first, so every tracked sleep can see its waker
// and every pending span its completion. Each goes through the syscall
// probe's program on its hook when that runs, else on a link of its own.
// On sys_exit it is second in a chain (rqchain.go): behind the syscall
// probe's program, before the exec probe's, which it runs from its slot.
func (r *offcpuRunning) joinChains() (err error) {
	follow := func(c *hookChain, p *ebpf.Program) error {
		f, err := c.follow(p, attachOwn)
		if err == nil {
			r.follows = append(r.follows, offcpuFollow{c, f})
		}
		return err
	}
	if err = follow(chainSchedWaking, r.objs.OffcpuWakeup); err == nil {
		if r.sysExit, err = chainSysExit.join(rankSysfsOrOffCPU, r.objs.OffcpuSysExit, r.objs.SysExitNext); err == nil {
			err = follow(chainSchedSwitch, r.objs.OffcpuSwitch)
		}
	}
	return err
}

// leaveChains takes the programs off the shared hooks, keeping the
// skipped runs of their stays (under armst.mu, or before anything else
// can see them).
func (r *offcpuRunning) leaveChains() error {
	var errs []error
	for _, h := range r.follows {
		errs = append(errs, h.c.leave(h.f))
		r.armst.keepSkips(h.f.prog, h.f.inherited)
	}
	r.follows = nil
	if r.sysExit != nil {
		errs = append(errs, chainSysExit.leave(r.sysExit))
		r.armst.keepSkips(r.sysExit.prog, r.sysExit.inherited)
		r.sysExit = nil
	}
	return errors.Join(errs...)
}

// skips are the skipped runs of the programs on shared hooks, theirs and
// their leaders' while in a leader's slot.
func (r *offcpuRunning) skips() map[*ebpf.Program]uint64 {
	r.armst.mu.Lock()
	defer r.armst.mu.Unlock()
	return r.armst.withPast(r.chainSkips())
}

// chainSkips are skips of the current stays (under armst.mu).
func (r *offcpuRunning) chainSkips() map[*ebpf.Program]uint64 {
	m := map[*ebpf.Program]uint64{}
	for _, h := range r.follows {
		m[h.f.prog] = h.c.skips(h.f)
	}
	if r.sysExit != nil {
		m[r.sysExit.prog] = chainSysExit.skips(r.sysExit)
	}
	return m
}

// Checkpoint implements Checkpointer: the loss counts so far.
func (r *offcpuRunning) Checkpoint(sink Sink) error {
	deliverLossesWith(sink, event.ProbeOffCPU, r.objs.Losses, &r.objs, r.skips())
	deliverStackLosses(sink, r.objs.StackLosses, 0)
	r.deliverArmed(sink)
	return nil
}

// Stop detaches the programs, delivers the buffered spans and the loss
// counts, and frees everything. Spans still waiting for their user stack
// (their task has not left the call it slept in) are delivered without one.
func (r *offcpuRunning) Stop() error {
	r.stopOnce.Do(func() {
		r.drainPending(offcpuDrain)
		r.armst.mu.Lock()
		r.armst.stopped = true
		leaveErr := r.leaveChains()
		r.armst.mu.Unlock()
		closeAll(r.links)
		r.drain()
		r.qmu.Lock()
		r.qclosed = true
		r.qmu.Unlock()
		r.qcond.Broadcast()
		<-r.procDone
		if r.backlogFull > 0 {
			r.sink.Loss(event.Loss{Probe: event.ProbeOffCPU, What: "reader backlog full", Count: r.backlogFull})
		}
		var tid uint32
		var e offcpuOffcpuEvent
		it := r.objs.Pending.Iterate()
		for it.Next(&tid, &e) {
			e.UstackLen = 0
			r.deliver(&e)
			r.unfinished++
		}
		deliverLossesWith(r.sink, event.ProbeOffCPU, r.objs.Losses, &r.objs, r.skips())
		deliverStackLosses(r.sink, r.objs.StackLosses, r.unfinished)
		r.deliverArmed(r.sink)
		r.undecodable(r.sink, event.ProbeOffCPU)
		if err := r.objs.Close(); err != nil {
			r.stopErr = fmt.Errorf("closing objects: %w", err)
		} else if leaveErr != nil {
			r.stopErr = leaveErr
		}
	})
	return r.stopErr
}

// offcpuDrain is how long Stop waits for the spans waiting for their user
// stack: their tasks leave the call they slept in within microseconds.
const offcpuDrain = 100 * time.Millisecond

// drainPending stops new spans and waits, up to d, until no span waits for
// its user stack any more.
func (r *offcpuRunning) drainPending(d time.Duration) {
	if err := r.objs.Stopping.Update(uint32(0), uint32(1), ebpf.UpdateAny); err != nil {
		return
	}
	deadline := time.Now().Add(d)
	for {
		var n int64
		if err := r.objs.Npending.Lookup(uint32(0), &n); err != nil || n <= 0 || time.Now().After(deadline) {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// deliverStackLosses sends the non-zero counts of the per-CPU
// `stack_losses` array, plus unfinished user stacks (spans sent without
// one at the end); like deliverLosses, an unreadable array is itself a
// loss.
func deliverStackLosses(sink Sink, m *ebpf.Map, unfinished uint64) {
	var counts [len(offcpuStackLossWhat)]uint64
	for k := range counts {
		var perCPU []uint64
		if err := m.Lookup(uint32(k), &perCPU); err != nil {
			sink.Loss(event.Loss{Probe: event.ProbeOffCPU, What: "stack loss counters unreadable", Count: 1})
			return
		}
		for _, v := range perCPU {
			counts[k] += v
		}
	}
	counts[offcpuStackLossSTACK_LOSS_USER] += unfinished
	for k, n := range counts {
		if n > 0 {
			sink.Loss(event.Loss{Probe: event.ProbeOffCPU, What: offcpuStackLossWhat[k], Count: n})
		}
	}
}

// stackCache is a bounded map from a stack's addresses to its symbolized
// frames. When full it drops an arbitrary entry: a miss costs a
// symbolization, never correctness.
type stackCache struct {
	max int
	m   map[string][]event.Frame
}

func newStackCache(max int) *stackCache {
	return &stackCache{max: max, m: make(map[string][]event.Frame)}
}

func stackKey(addrs []uint64) string {
	return unsafe.String((*byte)(unsafe.Pointer(unsafe.SliceData(addrs))), len(addrs)*8)
}

func (c *stackCache) get(addrs []uint64) ([]event.Frame, bool) {
	fr, ok := c.m[stackKey(addrs)]
	return fr, ok
}

func (c *stackCache) put(addrs []uint64, fr []event.Frame) {
	if len(c.m) >= c.max {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[strings.Clone(stackKey(addrs))] = fr
}

// kernel returns the frames of kernel stack addrs, innermost first, from
// the cache or made and cached now: symbolized with ksyms and without the
// tracing machinery's leading frames (trimTracingFrames), or addresses only
// while ksyms is nil.
func (c *stackCache) kernel(ksyms *symbolize.Kernel, addrs []uint64) []event.Frame {
	if fr, ok := c.get(addrs); ok {
		return fr
	}
	var fr []event.Frame
	if ksyms != nil {
		fr = trimTracingFrames(ksyms.Frames(addrs))
	} else {
		for _, a := range addrs {
			fr = append(fr, event.Frame{Addr: a, Module: symbolize.KernelModule})
		}
	}
	c.put(addrs, fr)
	return fr
}
