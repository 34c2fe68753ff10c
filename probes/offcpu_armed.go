package probes

import (
	"errors"

	"github.com/cilium/ebpf"

	"github.com/whyslow/whyslow/internal/event"
)

// The off-CPU probe in armed mode (arm.go).

// offcpuArmed counts what armed mode cost the probe (under armst.mu).
type offcpuArmed struct {
	// sleepsLost are the D sleeps it tracked as it disarmed: their end is
	// not seen. unstacked are the spans that waited for their user stack
	// then: sent without it.
	sleepsLost, unstacked uint64
	// seeded are the threads /proc showed in D as it armed: tracked from
	// the arming (a lower bound of their start).
	seeded uint64
}

// The Loss.What of offcpuArmed's counts.
const (
	offcpuSleepsLostWhat = "D sleeps in progress as the probe disarmed (armed mode): not timed"
	offcpuUnstackedWhat  = "spans waiting for their user stack as the probe disarmed (armed mode): sent without it"
	offcpuSeededWhat     = "D sleeps in progress as the probe armed (armed mode), from /proc: timed from the arming (a lower bound of their start), with kernel stack and waker, without user stack"
)

func (r *offcpuRunning) armRank() int { return rankSysfsOrOffCPU }

// disarm takes its programs off the hooks, sends the spans that wait for
// a user stack without one, and drops the sleeps it tracked, whose ends
// it will not see. Programs in the syscall probe's slots stay there (that
// probe, disarmed first, runs them no more); if any runs on a link of its
// own, all leave their chains.
func (r *offcpuRunning) disarm() error {
	r.armst.mu.Lock()
	defer r.armst.mu.Unlock()
	if r.armst.stopped || r.armst.disarmedNow() {
		return nil
	}
	var err error
	if !r.allInSlots() {
		err = r.leaveChains()
		r.left = true
	}
	r.armst.markDisarmed()
	var (
		tid  uint32
		e    offcpuOffcpuEvent
		tids []uint32
		sent []offcpuOffcpuEvent
	)
	it := r.objs.Pending.Iterate()
	for it.Next(&tid, &e) {
		e.UstackLen = 0
		sent = append(sent, e)
		tids = append(tids, tid)
	}
	err = errors.Join(err, it.Err())
	for _, t := range tids {
		r.objs.Pending.Delete(t)
	}
	err = errors.Join(err, r.objs.Npending.Update(uint32(0), int64(0), ebpf.UpdateAny))
	if len(sent) > 0 {
		r.armed.unstacked += uint64(len(sent))
		r.qmu.Lock()
		r.queue = append(r.queue, sent...)
		r.qmu.Unlock()
		r.qcond.Signal()
	}
	n, derr := clearMap[uint32](r.objs.Blocked)
	r.armed.sleepsLost += n
	_, derr2 := clearMap[uint32](r.objs.Eager)
	return errors.Join(err, derr, derr2)
}

// arm puts its programs back (into the syscall probe's slots when it
// runs, which Group.Arm arms first) and seeds the sleeps in progress.
func (r *offcpuRunning) arm() error {
	r.armst.mu.Lock()
	defer r.armst.mu.Unlock()
	if r.armst.stopped || !r.armst.disarmedNow() {
		return nil
	}
	if r.left {
		if err := r.joinChains(); err != nil {
			return errors.Join(err, r.leaveChains())
		}
		r.left = false
	}
	r.armst.markArmed()
	r.armed.seeded += r.seedBlocked()
	return nil
}

// allInSlots says every program of its on the shared hooks runs from
// another's slot (under armst.mu).
func (r *offcpuRunning) allInSlots() bool {
	for _, h := range r.follows {
		if !h.c.chained(h.f) {
			return false
		}
	}
	return len(r.follows) > 0 && r.sysExit != nil && chainSysExit.inSlot(r.sysExit)
}

// seedBlocked tracks the threads /proc shows asleep in D, now that the
// programs run: each from when it was seen (its sleep began before, or
// offcpu_switch would have tracked it, and the insert leaves its entry
// be), so that its wake-up names the waker and its switch-in sends the
// span with its kernel stack. A thread woken before its entry went in is
// not asleep any more at the second look, and no wake-up noted a waker in
// it: the entry goes (a stale one would be taken at its next switch-in).
// It returns how many it tracks.
func (r *offcpuRunning) seedBlocked() uint64 {
	var n uint64
	procThreads(cmpOr(r.procfs, "/proc"), func(tdir string, tgid, tid int) {
		if _, st := taskState(tdir); st != 'D' {
			return
		}
		now, err := event.Now()
		if err != nil {
			return
		}
		key := uint32(tid)
		b := offcpuBlocked{StartNs: uint64(now)}
		if r.objs.Blocked.Update(key, b, ebpf.UpdateNoExist) != nil {
			return // tracked already (or no room)
		}
		if _, st := taskState(tdir); st == 'D' {
			n++
			return
		}
		var cur offcpuBlocked
		if r.objs.Blocked.Lookup(key, &cur) == nil && cur.StartNs == b.StartNs && cur.Waker.Comm[0] == 0 {
			r.objs.Blocked.Delete(key)
			return
		}
		n++
	})
	return n
}

// deliverArmed reports what armed mode cost it: the sleeps dropped and
// seeded (the time disarmed is coverage, trouble.Coverage).
func (r *offcpuRunning) deliverArmed(sink Sink) {
	r.armst.mu.Lock()
	a := r.armed
	r.armst.mu.Unlock()
	for _, l := range []struct {
		what string
		n    uint64
	}{{offcpuSleepsLostWhat, a.sleepsLost}, {offcpuUnstackedWhat, a.unstacked}, {offcpuSeededWhat, a.seeded}} {
		if l.n > 0 {
			sink.Loss(event.Loss{Probe: event.ProbeOffCPU, What: l.what, Count: l.n})
		}
	}
}

// clearMap deletes every entry of a hash map keyed by K and returns how
// many it deleted.
func clearMap[K any](m *ebpf.Map) (uint64, error) {
	var n uint64
	var k K
	for {
		if err := m.NextKey(nil, &k); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return n, nil
			}
			return n, err
		}
		if err := m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, err
		}
		n++
	}
}
