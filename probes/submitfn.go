package probes

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// submitFnProbe times the bio submission function, submit_bio_noacct
// (generic_make_request before 5.9), from entry to return, per device and
// per process, on fentry/fexit or kprobe/kretprobe. A call nested in
// another (a stacked device such as bcache resubmitting to its lower
// devices) is timed on its own device, until the per-bio submission
// function (submitFnBioFuncs) returns for its bio: those programs run on
// every bio, so they are attached only while a stacked device exists or
// can appear (stackingPresent), or once a nested call shows they are
// needed; a nested bio not timed meanwhile is counted. Without fentry or
// kprobes, the submit probe's tracepoints (block_bio_queue to getrq/merge)
// measure the part of it before request accounting.
type submitFnProbe struct{}

func init() { register(submitFnProbe{}) }

var submitFnFuncs = []string{"submit_bio_noacct", "generic_make_request"}

// submitFnBioFuncs submit one bio of the thread's list, best first:
// __submit_bio (6.x; inlined on 5.10) holds the queue-enter wait from 5.16
// on; blk_mq_submit_bio is the request-based devices' part of it (on 5.10
// the queue-enter wait comes just before it). Where neither is traceable,
// nested calls are counted in the outer one only.
var submitFnBioFuncs = []string{"__submit_bio", "blk_mq_submit_bio"}

// Decl implements Probe.
func (submitFnProbe) Decl() Decl {
	return Decl{
		Name:       event.ProbeSubmitFn,
		Mechanisms: []Rung{{Mech: event.MechFentry}, {Mech: event.MechKprobe}, {Mech: event.MechTPBTF, InferredBy: event.ProbeSubmit}},
		Forceable:  true,
		Describe:   "time in submit_bio_noacct/generic_make_request per device and process, entry to return (else the submit probe's tracepoints)",
		Attach:     "fentry/fexit or kprobe/kretprobe on `submit_bio_noacct` (`generic_make_request` before 5.9), and on `__submit_bio` (else `blk_mq_submit_bio`) while a stacked device exists or can appear",
		Records:    "time in bio submission per device and process; a stacked device's submissions below it on their own devices",
	}
}

func (p submitFnProbe) Start(cfg Config, sink Sink) (Running, event.ProbeStatus) {
	return startLadder(p, cfg, sink)
}

func (p submitFnProbe) rungs(cfg Config, kernel *btf.Spec, sink Sink) []ladderRung {
	caps := newHostCaps(cfg, kernel)
	rs := directRungs([][]string{submitFnFuncs}, func(mech event.Mechanism, fns []string) (Running, error) {
		bioFn := ""
		if fs, why := resolveFuncs(ladderRung{funcs: [][]string{submitFnBioFuncs}}, caps); why == "" {
			bioFn = fs[0]
		}
		return startSubmitFn(cfg, kernel, sink, mech, fns[0], bioFn)
	})
	return append(rs, inferredRung(kernel, "block_bio_queue", "measured by the submit probe instead (block_bio_queue to getrq/merge)"))
}

// submitFnPoints are the programs on fn and, unless bioFn is "", those on
// the per-bio function that time nested calls (marked later: the run
// attaches them while they are needed; returns first).
func submitFnPoints(mech event.Mechanism, fn, bioFn string) ([]attachPoint, error) {
	var out []attachPoint
	switch mech {
	case event.MechFentry:
		out = []attachPoint{{prog: "sf_fentry", fn: fn, tracer: true}, {prog: "sf_fexit", fn: fn, tracer: true}}
		if bioFn != "" {
			out = append(out, attachPoint{prog: "sf_bio_fexit", fn: bioFn, tracer: true, later: true})
		}
	case event.MechKprobe:
		out = []attachPoint{{prog: "sf_kprobe", fn: fn}, {prog: "sf_kretprobe", fn: fn, ret: true}}
		if bioFn != "" {
			out = append(out, attachPoint{prog: "sf_bio_kretprobe", fn: bioFn, ret: true, later: true},
				attachPoint{prog: "sf_bio_kprobe", fn: bioFn, later: true})
		}
	default:
		return nil, fmt.Errorf("submit call: no %s programs", mech)
	}
	return out, nil
}

func startSubmitFn(cfg Config, kernel *btf.Spec, sink Sink, mech event.Mechanism, fn, bioFn string) (Running, error) {
	points, err := submitFnPoints(mech, fn, bioFn)
	if err != nil {
		return nil, loadErr(err)
	}
	var taskStorage uint32
	if mech == event.MechFentry && haveTaskStorage(kernel) {
		taskStorage = 1
	}
	consts := spanConsts(cfg)
	consts["use_task_storage"] = taskStorage
	spec, err := loadSpec(loadSubmitfn, consts)
	if err != nil {
		return nil, loadErr(err)
	}
	if taskStorage == 0 {
		// The programs keep their calls in the LRU hash: the task
		// storage map, unused, need not be one (5.10 has none).
		ms := spec.Maps["submitting_task"]
		ms.Type, ms.Flags, ms.MaxEntries = ebpf.Hash, 0, 1
	}
	need := make(chan struct{}, 1)
	handle := func(_ *ebpf.Collection, raw []byte) bool {
		var e submitfnSfEvent
		if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
			return false
		}
		if e.Dev == 0 {
			if e.Pad != submitFnNestedSeen {
				return false
			}
			select {
			case need <- struct{}{}:
			default:
			}
			return true
		}
		major, minor := kernelDev(e.Dev)
		sink.Event(event.SubmitCall{
			Start:     event.Mono(e.StartNs),
			Latency:   time.Duration(e.LatencyNs),
			Task:      event.Task{Pid: e.Pid, Tgid: e.Tgid, Comm: cString(e.Comm[:])},
			Dev:       event.Device{Major: major, Minor: minor, Name: cString(e.DiskName[:])},
			Func:      fn,
			Mechanism: mech,
		})
		return true
	}
	r, err := startDirect(event.ProbeSubmitFn, spec, kernel, points, sink, handle)
	if err != nil {
		return nil, err
	}
	r.funcs = []string{fn}
	r.moreLosses = deliverSubmitFnLosses
	r.hists = func(coll *ebpf.Collection, sink Sink) error {
		hs, names, err := devHists(coll.Maps["dev_hist"], coll.Maps["dev_hist_spill"], coll.Maps["dev_names"])
		if err != nil {
			return err
		}
		deliverDevHists(sink, timeline.HistSubmitCall, cfg.SysFS, hs, names)
		return nil
	}
	var bio []attachPoint
	for _, p := range points {
		if p.later {
			bio = append(bio, p)
		}
	}
	if len(bio) == 0 {
		return r, nil
	}
	return newNestedSwitch(r, cfg.SysFS, bioFn, bio, need)
}

// submitFnNestedSeen is SF_NESTED_SEEN: the pad of a record with no device
// that says a nested call came while the per-bio programs were off.
const submitFnNestedSeen = 1

// submitFnLossWhat names each counter of `sf_losses`, at its value of enum
// sf_loss_kind.
var submitFnLossWhat = [submitfnSfLossKindSF_LOSS_KINDS]string{
	submitfnSfLossKindSF_LOSS_NESTED: "nested submission of a stacked device not timed on its own device " +
		"(the per-bio program was not attached yet, or its bio was not seen): its time counts in the outer call only",
}

// deliverSubmitFnLosses sends the non-zero counts of `sf_losses`.
func deliverSubmitFnLosses(coll *ebpf.Collection, sink Sink) {
	deliverLossArray(sink, event.ProbeSubmitFn, coll.Maps["sf_losses"], submitFnLossWhat[:])
}
