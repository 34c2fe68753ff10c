package probes

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"time"

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
// lookup; stacks are taken only when a task goes to sleep in D state.
//
// Stacks: kernel stacks go through a stack map (they repeat) and records
// carry their id; user stacks (up to 32 frames) are carried inline in each
// record, since walks through code without frame pointers make nearly every
// one distinct. Maps: about 6.0 MB of tracked sleeps, 4.5 MB of kernel
// stacks and a 256 KiB ring buffer.
type offcpuProbe struct{}

func init() { Register(offcpuProbe{}) }

// offcpuKstackDepth is KSTACK_DEPTH in bpf/offcpu.bpf.c.
const offcpuKstackDepth = 64

// Bound of the cache of resolved kernel stacks, by stack id.
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

	// Used by the reader goroutine only. Kernel stack ids are stable for
	// the life of the stack map (see bpf/offcpu.bpf.c), so caching by id is
	// exact. User stacks come inline in each record.
	kstacks *idCache[[]event.Frame]
	decode  uint64 // records that could not be decoded

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
	spec, err := loadSpec(loadOffcpu, map[string]any{
		"min_latency_ns":   uint64(max(cfg.MinLatency, 0)),
		"switch_has_state": hasState,
	})
	if err != nil {
		return nil, err
	}
	procfs := cfg.ProcFS
	if procfs == "" {
		procfs = "/proc"
	}
	r := &offcpuRunning{
		sink:    sink,
		done:    make(chan struct{}),
		users:   symbolize.NewUserCache(procfs, 0, 0),
		kstacks: newIDCache[[]event.Frame](offcpuMaxCachedStacks),
	}
	r.ksyms, r.ksymsErr = symbolize.LoadKernel(procfs)
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
	// The wake-up side first, so every tracked sleep can see its waker.
	r.links, err = attachTPBTF(r.objs.OffcpuWakeup, r.objs.OffcpuSwitch)
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
	ev := event.OffCPU{
		Start:       event.Mono(e.StartNs),
		Duration:    time.Duration(e.DurationNs),
		Task:        event.Task{Pid: e.Pid, Tgid: e.Tgid, Comm: cString(e.Comm[:])},
		KernelStack: r.kernelStack(e.KstackId),
		UserStack:   r.userStack(e.Tgid, offcpuUserFrames(&e)),
	}
	if e.WakerComm[0] != 0 {
		ev.Waker = event.Task{Pid: e.WakerPid, Tgid: e.WakerTgid, Comm: cString(e.WakerComm[:])}
	}
	r.sink.Event(ev)
}

// kernelStack resolves and symbolizes a kernel stack id.
func (r *offcpuRunning) kernelStack(id int32) []event.Frame {
	if id < 0 {
		return nil
	}
	if fr, ok := r.kstacks.get(id); ok {
		return append([]event.Frame(nil), fr...)
	}
	addrs, err := r.stack(id)
	if err != nil {
		return nil
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
	r.kstacks.put(id, fr)
	return append([]event.Frame(nil), fr...)
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

// stack reads one kernel stack from the stack map: innermost first, up to
// the first zero address.
func (r *offcpuRunning) stack(id int32) ([]uint64, error) {
	var raw [offcpuKstackDepth]uint64
	if err := r.objs.Kstacks.Lookup(uint32(id), &raw); err != nil {
		return nil, fmt.Errorf("reading stack %d: %w", id, err)
	}
	n := 0
	for n < len(raw) && raw[n] != 0 {
		n++
	}
	return append([]uint64(nil), raw[:n]...), nil
}

// trimTracingFrames drops the innermost frames that belong to the tracing
// machinery (the BPF program, bpf_trace_run, the tracepoint's dispatch), so
// a stack starts in the scheduler.
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
// counts, and frees everything.
func (r *offcpuRunning) Stop() error {
	r.stopOnce.Do(func() {
		closeAll(r.links)
		_ = r.rd.Flush()
		<-r.done
		r.rd.Close()
		deliverLosses(r.sink, "offcpu", r.objs.Losses)
		deliverStackLosses(r.sink, r.objs.StackLosses)
		if r.decode > 0 {
			r.sink.Loss(event.Loss{Probe: "offcpu", What: "undecodable record", Count: r.decode})
		}
		if err := r.objs.Close(); err != nil {
			r.stopErr = fmt.Errorf("closing objects: %w", err)
		}
	})
	return r.stopErr
}

// deliverStackLosses sends the non-zero counts of the per-CPU
// `stack_losses` array; like deliverLosses, an unreadable array is itself a
// loss.
func deliverStackLosses(sink Sink, m *ebpf.Map) {
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
	for k, n := range counts {
		if n > 0 {
			sink.Loss(event.Loss{Probe: "offcpu", What: offcpuStackLossWhat[k], Count: n})
		}
	}
}

// idCache is a bounded map from stack id to a resolved stack. When full it
// drops an arbitrary entry: ids stay readable from the stack map, so an
// eviction costs a lookup, never correctness.
type idCache[V any] struct {
	max int
	m   map[int32]V
}

func newIDCache[V any](max int) *idCache[V] {
	return &idCache[V]{max: max, m: make(map[int32]V)}
}

func (c *idCache[V]) get(id int32) (V, bool) {
	v, ok := c.m[id]
	return v, ok
}

func (c *idCache[V]) put(id int32, v V) {
	if len(c.m) >= c.max {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[id] = v
}
