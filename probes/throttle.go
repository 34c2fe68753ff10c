package probes

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/whyslow/whyslow/internal/event"
)

// throttleProbe times the bios blk-throttle holds (cgroup v2 io.max, v1
// blkio.throttle.*), from their parking in the throttle function
// (__blk_throtl_bio on 6.1+, blk_throtl_bio before: fexit, else
// kprobe/kretprobe) to their dispatch (raw tracepoint block_bio_queue).
// Without either, the iolimits probe's limits and counters stand in for it
// (the delay is then inferred). The bios still held when it stops are
// reported too, marked unfinished, with their wait so far.
type throttleProbe struct{}

func init() { register(throttleProbe{}) }

// throttleFuncs are the functions that park a bio, best first.
var throttleFuncs = []string{"__blk_throtl_bio", "blk_throtl_bio"}

// Decl implements Probe.
func (throttleProbe) Decl() Decl {
	return Decl{
		Name:       event.ProbeThrottle,
		Mechanisms: []Rung{{Mech: event.MechFentry}, {Mech: event.MechKprobe}, {Mech: event.MechCgroupfs, InferredBy: event.ProbeIOLimits}},
		Forceable:  true,
		Describe:   "time bios blk-throttle holds over a cgroup's I/O limit, parked to dispatched (else inferred from the limits and counters in cgroupfs)",
		Attach:     "fexit or kprobe/kretprobe on `__blk_throtl_bio` (6.1+) or `blk_throtl_bio`; raw tracepoint `block_bio_queue`",
		Records:    "each bio held above `--min-latency`, with its submitter and device; those still held at the end, with their wait so far",
	}
}

// Start implements Probe.
func (p throttleProbe) Start(cfg Config, sink Sink) (Running, event.ProbeStatus) {
	return startLadder(p, cfg, sink)
}

func (p throttleProbe) rungs(cfg Config, kernel *btf.Spec, sink Sink) []ladderRung {
	rs := directRungs([][]string{throttleFuncs}, func(mech event.Mechanism, fns []string) (Running, error) {
		return startThrottle(cfg, kernel, sink, mech, fns[0])
	})
	return append(rs, ladderRung{
		mech: event.MechCgroupfs,
		note: "inferred by the iolimits probe from the limits and counters in cgroupfs and the blocked time the device does not explain",
		start: func([]string) (Running, error) {
			return inferred{}, nil
		},
	})
}

// throttlePoints are the programs of bpf/throttle.bpf.c for a mechanism
// and function.
func throttlePoints(mech event.Mechanism, fn string) ([]attachPoint, error) {
	queue := attachPoint{prog: "tb_bio_queue", fn: "block_bio_queue", rawtp: true}
	switch mech {
	case event.MechFentry:
		return []attachPoint{{prog: "tb_fexit", fn: fn, tracer: true}, queue}, nil
	case event.MechKprobe:
		return []attachPoint{{prog: "tb_kprobe", fn: fn}, {prog: "tb_kretprobe", fn: fn, ret: true}, queue}, nil
	}
	return nil, fmt.Errorf("throttle: no %s programs", mech)
}

func startThrottle(cfg Config, kernel *btf.Spec, sink Sink, mech event.Mechanism, fn string) (Running, error) {
	points, err := throttlePoints(mech, fn)
	if err != nil {
		return nil, loadErr(err)
	}
	consts := spanConsts(cfg)
	arg, err := tpArgIndex(kernel, "block_bio_queue", "bio")
	if err != nil {
		return nil, loadErr(err)
	}
	consts["arg_bio_queue"] = arg
	spec, err := loadSpec(loadThrottle, consts)
	if err != nil {
		return nil, loadErr(err)
	}
	handle := func(_ *ebpf.Collection, raw []byte) bool {
		var e throttleTbEvent
		if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
			return false
		}
		major, minor := kernelDev(e.Dev)
		sink.Event(event.ThrottleWait{
			Start:     event.Mono(e.StartNs),
			Duration:  time.Duration(e.DurationNs),
			Task:      event.Task{Pid: e.Pid, Tgid: e.Tgid, Comm: cString(e.Comm[:])},
			Dev:       event.Device{Major: major, Minor: minor, Name: cString(e.DiskName[:])},
			Func:      fn,
			Mechanism: mech,
		})
		return true
	}
	r, err := startDirect(event.ProbeThrottle, spec, kernel, points, sink, handle)
	if err != nil {
		return nil, err
	}
	r.atStop = func(coll *ebpf.Collection, sink Sink) {
		held, err := stillParked(coll.Maps["parked"], cfg.MinLatency, fn, mech)
		for _, w := range held {
			sink.Event(w)
		}
		if err != nil {
			sink.Loss(event.Loss{Probe: event.ProbeThrottle, What: "bios still held at the stop that could not be read (" + err.Error() + "): missing from their limit's delay", Count: 1})
		}
	}
	return r, nil
}

// stillParked reads the bios blk-throttle still holds as the probe stops
// (the parked map, its programs detached): a limit so low that no bio of
// a run gets through shows in no dispatch. Each one held for at least
// minLatency is a wait marked Unfinished, its duration the wait so far (a
// lower bound). An error says the map or the clock could not be read
// whole: the waits returned are those read before it.
func stillParked(m *ebpf.Map, minLatency time.Duration, fn string, mech event.Mechanism) ([]event.ThrottleWait, error) {
	if m == nil {
		return nil, errors.New("no parked map")
	}
	now, err := event.Now()
	if err != nil {
		return nil, err
	}
	var out []event.ThrottleWait
	var bio uint64
	var p throttleTbParked
	it := m.Iterate()
	for it.Next(&bio, &p) {
		start := event.Mono(p.Ns)
		if now <= start || now.Sub(start) < minLatency {
			continue
		}
		major, minor := kernelDev(p.Dev)
		out = append(out, event.ThrottleWait{
			Start:      start,
			Duration:   now.Sub(start),
			Task:       event.Task{Pid: p.Pid, Tgid: p.Tgid, Comm: cString(p.Comm[:])},
			Dev:        event.Device{Major: major, Minor: minor, Name: cString(p.DiskName[:])},
			Func:       fn,
			Mechanism:  mech,
			Unfinished: true,
		})
	}
	return out, it.Err()
}
