package probes

import (
	"fmt"
	"sync"

	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// serviceProbe measures request service latency per device, from
// block_rq_issue to block_rq_complete, aggregated in the kernel.
type serviceProbe struct{}

func init() { register(serviceProbe{}) }

// Decl implements Probe.
func (serviceProbe) Decl() Decl {
	return Decl{
		Name:       event.ProbeService,
		Mechanisms: []Rung{{Mech: event.MechTPBTF}},
		Describe:   "request service latency per device (block_rq_issue to block_rq_complete): time in the driver and the device",
		Attach:     "tp_btf `block_rq_issue` (raw tracepoint on 6.9+) → tp_btf `block_rq_complete` (before 6.9, the issue time the kernel stamps in the request where the queue collects I/O statistics, as with writeback throttling)",
		Records:    "request service latency per device (what iostat and biolatency see), per-CPU in-kernel histograms",
	}
}

func (p serviceProbe) Start(cfg Config, sink Sink) (Running, event.ProbeStatus) {
	r, err := startService(cfg, sink)
	if err != nil {
		return nil, unavailableStatus(p.Decl().Name, err)
	}
	return r, p.Decl().started()
}

type serviceRunning struct {
	sink  Sink
	sysfs string
	objs  serviceObjects
	links []link.Link

	stopOnce sync.Once
	stopErr  error
}

// hasPlugClock says whether the kernel's plugs keep the block layer's
// clock (struct blk_plug's cur_ktime, 6.9+: blk_time_get_ns).
func hasPlugClock(kernel *btf.Spec) bool {
	var plug *btf.Struct
	if kernel.TypeByName("blk_plug", &plug) != nil {
		return false
	}
	for _, m := range plug.Members {
		if m.Name == "cur_ktime" {
			return true
		}
	}
	return false
}

// serviceSlotsOnly, when set, makes the service probe keep every issue
// time in its slots instead of reading the kernel's stamps (tests: every
// queue here collects statistics, so the slots would go untested).
var serviceSlotsOnly bool

func startService(cfg Config, sink Sink) (*serviceRunning, error) {
	kernel, err := kernelSpec(cfg)
	if err != nil {
		return nil, err
	}
	// Where plugs keep the block layer's clock (6.9+), a task's requests
	// are stamped with its plug's earlier time and take their slots
	// anyway: there the stamps are not read, and the issue program is the
	// raw tracepoint's, without the tests and the helper call the stamps
	// need.
	stamps := !serviceSlotsOnly && !hasPlugClock(kernel)
	consts := map[string]any{"use_stamps": uint8(0)}
	if stamps {
		consts["use_stamps"] = uint8(1)
	}
	for v, tp := range map[string]string{
		"arg_rq_issue":    "block_rq_issue",
		"arg_rq_complete": "block_rq_complete",
	} {
		i, err := tpArgIndex(kernel, tp, "request")
		if err != nil {
			return nil, err
		}
		consts[v] = i
	}
	spec, err := loadSpec(loadService, consts)
	if err != nil {
		return nil, err
	}
	r := &serviceRunning{sink: sink, sysfs: cfg.SysFS}
	if err := spec.LoadAndAssign(&r.objs, collectionOptions(kernel)); err != nil {
		return nil, fmt.Errorf("loading objects: %w", err)
	}
	// The end first, so no span starts that could not end.
	if r.links, err = attachTPBTF(r.objs.SvcRqComplete); err != nil {
		r.objs.Close()
		return nil, err
	}
	var issue []link.Link
	if stamps {
		issue, err = attachTPBTF(r.objs.SvcRqIssue)
	} else {
		issue, err = attachRawTP(rawTP{"block_rq_issue", r.objs.SvcRqIssueSlot})
	}
	if err != nil {
		closeAll(r.links)
		r.objs.Close()
		return nil, err
	}
	r.links = append(r.links, issue...)
	return r, nil
}

// Checkpoint implements Checkpointer.
func (r *serviceRunning) Checkpoint(sink Sink) error {
	hs, names, err := devHists(r.objs.DevHist, r.objs.DevHistSpill, r.objs.DevNames)
	if err != nil {
		return err
	}
	deliverDevHists(sink, timeline.HistService, r.sysfs, hs, names)
	deliverLosses(sink, event.ProbeService, r.objs.Losses, &r.objs)
	return nil
}

// Stop detaches the programs, delivers the per-device histograms and the
// loss counts, and frees everything.
func (r *serviceRunning) Stop() error {
	r.stopOnce.Do(func() {
		closeAll(r.links)
		hs, names, err := devHists(r.objs.DevHist, r.objs.DevHistSpill, r.objs.DevNames)
		if err != nil {
			r.stopErr = err
		} else {
			deliverDevHists(r.sink, timeline.HistService, r.sysfs, hs, names)
		}
		deliverLosses(r.sink, event.ProbeService, r.objs.Losses, &r.objs)
		if err := r.objs.Close(); err != nil && r.stopErr == nil {
			r.stopErr = fmt.Errorf("closing objects: %w", err)
		}
	})
	return r.stopErr
}
