package probes

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// submitProbe measures bio submission latency (blktrace's Q2G): from
// block_bio_queue to block_getrq or a merge, per device, and streams the
// slow submissions with who made them. It also counts each process's
// completed bios per device, cgroup and kind (event.IOUsage).
type submitProbe struct{}

func init() { register(submitProbe{}) }

// Decl implements Probe.
func (submitProbe) Decl() Decl {
	return Decl{
		Name:       event.ProbeSubmit,
		Mechanisms: []Rung{{Mech: event.MechTPBTF}},
		Describe:   "bio submission latency (block_bio_queue to getrq/merge): queue freezes, throttling and tag waits before request accounting; each process's I/O per device",
		Attach:     "raw tracepoint `block_bio_queue` → tp_btf `block_getrq` / `block_bio_{back,front}merge` → tp_btf `block_rq_complete` / `block_rq_merge` / `block_bio_complete`",
		Records:    "bio submission latency per device (blktrace's Q2G): the waits before request accounting (frozen queue, throttling, tags). Per-CPU in-kernel histograms; single submissions above `--min-latency` streamed. Each process's (and cgroup's) bios, bytes and time in flight per device and kind, counted in the kernel",
	}
}

// submitEnds names each value of enum submit_end (bpf/submit.bpf.c).
var submitEnds = [...]string{
	submitSubmitEndEND_GETRQ:      "getrq",
	submitSubmitEndEND_BACKMERGE:  "backmerge",
	submitSubmitEndEND_FRONTMERGE: "frontmerge",
}

// seats implements chainMember: its program leads block_rq_complete's
// chain (rqchain.go).
func (submitProbe) seats() []*seat { return []*seat{chainRqComplete.coming.expect(rankSubmit)} }

func (p submitProbe) Start(cfg Config, sink Sink) (Running, event.ProbeStatus) {
	r, err := startSubmit(cfg, sink)
	if err != nil {
		return nil, unavailableStatus(p.Decl().Name, err)
	}
	return r, p.Decl().started()
}

type submitRunning struct {
	sink   Sink
	sysfs  string
	procfs string
	objs   submitObjects
	links  []link.Link
	// done is sub_rq_done on block_rq_complete's chain (rqchain.go).
	done *rqMember
	ring
	ops *opDecoder
	// use is the I/O accounting, swapped every ioUseSwapEvery until
	// swapStop closes (swapDone then).
	use      *ioUseSums
	swapStop chan struct{}
	swapDone chan struct{}
	// stale is the sweep of a long run's Checkpoints (submitleft.go).
	stale staleSweep

	stopOnce sync.Once
	stopErr  error
}

func startSubmit(cfg Config, sink Sink) (_ *submitRunning, err error) {
	kernel, err := kernelSpec(cfg)
	if err != nil {
		return nil, err
	}
	consts := spanConsts(cfg)
	for v, tp := range map[string]string{
		"arg_bio_queue":    "block_bio_queue",
		"arg_getrq":        "block_getrq",
		"arg_backmerge":    "block_bio_backmerge",
		"arg_frontmerge":   "block_bio_frontmerge",
		"arg_bio_complete": "block_bio_complete",
	} {
		i, err := tpArgIndex(kernel, tp, "bio")
		if err != nil {
			return nil, err
		}
		consts[v] = i
	}
	if consts["arg_rq_complete"], err = tpArgIndex(kernel, "block_rq_complete", "request"); err != nil {
		return nil, err
	}
	if consts["arg_rq_merge"], err = tpArgIndex(kernel, "block_rq_merge", "request"); err != nil {
		return nil, err
	}
	ops := newOpDecoder(kernel)
	for v, mask := range ops.reqFlagMasks() {
		consts[v] = mask
	}
	// The submitter's pid and name as plain loads from the current task
	// (5.11+), instead of two helper calls per bio.
	consts["use_btf_task"] = uint8(boolInt(features.HaveProgramHelper(ebpf.RawTracepoint, asm.FnGetCurrentTaskBtf) == nil))
	spec, err := loadSpec(loadSubmit, consts)
	if err != nil {
		return nil, err
	}
	if err := spec.Variables["io_use_bits"].Set(sizeIOUse(spec)); err != nil {
		return nil, fmt.Errorf("setting io_use_bits: %w", err)
	}
	tableSpec := spec.Maps["io_use"].InnerMap.Copy()
	r := &submitRunning{sink: sink, sysfs: cfg.SysFS, procfs: cmpOr(cfg.ProcFS, "/proc"), ops: ops, swapStop: make(chan struct{}), swapDone: make(chan struct{}), stale: staleSweep{after: staleAfter}}
	// The first I/O accounting table is put in io_use while the programs
	// load: the kernel waits for an RCU grace period on each update of a
	// map of maps (30-50 ms here), which would otherwise add to the start.
	outer, err := ebpf.NewMap(spec.Maps["io_use"])
	if err != nil {
		return nil, fmt.Errorf("creating io_use: %w", err)
	}
	type sums struct {
		u   *ioUseSums
		err error
	}
	use := make(chan sums, 1)
	go func() {
		u, err := newIOUseSums(outer, tableSpec)
		use <- sums{u, err}
	}()
	opts := collectionOptions(kernel)
	opts.MapReplacements = map[string]*ebpf.Map{"io_use": outer}
	loadErr := shareRQClock(spec, opts)
	if loadErr == nil {
		defer func() {
			if err != nil {
				releaseRQClock()
			}
		}()
		loadErr = loadPtrBits(spec, func() error { return spec.LoadAndAssign(&r.objs, opts) })
	}
	got := <-use
	r.use = got.u
	if got.err != nil {
		outer.Close()
	}
	defer func() {
		if err != nil {
			closeAll(r.links)
			chainRqComplete.leave(r.done)
			if r.rd != nil {
				r.rd.Close()
			}
			if r.use != nil {
				r.use.close()
			}
			r.objs.Close()
		}
	}()
	if loadErr != nil {
		return nil, fmt.Errorf("loading objects: %w", loadErr)
	}
	if got.err != nil {
		return nil, got.err
	}
	if err = r.openRing(r.objs.Events); err != nil {
		return nil, fmt.Errorf("opening ring buffer: %w", err)
	}
	// Attach the ends and the completion before the start, so no span is
	// started that could not be ended.
	if r.links, err = attachTPBTF(r.objs.SubGetrq, r.objs.SubBackmerge, r.objs.SubFrontmerge, r.objs.SubRqMerge); err != nil {
		return nil, err
	}
	// First on block_rq_complete's chain, before the service and devfault
	// probes' programs (rqchain.go).
	if r.done, err = chainRqComplete.join(rankSubmit, r.objs.SubRqDone, r.objs.RqCompleteNext); err != nil {
		return nil, err
	}
	done, err := attachTPBTF(r.objs.SubBioDone)
	r.links = append(r.links, done...)
	if err != nil {
		return nil, err
	}
	start, err := attachRawTP(rawTP{"block_bio_queue", r.objs.SubBioQueue})
	r.links = append(r.links, start...)
	if err != nil {
		return nil, err
	}
	r.readAll(r.sink, event.ProbeSubmit, r.handle)
	go r.swapLoop()
	return r, nil
}

// swapLoop swaps the I/O accounting table every ioUseSwapEvery until
// swapStop closes. A swap that fails leaves the table in use (its misses
// counted); the next may succeed.
func (r *submitRunning) swapLoop() {
	defer close(r.swapDone)
	t := time.NewTicker(ioUseSwapEvery)
	defer t.Stop()
	for {
		select {
		case <-r.swapStop:
			return
		case <-t.C:
			_ = r.use.swap()
		}
	}
}

func (r *submitRunning) handle(raw []byte) {
	var e submitSubmitEvent
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
		r.decode++
		return
	}
	major, minor := kernelDev(e.Dev)
	end := fmt.Sprint(e.End)
	if int(e.End) < len(submitEnds) {
		end = submitEnds[e.End]
	}
	r.sink.Event(event.SlowSubmit{
		Start:   event.Mono(e.StartNs),
		Latency: time.Duration(e.LatencyNs),
		Task:    event.Task{Pid: e.Pid, Tgid: e.Tgid, Comm: commOf(e.Pid, cString(e.Comm[:]))},
		Dev:     event.Device{Major: major, Minor: minor, Name: cString(e.DiskName[:])},
		Op:      r.ops.rwbs(e.Opf),
		End:     end,
		Sector:  e.Sector,
		Bytes:   e.Bytes,
	})
}

// Checkpoint implements Checkpointer: the per-device histograms, each
// process's I/O so far (event.IOUsage, whole: a timeline.Sums stream) and
// the loss counts.
func (r *submitRunning) Checkpoint(sink Sink) error {
	hs, names, err := devHists(r.objs.DevHist, r.objs.DevHistSpill, r.objs.DevNames)
	if err != nil {
		return err
	}
	deliverDevHists(sink, timeline.HistSubmit, r.sysfs, hs, names)
	now, err := event.Now()
	if err != nil {
		return err
	}
	err = r.deliverIOUse(sink, names, now)
	if serr := r.stale.sweep(r.objs.Starts, r.objs.Swept); serr != nil {
		sink.Loss(event.Loss{Probe: event.ProbeSubmit, What: "submission entries unreadable: bios whose completion the probe did not see not counted", Count: 1})
		err = errors.Join(err, serr)
	}
	r.stale.deliver(sink)
	deliverLossesWith(sink, event.ProbeSubmit, r.objs.Losses, &r.objs, r.skips())
	deliverLossArray(sink, event.ProbeSubmit, r.objs.SubLosses, submitLossWhat[:])
	return err
}

// submitLossWhat names each counter of `sub_losses`, at its value of enum
// sub_loss_kind.
var submitLossWhat = [submitSubLossKindSUB_LOSS_KINDS]string{
	submitSubLossKindSUB_LOSS_MISSED: event.SubmitMissedWhat,
	submitSubLossKindSUB_LOSS_CHAIN:  "requests with more bios merged in front than the accounting follows: the bio that got the request not counted per process",
}

// ioUseOverWhat is how the bios of keys beyond ioUseMaxKeys are reported.
const ioUseOverWhat = "I/O accounting full (processes x devices x cgroups x kinds): bios not counted per process"

// deliverIOUse swaps the I/O accounting table and delivers the sums, whole
// since the probe started, read at now, and the bios beyond their bound.
func (r *submitRunning) deliverIOUse(sink Sink, names map[uint32]string, now event.Mono) error {
	use, over, err := r.use.snapshot()
	for _, e := range ioUsageEvents(use, r.ops, names, r.procfs, r.sysfs, now) {
		sink.Event(e)
	}
	if over > 0 {
		sink.Loss(event.Loss{Probe: event.ProbeSubmit, What: ioUseOverWhat, Count: over})
	}
	return err
}

// Prune implements Pruner: it removes the I/O sums of the processes that
// have exited (their /proc entry is gone) and that the last Checkpoint
// delivered final (unchanged since).
func (r *submitRunning) Prune() ([]uint32, error) {
	return r.use.prune(func(tgid uint32) bool { return procGone(r.procfs, tgid) }), nil
}

// Stop detaches the programs, delivers the buffered slow submissions, the
// per-device histograms, each process's I/O and the loss counts, and frees
// everything.
func (r *submitRunning) Stop() error {
	r.stopOnce.Do(func() {
		// sub_rq_done last, so a request in flight gets the most time
		// to be counted.
		closeAll(r.links)
		leaveErr := chainRqComplete.leave(r.done)
		close(r.swapStop)
		<-r.swapDone
		now, _ := event.Now()
		r.drain()
		// The programs are detached; a swap returns once none still runs
		// (the kernel waits for them), so the entries still waiting stay
		// as they are.
		_ = r.use.swap()
		left, unknown, leftErr := r.leftEnds()
		hs, names, err := devHists(r.objs.DevHist, r.objs.DevHistSpill, r.objs.DevNames)
		if err != nil {
			r.stopErr = err
		} else {
			deliverDevHists(r.sink, timeline.HistSubmit, r.sysfs, hs, names)
		}
		if err := r.deliverIOUse(r.sink, names, now); err != nil {
			r.sink.Loss(event.Loss{Probe: event.ProbeSubmit, What: "I/O accounting unreadable", Count: 1})
			if r.stopErr == nil {
				r.stopErr = err
			}
		}
		r.use.close()
		if leftErr != nil {
			r.sink.Loss(event.Loss{Probe: event.ProbeSubmit, What: "submission entries unreadable: bios whose completion the probe did not see not counted", Count: 1})
		}
		if left > 0 {
			r.sink.Loss(event.Loss{Probe: event.ProbeSubmit, What: endsUnseenWhat, Count: left})
		}
		if unknown > 0 {
			r.sink.Loss(event.Loss{Probe: event.ProbeSubmit, What: endsUnknownWhat, Count: unknown})
		}
		r.stale.deliver(r.sink)
		deliverLossesWith(r.sink, event.ProbeSubmit, r.objs.Losses, &r.objs, r.skips())
		deliverLossArray(r.sink, event.ProbeSubmit, r.objs.SubLosses, submitLossWhat[:])
		r.undecodable(r.sink, event.ProbeSubmit)
		if err := r.objs.Close(); err != nil && r.stopErr == nil {
			r.stopErr = fmt.Errorf("closing objects: %w", err)
		}
		releaseRQClock()
		if leaveErr != nil && r.stopErr == nil {
			r.stopErr = leaveErr
		}
	})
	return r.stopErr
}

// leftEnds adds to the I/O sums the bios of processes gone whose entry
// still waits for an end (see submitleft.go), once the programs are
// detached, and returns how many it added and how many it could not.
func (r *submitRunning) leftEnds() (added, unknown uint64, err error) {
	entries, err := readStarts(r.objs.Starts)
	if err != nil {
		return 0, 0, err
	}
	use, unknown := leftEnds(entries, func(tgid uint32) bool { return procGone(r.procfs, tgid) }, r.stale.swept)
	r.use.addAll(use)
	return uint64(len(use)), unknown, nil
}

// skips are sub_rq_done's skipped runs, its own and those of the program
// it ran behind on block_rq_complete's chain (none: it is first).
func (r *submitRunning) skips() map[*ebpf.Program]uint64 {
	if r.done == nil {
		return nil
	}
	return map[*ebpf.Program]uint64{r.done.prog: chainRqComplete.skips(r.done)}
}

// opDecoder turns a bio's bi_opf into blktrace's rwbs letters. Operation
// numbers and flag bits differ between kernels, so they are read from the
// kernel's BTF (enum req_op, enum req_flag_bits), with 6.x values as
// fallback.
type opDecoder struct {
	ops                             map[uint32]string
	preflush, fua, rahead, syn, met uint32 // flag masks
}

// reqOpMask is REQ_OP_MASK: the low REQ_OP_BITS (8) bits hold the operation.
const reqOpMask = 0xff

func newOpDecoder(kernel *btf.Spec) *opDecoder {
	d := &opDecoder{
		ops: map[uint32]string{0: "R", 1: "W", 2: "F", 3: "D", 5: "DE"},
		// 6.x bit numbers.
		preflush: 1 << 18, fua: 1 << 17, rahead: 1 << 19, syn: 1 << 11, met: 1 << 12,
	}
	if kernel == nil {
		return d
	}
	var ops *btf.Enum
	if kernel.TypeByName("req_op", &ops) == nil {
		names := map[string]string{
			"REQ_OP_READ": "R", "REQ_OP_WRITE": "W", "REQ_OP_FLUSH": "F",
			"REQ_OP_DISCARD": "D", "REQ_OP_SECURE_ERASE": "DE",
		}
		d.ops = make(map[uint32]string)
		for _, v := range ops.Values {
			if s, ok := names[v.Name]; ok {
				d.ops[uint32(v.Value)] = s
			}
		}
	}
	var flags *btf.Enum
	if kernel.TypeByName("req_flag_bits", &flags) == nil {
		for _, v := range flags.Values {
			if v.Value >= 32 {
				continue
			}
			bit := uint32(1) << v.Value
			switch v.Name {
			case "__REQ_PREFLUSH":
				d.preflush = bit
			case "__REQ_FUA":
				d.fua = bit
			case "__REQ_RAHEAD":
				d.rahead = bit
			case "__REQ_SYNC":
				d.syn = bit
			case "__REQ_META":
				d.met = bit
			}
		}
	}
	return d
}

// rwbs formats opf like the kernel's blk_fill_rwbs: F (preflush), the
// operation (R, W, D, DE, F, N for others), then F (FUA), A (readahead),
// S (sync), M (meta).
func (d *opDecoder) rwbs(opf uint32) string {
	var b strings.Builder
	if opf&d.preflush != 0 {
		b.WriteByte('F')
	}
	if s, ok := d.ops[opf&reqOpMask]; ok {
		b.WriteString(s)
	} else {
		b.WriteByte('N')
	}
	for _, f := range []struct {
		mask uint32
		c    byte
	}{{d.fua, 'F'}, {d.rahead, 'A'}, {d.syn, 'S'}, {d.met, 'M'}} {
		if opf&f.mask != 0 {
			b.WriteByte(f.c)
		}
	}
	return b.String()
}
