package probes

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/symbolize"
)

// freezeProbe records request queue freezes, outermost freeze to unfreeze:
// which device, for how long, and who froze it (pid, comm, kernel and user
// stack). It probes the freeze start (blk_freeze_queue_start, or
// __blk_freeze_queue_start where that is a function of its own) and the
// unfreeze (__blk_mq_unfreeze_queue 5.15+, blk_mq_unfreeze_queue before),
// on fentry or kprobe. Without either, the offcpu probe infers freezes from
// freezers blocked in blk_mq_freeze_queue_wait.
type freezeProbe struct{}

func init() { register(freezeProbe{}) }

// Functions of each role, best first.
var (
	freezeStartFuncs = []string{"__blk_freeze_queue_start", "blk_freeze_queue_start"}
	unfreezeFuncs    = []string{"__blk_mq_unfreeze_queue", "blk_mq_unfreeze_queue"}
)

// The callers of each role that may have the role's function inlined into
// them (it is in the same file: 6.1's blk_mq_freeze_queue inlines
// blk_freeze_queue_start, so a probe on that alone misses every sysfs
// freeze). Every one the kernel has as a real function is probed too; the
// freeze depth check makes nested hits harmless: a start is recorded only
// at depth 0 (the innermost hit wins), an end only at depth 1 (the first
// hit emits, the rest find nothing).
var (
	freezeStartCallers = []string{"blk_mq_freeze_queue", "blk_mq_freeze_queue_nomemsave", "blk_freeze_queue"}
	unfreezeCallers    = []string{"blk_mq_unfreeze_queue", "blk_mq_unfreeze_queue_nomemrestore"}
)

// freezeKstackDepth is KSTACK_DEPTH in bpf/freeze.bpf.c, the frames of a
// `kstacks` entry (TestGoMirrorsC compares them).
const freezeKstackDepth = 64

// Decl implements Probe.
func (freezeProbe) Decl() Decl {
	return Decl{
		Name:       event.ProbeFreeze,
		Mechanisms: []Rung{{Mech: event.MechFentry}, {Mech: event.MechKprobe}, {Mech: event.MechTPBTF, InferredBy: event.ProbeOffCPU}},
		Forceable:  true,
		Describe:   "request queue freezes, freeze to unfreeze, with the freezer's pid, comm and stacks (else inferred from off-CPU stacks)",
		Attach:     "fentry or kprobe on `blk_freeze_queue_start` (and the callers that inline it) → `__blk_mq_unfreeze_queue`",
		Records:    "each queue freeze, freeze to unfreeze: device, duration, the freezer's pid, comm, kernel and user stacks",
	}
}

func (p freezeProbe) Start(cfg Config, sink Sink) (Running, event.ProbeStatus) {
	return startLadder(p, cfg, sink)
}

func (p freezeProbe) rungs(cfg Config, kernel *btf.Spec, sink Sink) []ladderRung {
	caps := newHostCaps(cfg, kernel)
	rs := directRungs([][]string{freezeStartFuncs, unfreezeFuncs}, func(mech event.Mechanism, fns []string) (Running, error) {
		starts := append([]string{fns[0]}, traceable(caps, freezeStartCallers, fns[0])...)
		ends := append([]string{fns[1]}, traceable(caps, unfreezeCallers, fns[1])...)
		return startFreeze(cfg, kernel, sink, mech, starts, ends)
	})
	return append(rs, inferredRung(kernel, "sched_switch", "inferred by the offcpu probe from freezers blocked in blk_mq_freeze_queue_wait"))
}

// traceable returns the functions of fns, other than except, that the
// kernel has as real functions (in BTF and, when readable, in kallsyms).
func traceable(caps kernelCaps, fns []string, except string) []string {
	var out []string
	for _, f := range fns {
		if f == except {
			continue
		}
		if _, why := resolveFuncs(ladderRung{funcs: [][]string{{f}}}, caps); why == "" {
			out = append(out, f)
		}
	}
	return out
}

// freezePoints puts the start program on every start function and the end
// program on every unfreeze function.
func freezePoints(mech event.Mechanism, starts, ends []string) ([]attachPoint, error) {
	var startProg, endProg string
	switch mech {
	case event.MechFentry:
		startProg, endProg = "fz_start_fentry", "fz_end_fentry"
	case event.MechKprobe:
		startProg, endProg = "fz_start_kprobe", "fz_end_kprobe"
	default:
		return nil, fmt.Errorf("freeze: no %s programs", mech)
	}
	tracer := mech == event.MechFentry
	var points []attachPoint
	for _, f := range starts {
		points = append(points, attachPoint{prog: startProg, fn: f, tracer: tracer})
	}
	for _, f := range ends {
		points = append(points, attachPoint{prog: endProg, fn: f, tracer: tracer})
	}
	return points, nil
}

// startFreeze probes the freeze starts and ends: starts[0] and ends[0] are
// the role's own functions, the rest their callers that exist here.
func startFreeze(cfg Config, kernel *btf.Spec, sink Sink, mech event.Mechanism, starts, ends []string) (Running, error) {
	points, err := freezePoints(mech, starts, ends)
	if err != nil {
		return nil, loadErr(err)
	}
	spec, err := loadSpec(loadFreeze, spanConsts(cfg))
	if err != nil {
		return nil, loadErr(err)
	}
	procfs := cfg.ProcFS
	if procfs == "" {
		procfs = "/proc"
	}
	ksyms, _ := symbolize.LoadKernel(procfs) // without it frames carry addresses
	users := symbolize.NewUserCache(procfs, 0, 0)
	// Stack ids index a map of KSTACK_ENTRIES (1024) stacks: the cache
	// holds at most that many.
	kstacks := map[int32][]event.Frame{}
	handle := func(coll *ebpf.Collection, raw []byte) bool {
		var e freezeFreezeEvent
		if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
			return false
		}
		major, minor := kernelDev(e.Dev)
		ev := event.Freeze{
			Start:     event.Mono(e.StartNs),
			Duration:  time.Duration(e.DurationNs),
			Task:      event.Task{Pid: e.Pid, Tgid: e.Tgid, Comm: cString(e.Comm[:])},
			Unfreezer: event.Task{Pid: e.UnfreezerPid, Tgid: e.UnfreezerTgid, Comm: cString(e.UnfreezerComm[:])},
			Dev:       event.Device{Major: major, Minor: minor, Name: cString(e.DiskName[:])},
			Func:      starts[0],
			Mechanism: mech,
		}
		ev.KernelStack = fromProbed(freezeKernelStack(coll.Maps["kstacks"], e.KstackId, ksyms, kstacks), starts)
		n := min(int(e.UstackLen), len(e.Ustack))
		var addrs []uint64
		for _, a := range e.Ustack[:n] {
			if a == 0 {
				break
			}
			addrs = append(addrs, a)
		}
		if len(addrs) > 0 {
			fr, err := users.Frames(e.Tgid, addrs)
			if err == nil {
				fr = userFramesInMappings(fr)
			}
			ev.UserStack = fr
		}
		sink.Event(ev)
		return true
	}
	r, err := startDirect(event.ProbeFreeze, spec, kernel, points, sink, handle)
	if err != nil {
		return nil, err
	}
	r.funcs = append(append([]string(nil), starts...), ends...)
	return r, nil
}

// freezeKernelStack reads and symbolizes one kernel stack of the freeze
// probe, without the frames of the probe machinery.
func freezeKernelStack(m *ebpf.Map, id int32, ksyms *symbolize.Kernel, cache map[int32][]event.Frame) []event.Frame {
	if id < 0 || m == nil {
		return nil
	}
	if fr, ok := cache[id]; ok {
		return append([]event.Frame(nil), fr...)
	}
	var raw [freezeKstackDepth]uint64
	if err := m.Lookup(uint32(id), &raw); err != nil {
		return nil
	}
	n := 0
	for n < len(raw) && raw[n] != 0 {
		n++
	}
	var fr []event.Frame
	if ksyms != nil {
		fr = trimProbeFrames(ksyms.Frames(raw[:n]))
	} else {
		for _, a := range raw[:n] {
			fr = append(fr, event.Frame{Addr: a, Module: symbolize.KernelModule})
		}
	}
	cache[id] = fr
	return append([]event.Frame(nil), fr...)
}

// fromProbed starts a stack at its innermost frame in one of the probed
// functions, dropping what lies inside it: the BPF trampoline and program,
// whose addresses kallsyms may not name (they are loaded after it was read).
// A stack without such a frame is returned as it is.
func fromProbed(fr []event.Frame, funcs []string) []event.Frame {
	for i, f := range fr {
		if slices.Contains(funcs, f.Symbol) {
			return fr[i:]
		}
	}
	return fr
}

// trimProbeFrames drops the innermost frames of the BPF machinery (the
// program, the fentry trampoline, the kprobe handler), so that a stack
// starts at the probed function or its caller.
func trimProbeFrames(fr []event.Frame) []event.Frame {
	const window = 8
	cut := -1
	for i := 0; i < len(fr) && i < window; i++ {
		s := fr[i].Symbol
		for _, p := range []string{"bpf_prog_", "bpf_trampoline", "__bpf_prog_enter", "__bpf_prog_exit",
			"bpf_trace_run", "trace_call_bpf", "kprobe_", "aggr_pre_handler", "kretprobe_", "__kretprobe",
			"perf_trace_run", "kprobe_perf_func", "kprobe_dispatcher", "kprobe_ftrace_handler",
			"ftrace_", "arch_ftrace_ops_list_func", "asm_exc_int3", "exc_int3", "do_int3"} {
			if strings.HasPrefix(s, p) {
				cut = i
			}
		}
	}
	if cut+1 >= len(fr) {
		return fr
	}
	return fr[cut+1:]
}

// userFramesInMappings ends a user stack at its first frame outside every
// executable mapping: code without frame pointers makes the walk read data
// as return addresses.
func userFramesInMappings(fr []event.Frame) []event.Frame {
	for i, f := range fr {
		if f.Module == "" {
			return fr[:i]
		}
	}
	return fr
}
