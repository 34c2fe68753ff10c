package probes

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/whyslow/whyslow/internal/event"
)

// queueEnterProbe times the wait of a bio to enter its device's request
// queue at the function that waits: __bio_queue_enter (5.16/5.17+, entered
// only when the queue is frozen or dying) or blk_queue_enter (on the bio
// path up to 5.14), on fentry/fexit or kprobe/kretprobe. Without either,
// the offcpu probe infers the same waits from blocked stacks.
type queueEnterProbe struct{}

func init() { register(queueEnterProbe{}) }

// queueEnterFuncs are the functions that wait, best first, each at its
// value of enum qe_func (bpf/queueenter.bpf.c).
var queueEnterFuncs = []string{
	queueenterQeFuncQE_BIO_QUEUE_ENTER: "__bio_queue_enter",
	queueenterQeFuncQE_BLK_QUEUE_ENTER: "blk_queue_enter",
}

// Decl implements Probe.
func (queueEnterProbe) Decl() Decl {
	return Decl{
		Name:       event.ProbeQueueEnter,
		Mechanisms: []Rung{{Mech: event.MechFentry}, {Mech: event.MechKprobe}, {Mech: event.MechTPBTF, InferredBy: event.ProbeOffCPU}},
		Forceable:  true,
		Describe:   "time bios wait to enter a frozen request queue, at __bio_queue_enter/blk_queue_enter (else inferred from off-CPU stacks)",
		Attach:     "fentry/fexit or kprobe/kretprobe on `__bio_queue_enter` (5.16+) or `blk_queue_enter`",
		Records:    "each wait of a bio to enter a frozen queue, with its device and thread",
	}
}

func (p queueEnterProbe) Start(cfg Config, sink Sink) (Running, event.ProbeStatus) {
	return startLadder(p, cfg, sink)
}

func (p queueEnterProbe) rungs(cfg Config, kernel *btf.Spec, sink Sink) []ladderRung {
	rs := directRungs([][]string{queueEnterFuncs}, func(mech event.Mechanism, fns []string) (Running, error) {
		return startQueueEnter(cfg, kernel, sink, mech, fns[0])
	})
	return append(rs, inferredRung(kernel, "sched_switch", "inferred by the offcpu probe from blocked stacks (__bio_queue_enter, blk_queue_enter frames)"))
}

// queueEnterPoints are the programs of bpf/queueenter.bpf.c for a mechanism
// and function.
func queueEnterPoints(mech event.Mechanism, fn string) ([]attachPoint, error) {
	switch {
	case mech == event.MechFentry && fn == "__bio_queue_enter":
		return []attachPoint{{prog: "qe_bio_fentry", fn: fn, tracer: true}, {prog: "qe_bio_fexit", fn: fn, tracer: true}}, nil
	case mech == event.MechFentry && fn == "blk_queue_enter":
		return []attachPoint{{prog: "qe_q_fentry", fn: fn, tracer: true}, {prog: "qe_q_fexit", fn: fn, tracer: true}}, nil
	case mech == event.MechKprobe && fn == "__bio_queue_enter":
		return []attachPoint{{prog: "qe_bio_kprobe", fn: fn}, {prog: "qe_kretprobe", fn: fn, ret: true}}, nil
	case mech == event.MechKprobe && fn == "blk_queue_enter":
		return []attachPoint{{prog: "qe_q_kprobe", fn: fn}, {prog: "qe_kretprobe", fn: fn, ret: true}}, nil
	}
	return nil, fmt.Errorf("queue enter: no %s programs for %s", mech, fn)
}

func startQueueEnter(cfg Config, kernel *btf.Spec, sink Sink, mech event.Mechanism, fn string) (Running, error) {
	points, err := queueEnterPoints(mech, fn)
	if err != nil {
		return nil, loadErr(err)
	}
	spec, err := loadSpec(loadQueueenter, spanConsts(cfg))
	if err != nil {
		return nil, loadErr(err)
	}
	handle := func(_ *ebpf.Collection, raw []byte) bool {
		var e queueenterQeEvent
		if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
			return false
		}
		major, minor := kernelDev(e.Dev)
		f := fn
		if int(e.Func) < len(queueEnterFuncs) {
			f = queueEnterFuncs[e.Func]
		}
		sink.Event(event.QueueEnter{
			Start:     event.Mono(e.StartNs),
			Duration:  time.Duration(e.DurationNs),
			Task:      event.Task{Pid: e.Pid, Tgid: e.Tgid, Comm: cString(e.Comm[:])},
			Dev:       event.Device{Major: major, Minor: minor, Name: cString(e.DiskName[:])},
			Func:      f,
			Mechanism: mech,
			Ret:       e.Ret,
		})
		return true
	}
	return startDirect(event.ProbeQueueEnter, spec, kernel, points, sink, handle)
}
