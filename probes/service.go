package probes

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
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
		Attach:     "tp_btf `block_rq_issue` (raw tracepoint on 6.9+) → tp_btf `block_rq_complete` (before 6.9, the issue time the kernel stamps in the request where the queue collects I/O statistics, as with writeback throttling); `block_rq_requeue` starts the span over",
		Records:    "request service latency per device (what iostat and biolatency see), per-CPU in-kernel histograms",
	}
}

// seats implements chainMember: the devfault probe's program on
// block_rq_complete runs from its program's slot there (rqchain.go).
func (serviceProbe) seats() []*seat { return []*seat{chainRqComplete.coming.expect(rankService)} }

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
	objs  serviceLoaded
	links []link.Link
	// complete is svc_rq_complete on block_rq_complete's chain
	// (rqchain.go).
	complete *rqMember
	// disks holds the request-based disks' completed I/Os as the kernel
	// counted them once the programs were attached, or when a disk first
	// appeared (completions.go); nil when unreadable.
	disks *diskWatch

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

func startService(cfg Config, sink Sink) (_ *serviceRunning, err error) {
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
	// One issue program of two is attached: the other is not loaded.
	issueName, unused := "svc_rq_issue", "svc_rq_issue_slot"
	if !stamps {
		issueName, unused = unused, issueName
	}
	delete(spec.Programs, unused)
	r := &serviceRunning{sink: sink, sysfs: cfg.SysFS}
	opts := collectionOptions(kernel)
	if err := shareRQClock(spec, opts); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			releaseRQClock()
		}
	}()
	if err := loadPtrBits(spec, func() error { return r.objs.load(spec, issueName, opts) }); err != nil {
		return nil, err
	}
	// On an error from here: undo what was done, the issue side first
	// (leave and closeAll take what was not done yet).
	defer func() {
		if err != nil {
			if r.disks != nil {
				r.disks.close()
			}
			closeAll(r.links)
			chainRqComplete.leave(r.complete)
			r.objs.Close()
		}
	}()
	// The end first, so no span starts that could not end: on
	// block_rq_complete's chain, behind the submit probe's program and
	// before the devfault probe's (rqchain.go); then the requeue, which
	// frees a slot.
	if r.complete, err = chainRqComplete.join(rankService, r.objs.SvcRqComplete, r.objs.RqCompleteNext); err != nil {
		return nil, err
	}
	if r.links, err = attachTPBTF(r.objs.SvcRqRequeue); err != nil {
		return nil, err
	}
	var issue []link.Link
	if stamps {
		issue, err = attachTPBTF(r.objs.Issue)
	} else {
		issue, err = attachRawTP(rawTP{"block_rq_issue", r.objs.Issue})
	}
	if err != nil {
		return nil, err
	}
	r.links = append(r.links, issue...)
	r.disks = watchDisks(r.sysfs, r.seenOn)
	return r, nil
}

// serviceLoaded is what the service probe loads: its maps and the
// programs it attaches, of which one issue program (svc_rq_issue or
// svc_rq_issue_slot) of the object's two.
type serviceLoaded struct {
	serviceMaps
	SvcRqComplete *ebpf.Program
	SvcRqRequeue  *ebpf.Program
	Issue         *ebpf.Program
}

// load loads spec (without the issue program not used) into o.
func (o *serviceLoaded) load(spec *ebpf.CollectionSpec, issue string, opts *ebpf.CollectionOptions) error {
	coll, err := ebpf.NewCollectionWithOptions(spec, *opts)
	if err != nil {
		return fmt.Errorf("loading objects: %w", err)
	}
	defer coll.Close()
	if err := coll.Assign(&o.serviceMaps); err != nil {
		return fmt.Errorf("loading objects: %w", err)
	}
	o.SvcRqComplete = coll.DetachProgram("svc_rq_complete")
	o.SvcRqRequeue = coll.DetachProgram("svc_rq_requeue")
	o.Issue = coll.DetachProgram(issue)
	if o.SvcRqComplete == nil || o.SvcRqRequeue == nil || o.Issue == nil {
		o.Close()
		return fmt.Errorf("loading objects: a program of svc_rq_complete, svc_rq_requeue, %s missing", issue)
	}
	return nil
}

// Close closes the maps and the programs.
func (o *serviceLoaded) Close() error {
	err := o.serviceMaps.Close()
	for _, p := range []*ebpf.Program{o.SvcRqComplete, o.SvcRqRequeue, o.Issue} {
		if p != nil {
			if perr := p.Close(); perr != nil && err == nil {
				err = perr
			}
		}
	}
	return err
}

// skips are svc_rq_complete's skipped runs, its own and those of the
// program it ran behind on block_rq_complete's chain.
func (r *serviceRunning) skips() map[*ebpf.Program]uint64 {
	return map[*ebpf.Program]uint64{r.complete.prog: chainRqComplete.skips(r.complete)}
}

// serviceLossWhat names each counter of `svc_losses`, at its value of enum
// svc_loss_kind.
var serviceLossWhat = [serviceSvcLossKindSVC_LOSS_KINDS]string{
	serviceSvcLossKindSVC_LOSS_MISSED: event.ServiceMissedWhat,
}

// Checkpoint implements Checkpointer.
func (r *serviceRunning) Checkpoint(sink Sink) error {
	now, _ := readDiskCounts(r.sysfs, r.seenOn)
	hs, names, err := devHists(r.objs.DevHist, r.objs.DevHistSpill, r.objs.DevNames)
	if err != nil {
		return err
	}
	deliverDevHists(sink, timeline.HistService, r.sysfs, hs, names)
	deliverLossesWith(sink, event.ProbeService, r.objs.Losses, &r.objs, r.skips())
	deliverLossArray(sink, event.ProbeService, r.objs.SvcLosses, serviceLossWhat[:])
	r.deliverUnseen(sink, now)
	return nil
}

// deliverUnseen reports, per request-based disk, the completions the
// kernel counted from the probe's start to now (read while the programs
// were attached, each disk's with what they had seen on it right after:
// readDiskCounts) beyond those the programs saw.
func (r *serviceRunning) deliverUnseen(sink Sink, now map[uint32]diskCount) {
	if r.disks == nil || now == nil {
		return
	}
	seen := make(map[uint32]uint64, len(now))
	for dev, c := range now {
		seen[dev] = c.seen
	}
	for _, l := range unseenCompletions(event.ProbeService, r.disks.baselines(), now, seen) {
		sink.Loss(l)
	}
}

// seenOn returns the completions the programs have seen on dev so far:
// its histogram's count and its never-issued requests (deliverUnseen's
// seen, for one disk).
func (r *serviceRunning) seenOn(dev uint32) (uint64, bool) {
	var n uint64
	var cpus []devHistCPU
	switch err := r.objs.DevHist.Lookup(dev, &cpus); {
	case err == nil:
		for _, c := range cpus {
			for _, v := range c.Slots {
				n += v
			}
		}
	case !errors.Is(err, ebpf.ErrKeyNotExist):
		return 0, false
	}
	var sh devHistShared
	switch err := r.objs.DevHistSpill.Lookup(dev, &sh); {
	case err == nil:
		for _, v := range sh.Slots {
			n += v
		}
	case !errors.Is(err, ebpf.ErrKeyNotExist):
		return 0, false
	}
	var u uint64
	switch err := r.objs.Unspanned.Lookup(dev, &u); {
	case err == nil:
		n += u
	case !errors.Is(err, ebpf.ErrKeyNotExist):
		return 0, false
	}
	return n, true
}

// Stop detaches the programs, delivers the per-device histograms and the
// loss counts, and frees everything.
func (r *serviceRunning) Stop() error {
	r.stopOnce.Do(func() {
		// The kernel's counts while the programs still run, each with
		// what the programs had seen then: those they see after it,
		// until detached, are left out of both.
		if r.disks != nil {
			r.disks.close()
		}
		now, _ := readDiskCounts(r.sysfs, r.seenOn)
		// The issue program first: one still attached once the
		// completion's is gone counts every request completed meanwhile
		// and issued again as a missed completion (at 230k IOPS, some
		// 200 per stop).
		closeAll(r.links)
		r.stopErr = chainRqComplete.leave(r.complete)
		hs, names, err := devHists(r.objs.DevHist, r.objs.DevHistSpill, r.objs.DevNames)
		if err != nil {
			if r.stopErr == nil {
				r.stopErr = err
			}
		} else {
			deliverDevHists(r.sink, timeline.HistService, r.sysfs, hs, names)
			r.deliverUnseen(r.sink, now)
		}
		deliverLossesWith(r.sink, event.ProbeService, r.objs.Losses, &r.objs, r.skips())
		deliverLossArray(r.sink, event.ProbeService, r.objs.SvcLosses, serviceLossWhat[:])
		if err := r.objs.Close(); err != nil && r.stopErr == nil {
			r.stopErr = fmt.Errorf("closing objects: %w", err)
		}
		releaseRQClock()
	})
	return r.stopErr
}
