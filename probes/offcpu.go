package probes

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/whyslow/whyslow/event"
	"github.com/whyslow/whyslow/symbolize"
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

func init() { Register(offcpuProbe{}) }

// offcpuKstackDepth is KSTACK_DEPTH in bpf/offcpu.bpf.c.
const offcpuKstackDepth = 64

// Bound of the cache of symbolized kernel stacks, by their addresses.
const offcpuMaxCachedStacks = 4096

// Indexes of the `stack_losses` array (enum stack_loss in bpf/offcpu.bpf.c)
// and how each is reported.
var offcpuStackLossWhat = [...]string{
	0: "kernel stack lost",
	1: "user stack lost",
}

func (offcpuProbe) Name() string { return "offcpu" }

func (offcpuProbe) Describe() string {
	return "time tasks spend blocked in uninterruptible sleep (D state), with kernel and user stacks and the waker"
}

func (p offcpuProbe) Start(cfg Config, sink Sink) (Running, event.ProbeStatus) {
	r, err := startOffcpu(cfg, sink)
	if err != nil {
		return nil, unavailableStatus(p.Name(), err)
	}
	st := okStatus(p.Name(), event.MechTPBTF)
	if r.ksymsErr != nil {
		// The spans are still right; kernel frames carry addresses only.
		st.Reason = "kernel stacks not symbolized: " + r.ksymsErr.Error()
	}
	return r, st
}

type offcpuRunning struct {
	sink     Sink
	objs     offcpuObjects
	links    []link.Link
	rd       *ringbuf.Reader
	done     chan struct{}
	ksyms    *symbolize.Kernel
	ksymsErr error
	users    *symbolize.UserCache

	// Used by the reader goroutine only: symbolized kernel stacks by their
	// addresses (they come from a few hundred code paths and repeat). The
	// frames are shared by the events: nothing downstream changes them.
	kstacks *stackCache
	decode  uint64 // records that could not be decoded
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
		done:    make(chan struct{}),
		users:   symbolize.NewUserCache(procfs, 0, 0),
		kstacks: newStackCache(offcpuMaxCachedStacks),
	}
	r.ksyms, r.ksymsErr = symbolize.LoadKernel(procfs)
	consts := map[string]any{
		"min_latency_ns":   uint64(max(cfg.MinLatency, 0)),
		"switch_has_state": hasState,
	}
	// The scheduler's sections, whose frames a sleeping task's stack walk
	// leaves out and the program puts back.
	if r.ksyms != nil {
		for _, sec := range [][3]string{{"sched_text", "__sched_text_start", "__sched_text_end"}, {"lock_text", "__lock_text_start", "__lock_text_end"}} {
			lo, ok1 := r.ksyms.Addr(sec[1])
			hi, ok2 := r.ksyms.Addr(sec[2])
			if ok1 && ok2 && lo < hi {
				consts[sec[0]+"_lo"], consts[sec[0]+"_hi"] = lo, hi
			}
		}
	}
	spec, err := loadSpec(loadOffcpu, consts)
	if err != nil {
		return nil, err
	}
	if err := spec.LoadAndAssign(&r.objs, collectionOptions(kernel)); err != nil {
		return nil, fmt.Errorf("loading objects: %w", err)
	}
	defer func() {
		if err != nil {
			closeAll(r.links)
			if r.rd != nil {
				r.rd.Close()
			}
			r.objs.Close()
		}
	}()
	if r.rd, err = ringbuf.NewReader(r.objs.Events); err != nil {
		return nil, fmt.Errorf("opening ring buffer: %w", err)
	}
	// The wake-up and system-call exit sides first, so every tracked sleep
	// can see its waker and every pending span its completion.
	r.links, err = attachTPBTF(r.objs.OffcpuWakeup, r.objs.OffcpuSysExit, r.objs.OffcpuSwitch)
	if err != nil {
		return nil, err
	}
	go func() {
		defer close(r.done)
		readRing(r.rd, r.handle)
	}()
	return r, nil
}

// offcpuSwitchArgs counts sched_switch's arguments; tests replace it to
// force the path of kernels before 5.18, where prev_state is read from the
// task.
var offcpuSwitchArgs = func(kernel *btf.Spec) (int, error) { return tpParamCount(kernel, "sched_switch") }

// tpParamCount returns the number of arguments a tp_btf program of
// tracepoint tp receives (the kernel's btf_trace_<tp> without void *__data).
func tpParamCount(kernel *btf.Spec, tp string) (int, error) {
	var td *btf.Typedef
	if err := kernel.TypeByName("btf_trace_"+tp, &td); err != nil {
		return 0, fmt.Errorf("tracepoint %s: %w", tp, err)
	}
	ptr, ok := btf.UnderlyingType(td.Type).(*btf.Pointer)
	if !ok {
		return 0, fmt.Errorf("tracepoint %s: unexpected BTF type %s", tp, td.Type)
	}
	proto, ok := btf.UnderlyingType(ptr.Target).(*btf.FuncProto)
	if !ok || len(proto.Params) == 0 {
		return 0, fmt.Errorf("tracepoint %s: unexpected BTF type %s", tp, ptr.Target)
	}
	return len(proto.Params) - 1, nil
}

func (r *offcpuRunning) handle(raw []byte) {
	var e offcpuOffcpuEvent
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
		r.decode++
		return
	}
	r.deliver(&e)
}

func (r *offcpuRunning) deliver(e *offcpuOffcpuEvent) {
	ev := event.OffCPU{
		Start:       event.Mono(e.StartNs),
		Duration:    time.Duration(e.DurationNs),
		Task:        event.Task{Pid: e.Pid, Tgid: e.Tgid, Comm: cString(e.Comm[:])},
		KernelStack: r.kernelStack(offcpuKernelFrames(e)),
		UserStack:   r.userStack(e.Tgid, offcpuUserFrames(e)),
	}
	if e.WakerComm[0] != 0 {
		ev.Waker = event.Task{Pid: e.WakerPid, Tgid: e.WakerTgid, Comm: cString(e.WakerComm[:])}
	}
	r.sink.Event(ev)
}

// kernelStack symbolizes a kernel stack, innermost first.
func (r *offcpuRunning) kernelStack(addrs []uint64) []event.Frame {
	if len(addrs) == 0 {
		return nil
	}
	if fr, ok := r.kstacks.get(addrs); ok {
		return fr
	}
	var fr []event.Frame
	if r.ksyms != nil {
		fr = trimTracingFrames(r.ksyms.Frames(addrs))
	} else {
		fr = make([]event.Frame, len(addrs))
		for i, a := range addrs {
			fr[i] = event.Frame{Addr: a, Module: symbolize.KernelModule}
		}
	}
	r.kstacks.put(addrs, fr)
	return fr
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
// none; one walked in the running task's context (the freeze probe's) has.
func trimTracingFrames(fr []event.Frame) []event.Frame {
	const window = 8 // the machinery is a few frames deep
	cut := -1
	for i := 0; i < len(fr) && i < window; i++ {
		s := fr[i].Symbol
		if strings.HasPrefix(s, "bpf_trace_run") || strings.HasPrefix(s, "__bpf_trace_") ||
			strings.HasPrefix(s, "__traceiter_") || strings.HasPrefix(s, "bpf_prog_") {
			cut = i
		}
	}
	if cut+1 >= len(fr) {
		return fr
	}
	return fr[cut+1:]
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

// Stop detaches the programs, delivers the buffered spans and the loss
// counts, and frees everything. Spans still waiting for their user stack
// (their task has not left the call it slept in) are delivered without one.
func (r *offcpuRunning) Stop() error {
	r.stopOnce.Do(func() {
		r.drainPending(offcpuDrain)
		closeAll(r.links)
		_ = r.rd.Flush()
		<-r.done
		r.rd.Close()
		var tid uint32
		var e offcpuOffcpuEvent
		it := r.objs.Pending.Iterate()
		for it.Next(&tid, &e) {
			e.UstackLen = 0
			r.deliver(&e)
			r.unfinished++
		}
		deliverLosses(r.sink, "offcpu", r.objs.Losses)
		deliverStackLosses(r.sink, r.objs.StackLosses, r.unfinished)
		if r.decode > 0 {
			r.sink.Loss(event.Loss{Probe: "offcpu", What: "undecodable record", Count: r.decode})
		}
		if err := r.objs.Close(); err != nil {
			r.stopErr = fmt.Errorf("closing objects: %w", err)
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
			sink.Loss(event.Loss{Probe: "offcpu", What: "stack loss counters unreadable", Count: 1})
			return
		}
		for _, v := range perCPU {
			counts[k] += v
		}
	}
	counts[1] += unfinished
	for k, n := range counts {
		if n > 0 {
			sink.Loss(event.Loss{Probe: "offcpu", What: offcpuStackLossWhat[k], Count: n})
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
