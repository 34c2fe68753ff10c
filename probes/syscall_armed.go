package probes

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/whyslow/whyslow/internal/event"
)

// The syscall probe in armed mode (arm.go).

// syscallArmed counts what armed mode cost the probe (under sums).
type syscallArmed struct {
	// endsLost are the blocked calls in progress (`inflight`) as it
	// disarmed: their end is not seen.
	endsLost uint64
	// inFlight are the threads inside a storage call as it armed that
	// were not seeded (/proc's, or those sc_seed could not seed): their
	// call is not timed.
	inFlight uint64
	// seeded are the calls in progress as it armed that sc_seed seeded:
	// timed from the arming, a lower bound.
	seeded uint64
	// lastSeed is what sc_seed found at the last arming, by thread (the
	// threads inside a storage call on a block device, or on an aio
	// context or io_uring ring).
	lastSeed map[uint32]syscallScSeedOutcome
}

// The Loss.What of syscallArmed's counts.
const (
	syscallEndsLostWhat = "blocked storage calls in progress as the probe disarmed (armed mode): their end not seen, not timed"
	syscallInFlightWhat = "storage calls in progress as the probe armed (armed mode), not seeded (found in /proc, or their device not known from their registers): not timed; reported unfinished from the arming (a lower bound) while they stay blocked"
	syscallSeededWhat   = "storage calls in progress as the probe armed (armed mode), seeded from the threads' registers: timed from the arming, their latencies lower bounds (from_arming)"
)

func (r *syscallRunning) armRank() int { return rankSyscall }

// setArmedAt sets armed_at_ns (bpf/syscall.bpf.c): calls begun before it
// are not live.
func (r *syscallRunning) setArmedAt(ns uint64) error {
	v := r.coll.Variables["armed_at_ns"]
	if v == nil {
		return errors.New("no variable armed_at_ns in the syscall programs")
	}
	return v.Set(ns)
}

// disarm detaches its programs on the hot hooks. The chains it leads
// stay as they are: the programs in its slots run no more once it is
// detached, and run again, with no slot update, once it is attached
// again (a slot's update patches the tail calls' jumps, which took the
// kernel 10-40 ms per probe here, where the four links' detach took 2).
func (r *syscallRunning) disarm() error {
	r.armst.mu.Lock()
	defer r.armst.mu.Unlock()
	if r.armst.stopped || r.armst.disarmedNow() {
		return nil
	}
	err := closeAtOnce(r.hot)
	if err != nil {
		err = fmt.Errorf("detaching: %w", err)
	}
	r.hot = nil
	r.armst.markDisarmed()
	// The blocked calls in progress (the `inflight` map, or the threads'
	// states read by sc_running): their end will not be seen.
	r.sums.Lock()
	calls, _ := r.inProgress()
	r.armed.endsLost += uint64(len(calls))
	r.sums.Unlock()
	// No call is live while disarmed (a thread's state may hold one whose
	// exit is not seen): the memory-stall programs, still attached, time
	// none.
	err = errors.Join(err, r.setArmedAt(math.MaxUint64))
	r.sums.Lock()
	defer r.sums.Unlock()
	// The blocked calls in progress: their end will not be seen.
	var (
		tid  uint32
		v    syscallScInflight
		tids []uint32
	)
	m := r.coll.Maps["inflight"]
	it := m.Iterate()
	for it.Next(&tid, &v) {
		tids = append(tids, tid)
	}
	for _, t := range tids {
		m.Delete(t)
	}
	// Nor are those from before the start or the last arming reported
	// as unfinished while disarmed: /proc would show calls begun since.
	r.preexisting = map[uint32]int{}
	return errors.Join(err, it.Err())
}

// arm attaches its programs on the hot hooks again (the chains it leads
// run with them), then seeds the storage calls already in progress
// (seed: timed from now, a lower bound), where the kernel allows it; it
// counts those it cannot seed, or, on the other kernels, those /proc
// shows (reported unfinished from now while they stay blocked in them:
// hungSince).
func (r *syscallRunning) arm() error {
	r.armst.mu.Lock()
	defer r.armst.mu.Unlock()
	if r.armst.stopped || !r.armst.disarmedNow() {
		return nil
	}
	// The links first, at once on tp_btf (the kernel's attach waits
	// over each, and the waits overlap); armed_at_ns after: a call begun
	// before every program ran is not live (its exit may come before the
	// exit's program is attached: its state then keeps the start).
	if r.mech == event.MechTPBTF {
		hot, err := attachTPBTFAtOnce(r.coll.Programs["sc_waking"], r.coll.Programs["sc_switch"],
			r.coll.Programs[r.exitProg], r.coll.Programs[r.enterProg])
		if err != nil {
			return attachErr(err)
		}
		r.hot = hot
	} else if _, err := r.attachHot(); err != nil {
		return err
	}
	now, err := event.Now()
	if err == nil {
		err = r.setArmedAt(uint64(now))
	}
	if err != nil {
		closeAtOnce(r.hot)
		r.hot = nil
		return err
	}
	r.armst.markArmed()
	r.sums.Lock()
	defer r.sums.Unlock()
	r.began = now
	if r.seeder != nil {
		// Once the programs are attached and armed_at_ns set: every
		// exit after this is seen, a seeded call's too.
		n, rest, outcomes, err := r.seed()
		r.armed.lastSeed = outcomes
		if err == nil {
			r.armed.seeded += n
			r.armed.inFlight += uint64(len(rest))
			r.preexisting = rest
			return nil
		}
		// /proc's count then, as on the kernels without the seeding.
		found := r.inStorageCall(r.inflightTids())
		r.armed.inFlight += uint64(len(found))
		r.preexisting = found
		return fmt.Errorf("seeding the storage calls in progress (counted from /proc instead): %w", err)
	}
	found := r.inStorageCall(r.inflightTids())
	r.armed.inFlight += uint64(len(found))
	r.preexisting = found
	return nil
}

// seed runs sc_seed (under sums): it seeds the threads' states with the
// storage calls in progress on a block device, and returns how many it
// seeded and the threads in a storage call it could not seed (their
// device in user memory or not known yet, no room for the state), by
// thread to process: those are counted, and reported unfinished from the
// arming while /proc shows them blocked (hungSince). A call the programs
// saw begin since the arming is neither.
func (r *syscallRunning) seed() (seeded uint64, rest map[uint32]int, outcomes map[uint32]syscallScSeedOutcome, err error) {
	rd, err := r.seeder.Open()
	if err != nil {
		return 0, nil, nil, err
	}
	defer rd.Close()
	b, err := io.ReadAll(rd)
	if err != nil {
		return 0, nil, nil, err
	}
	var rec syscallScSeedRec
	size := binary.Size(rec)
	if len(b)%size != 0 {
		return 0, nil, nil, fmt.Errorf("%d bytes from the seeding iterator, not a whole number of %d-byte records", len(b), size)
	}
	rest = map[uint32]int{}
	outcomes = map[uint32]syscallScSeedOutcome{}
	for ; len(b) > 0; b = b[size:] {
		if _, err := binary.Decode(b[:size], binary.NativeEndian, &rec); err != nil {
			return 0, nil, nil, err
		}
		outcomes[rec.Tid] = syscallScSeedOutcome(rec.Outcome)
		switch syscallScSeedOutcome(rec.Outcome) {
		case syscallScSeedOutcomeSEED_DONE:
			seeded++
		case syscallScSeedOutcomeSEED_NOT:
			rest[rec.Tid] = int(rec.Tgid)
		}
	}
	return seeded, rest, outcomes, nil
}

// inStorageCall finds, in /proc, the threads inside a storage call on a
// block device (or on an aio context or io_uring ring, whose device /proc
// does not tell) other than those in seen, by thread to process.
func (r *syscallRunning) inStorageCall(seen map[uint32]bool) map[uint32]int {
	out := map[uint32]int{}
	procThreads(r.procfs, func(tdir string, tgid, tid int) {
		if seen[uint32(tid)] {
			return
		}
		nr, args, ok := taskSyscall(tdir)
		if !ok || syscallName(nr) == "" {
			return
		}
		switch nr {
		case uint32(syscallStorageNrNR_IO_GETEVENTS), uint32(syscallStorageNrNR_IO_PGETEVENTS),
			uint32(syscallStorageNrNR_IO_SUBMIT), uint32(syscallStorageNrNR_IO_URING_ENTER), uint32(syscallStorageNrNR_MSYNC):
		default:
			if _, ok := r.callDevFromProc(tgid, nr, args); !ok {
				return
			}
		}
		out[uint32(tid)] = tgid
	})
	return out
}

// deliverArmed reports what armed mode cost it (under sums).
func (r *syscallRunning) deliverArmed(sink Sink) {
	if n := r.armed.endsLost; n > 0 {
		sink.Loss(event.Loss{Probe: event.ProbeSyscall, What: syscallEndsLostWhat, Count: n})
	}
	if n := r.armed.inFlight; n > 0 {
		sink.Loss(event.Loss{Probe: event.ProbeSyscall, What: syscallInFlightWhat, Count: n})
	}
	if n := r.armed.seeded; n > 0 {
		sink.Loss(event.Loss{Probe: event.ProbeSyscall, What: syscallSeededWhat, Count: n})
	}
}

// attachTPBTFAtOnce is attachTPBTF with the links made at once, in no
// order.
func attachTPBTFAtOnce(progs ...*ebpf.Program) ([]link.Link, error) {
	links := make([]link.Link, len(progs))
	errs := make([]error, len(progs))
	atOnce(len(progs), func(i int) {
		ls, err := attachTPBTF(progs[i])
		if err == nil {
			links[i] = ls[0]
		}
		errs[i] = err
	})
	if err := errors.Join(errs...); err != nil {
		for _, l := range links {
			if l != nil {
				l.Close()
			}
		}
		return nil, err
	}
	return links, nil
}
