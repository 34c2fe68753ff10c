package probes

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/whyslow/whyslow/internal/event"
)

// iocostProbe sees what the iocost controller did (bpf/iocost.bpf.c): each
// device's vrate as iocost adjusted it, and each cgroup's activations,
// share of the device, shortages and forgiven debt. Its tracepoints fire
// per period and per cgroup, not per I/O: each is streamed.
type iocostProbe struct{}

func init() { register(iocostProbe{}) }

// Decl implements Probe.
func (iocostProbe) Decl() Decl {
	return Decl{
		Name:       event.ProbeIOCost,
		Mechanisms: []Rung{{Mech: event.MechTracepoint}},
		Describe:   "what the iocost controller did: each device's vrate, each cgroup's share of the device, shortages and forgiven debt and delay",
		Attach:     "tracepoints `iocost:iocost_ioc_vrate_adj`, `iocost_iocg_activate`, `iocost_iocg_idle` (6.1+), `iocost_inuse_shortage`, `iocost_iocg_forgive_debt`",
		Records:    "each period iocost was busy or adjusted a device's vrate in: the vrate (% of the cost model), the busy level, missed latency targets; each cgroup's activation, idling (io.weight, share of the device), shortage of budget and forgiven debt (the debt and the delay it cost)",
	}
}

// iocostPoints are the tracepoints; all but the vrate's may be missing
// (iocost_iocg_idle came in 6.1) and are then said not seen.
var iocostPoints = [][2]string{
	{"ioc_vrate_adj", "iocost_ioc_vrate_adj"},
	{"ioc_activate", "iocost_iocg_activate"},
	{"ioc_idle", "iocost_iocg_idle"},
	{"ioc_shortage", "iocost_inuse_shortage"},
	{"ioc_forgive", "iocost_iocg_forgive_debt"},
}

// Units of the tracepoints' fields (block/blk-iocost.c): a vrate of
// vtimePerUsec is 100% of the model; weights and hweights are in units of
// weightOne; debts are in absolute vtime, vtimePerUsec a microsecond of
// device time at 100%; delays are in microseconds.
const (
	vtimePerUsec = (1 << 37) / 1000000
	weightOne    = 1 << 16
)

func (p iocostProbe) Start(cfg Config, sink Sink) (Running, event.ProbeStatus) {
	r, note, err := startIOCost(cfg, sink)
	if err != nil {
		return nil, unavailableStatus(p.Decl().Name, err)
	}
	st := p.Decl().started()
	st.Reason = note
	return r, st
}

type iocostRunning struct {
	sysfs string
	sink  Sink
	coll  *ebpf.Collection
	links []link.Link
	ring

	devs map[string]event.Device // by kernel name (reader goroutine)

	stopOnce sync.Once
	stopErr  error
}

func startIOCost(cfg Config, sink Sink) (_ *iocostRunning, note string, err error) {
	if _, err := ensureTracefs(); err != nil {
		return nil, "", err
	}
	spec, err := loadSpec(loadIocost, nil)
	if err != nil {
		return nil, "", err
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, *collectionOptions(nil))
	if err != nil {
		return nil, "", fmt.Errorf("loading objects: %w", err)
	}
	r := &iocostRunning{sysfs: cmpOr(cfg.SysFS, "/sys"), sink: sink, coll: coll, devs: map[string]event.Device{}}
	defer func() {
		if err != nil {
			closeAtOnce(r.links)
			if r.rd != nil {
				r.rd.Close()
			}
			coll.Close()
		}
	}()
	if err = r.openRing(coll.Maps["events"]); err != nil {
		return nil, "", fmt.Errorf("opening ring buffer: %w", err)
	}
	var skipped []string
	for i, pt := range iocostPoints {
		l, err := link.Tracepoint("iocost", pt[1], coll.Programs[pt[0]], nil)
		if err != nil {
			if i == 0 {
				// no iocost in this kernel (CONFIG_BLK_CGROUP_IOCOST off)
				return nil, "", fmt.Errorf("iocost:%s: %w", pt[1], err)
			}
			skipped = append(skipped, pt[1]+" ("+errReason(err)+")")
			continue
		}
		r.links = append(r.links, l)
	}
	if len(skipped) > 0 {
		note = "not seen: " + strings.Join(skipped, "; ")
	}
	r.readAll(r.sink, event.ProbeIOCost, r.handle)
	return r, note, nil
}

// handle delivers one ring record (reader goroutine).
func (r *iocostRunning) handle(raw []byte) {
	var e iocostIocEvent
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
		r.decode++
		return
	}
	ev, ok := r.event(e)
	if !ok {
		r.decode++
		return
	}
	r.sink.Event(ev)
}

// event is the event of a record; false when its kind is unknown.
func (r *iocostRunning) event(e iocostIocEvent) (event.Event, bool) {
	at, dev := event.Mono(e.TimeNs), r.device(cString(e.Dev[:]))
	c := event.IOCostCgroup{Time: at, Dev: dev, Cgroup: cString(e.Cgroup[:])}
	switch iocostIocKind(e.Kind) {
	case iocostIocKindIOC_VRATE:
		return event.IOCostVrate{Time: at, Dev: dev, Pct: vratePct(e.Vrate), OldPct: vratePct(e.OldVrate),
			Busy: e.BusyLevel, ReadMissedPPM: e.ReadMissedPpm, WriteMissedPPM: e.WriteMissedPpm,
			RqWaitPct: e.RqWaitPct, Lagging: e.NrLagging, Shortages: e.NrShortages}, true
	case iocostIocKindIOC_ACTIVATE, iocostIocKindIOC_IDLE:
		c.Kind = event.IOCostActivate
		if iocostIocKind(e.Kind) == iocostIocKindIOC_IDLE {
			c.Kind = event.IOCostIdle
		}
		c.VratePct = vratePct(e.Vrate)
		c.Weight = uint32(math.Round(float64(e.Weight) / weightOne))
		c.SharePct = sharePct(e.HweightInuse)
	case iocostIocKindIOC_SHORTAGE:
		c.Kind = event.IOCostShortage
		c.SharePct = sharePct(e.HweightInuse)
	case iocostIocKindIOC_FORGIVE:
		c.Kind = event.IOCostForgive
		c.Debt = debtTime(e.OldDebt)
		c.DebtAfter = debtTime(e.NewDebt)
		c.Delay = time.Duration(e.OldDelay) * time.Microsecond
		c.DelayAfter = time.Duration(e.NewDelay) * time.Microsecond
		c.UsagePct = e.UsagePct
	default:
		return nil, false
	}
	return c, true
}

// vratePct is a vrate in percent of the cost model, to 0.01%.
func vratePct(vrate uint64) float64 {
	return math.Round(float64(vrate)*10000/vtimePerUsec) / 100
}

// sharePct is a hweight in percent, to 0.01%.
func sharePct(hweight uint64) float64 {
	return math.Round(float64(hweight)*10000/weightOne) / 100
}

// debtTime is a debt (absolute vtime) as device time at a vrate of 100%.
func debtTime(vdebt uint64) time.Duration {
	return time.Duration(vdebt/vtimePerUsec) * time.Microsecond
}

// device names a disk by its kernel name (iocost's devname), its numbers
// from sysfs.
func (r *iocostRunning) device(name string) event.Device {
	if d, ok := r.devs[name]; ok {
		return d
	}
	// reader goroutine only: no lock
	d := event.Device{Name: name}
	if b, err := os.ReadFile(filepath.Join(r.sysfs, "class", "block", name, "dev")); err == nil {
		var major, minor uint32
		if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &major, &minor); err == nil {
			d.Major, d.Minor = major, minor
		}
	}
	r.devs[name] = d
	return d
}

// Checkpoint implements Checkpointer: the losses so far.
func (r *iocostRunning) Checkpoint(sink Sink) error {
	deliverLosses(sink, event.ProbeIOCost, r.coll.Maps["losses"], r.coll)
	return nil
}

// Stop detaches, delivers the records still buffered and the losses, and
// frees everything.
func (r *iocostRunning) Stop() error {
	r.stopOnce.Do(func() {
		closeAtOnce(r.links)
		r.drain()
		deliverLosses(r.sink, event.ProbeIOCost, r.coll.Maps["losses"], r.coll)
		r.undecodable(r.sink, event.ProbeIOCost)
		r.coll.Close()
	})
	return r.stopErr
}
