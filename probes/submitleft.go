package probes

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/whyslow/whyslow/internal/event"
)

// The entries of bpf/submit.bpf.c's `starts` still waiting for an end when
// the probe stops. Most are bios in flight then, whose end comes after the
// run. But the kernel does not always run the probe's programs where a
// request completes: on 6.18, completions run in BLOCK_SOFTIRQ on top of
// some tasks (seen: the VM's init, process_api's tokio-rt-worker threads)
// reach the tracepoint (an ftrace instance records them) but neither
// block_rq_complete's nor block_io_done's tp_btf program, with no recursion
// miss counted. Such a bio's entry waits for good; its process, which
// waited for the bio (a direct write), went on and exited. When the probe
// stops (its programs detached: nothing changes the table any more), the
// waiting entries of processes gone are such bios (or, rarely, bios still
// in flight that their process did not wait for: readahead, a flush on
// close): they are counted then, but for their time in flight, and the
// count says so.

// Where an entry of `starts` stands: enum start_state of submit.bpf.c.
const (
	startQueued = 0 // ST_QUEUED: its submission span runs
	startGotRq  = 1 // ST_GOTRQ: it got a request of its own
	startFront  = 2 // ST_FRONT: merged in front, counted at its merge
)

// endsUnseenWhat and endsUnknownWhat name the bios leftEnds finds.
const (
	endsUnseenWhat  = event.SubmitEndsUnseenWhat
	endsUnknownWhat = "bios whose end the probe did not see, of processes gone when the probe stopped, on a device it had not noted yet: not in their process's I/O counts"
)

// leftEnds returns what the entries left in `starts` when the probe
// stopped add to the I/O accounting: one count per bio whose submitter is
// gone (gone, asked once per process), without a time in flight, and how
// many such bios could not be counted (the device of a bio still queued
// is not noted yet). Bios of processes still there are in flight: left
// out. Entries merged in front of a request (ST_FRONT) were counted at
// their merge, and those a long run's sweep counted lost (swept) then.
func leftEnds(entries []submitStart, gone func(tgid uint32) bool, swept func(*submitStart) bool) (use []submitIoUse, unknown uint64) {
	goneOf := map[uint32]bool{}
	for i := range entries {
		e := &entries[i]
		if e.Bio == 0 || e.State == startFront || swept(e) {
			continue
		}
		g, ok := goneOf[e.Tgid]
		if !ok {
			g = gone(e.Tgid)
			goneOf[e.Tgid] = g
		}
		if !g {
			continue
		}
		if e.Dev == 0 {
			unknown++
			continue
		}
		u := submitIoUse{Tgid: e.Tgid, Dev: e.Dev, Cgroup: e.Cgroup, Op: e.Op, Flags: e.Flags, Used: 1, Ios: 1, Bytes: uint64(e.Bytes), Comm: e.Comm}
		if e.State == startGotRq {
			u.Requests = 1
		}
		use = append(use, u)
	}
	return use, unknown
}

// startsBatch is how many entries of `starts` one batch lookup reads.
const startsBatch = 4096

// readStarts returns the used entries of `starts`, in batches where the
// kernel can (5.6+), else one at a time.
func readStarts(m *ebpf.Map) ([]submitStart, error) {
	var out []submitStart
	keep := func(vals []submitStart) {
		for _, v := range vals {
			if v.Bio != 0 {
				out = append(out, v)
			}
		}
	}
	n := int(m.MaxEntries())
	keys := make([]uint32, min(n, startsBatch))
	vals := make([]submitStart, len(keys))
	var cursor ebpf.MapBatchCursor
	total := 0
	for {
		got, err := m.BatchLookup(&cursor, keys, vals, nil)
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			if total == 0 {
				break // no batches here: one at a time
			}
			return nil, fmt.Errorf("reading the submission entries: %w", err)
		}
		keep(vals[:got])
		total += got
		if err != nil || got == 0 {
			return out, nil
		}
	}
	var (
		k uint32
		v submitStart
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		keep([]submitStart{v})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading the submission entries: %w", err)
	}
	return out, nil
}

// addAll adds entries to the sums (what leftEnds found).
func (u *ioUseSums) addAll(es []submitIoUse) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i := range es {
		u.add(&es[i])
	}
}

// A long run (serve) does not wait for the probe's stop, nor for a bio's
// address to be reused, to name a bio whose completion was missed: each
// Checkpoint sweeps `starts` for bios that got a request and have waited
// for an end longer than staleAfter, far beyond what any I/O takes (a
// request that long in flight has passed its device's timeout, 30 s by
// default for SCSI and NVMe, and the retries after it, many times), and
// counts them lost then. The sweep does not touch their entries (a BPF
// program may be writing them): it notes each in `swept`, by bio and
// start, where own_stale finds it when the address is reused and leaves
// it uncounted; and leftEnds leaves it out at the stop. A bio that got no
// request is left to those (a throttled bio may wait long in the block
// layer). Nothing of this runs per I/O.

// staleAfter is how long a bio with a request waits for its end before
// a long run's sweep counts it lost.
const staleAfter = 5 * time.Minute

// staleWhat names the bios the sweep counts; it says staleAfter
// (TestStaleWhatSaysStaleAfter).
const staleWhat = event.SubmitStaleWhat

// staleKey is one entry of `starts`: its bio and when it was queued.
type staleKey struct{ bio, ns uint64 }

// staleSweep is the sweep's state: the entries it counted, still in
// `starts`, and how many it counted in all.
type staleSweep struct {
	mu      sync.Mutex
	after   time.Duration
	counted map[staleKey]bool
	total   uint64
}

// staleSplit returns the entries of `starts` read at now (ns, the BPF
// clock) that have waited for an end longer than after with a request
// and are not in counted yet, and the keys of counted no longer there.
func staleSplit(entries []submitStart, now uint64, after time.Duration, counted map[staleKey]bool) (fresh, gone []staleKey) {
	present := make(map[staleKey]bool, len(counted))
	for i := range entries {
		e := &entries[i]
		if e.Bio == 0 || e.State != startGotRq {
			continue
		}
		k := staleKey{e.Bio, e.Ns}
		if counted[k] {
			present[k] = true
			continue
		}
		if now > e.Ns && now-e.Ns > uint64(after) {
			fresh = append(fresh, k)
		}
	}
	for k := range counted {
		if !present[k] {
			gone = append(gone, k)
		}
	}
	return fresh, gone
}

// sweep counts the bios of `starts` whose end is overdue (see staleSplit),
// notes them in `swept`, and forgets those no longer waiting. A bio that
// `swept` has no room for is left uncounted: own_stale or leftEnds count
// it later.
func (s *staleSweep) sweep(starts, swept *ebpf.Map) error {
	entries, err := readStarts(starts)
	if err != nil {
		return err
	}
	now, err := event.Now()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.counted == nil {
		s.counted = map[staleKey]bool{}
	}
	fresh, gone := staleSplit(entries, uint64(now), s.after, s.counted)
	// The gone first: a bio of the same address may be among the fresh.
	for _, k := range gone {
		delete(s.counted, k)
		if v, err := swept.LookupBytes(k.bio); err == nil && len(v) == 8 && binary.NativeEndian.Uint64(v) == k.ns {
			_ = swept.Delete(k.bio)
		}
	}
	for _, k := range fresh {
		if err := swept.Put(k.bio, k.ns); err != nil {
			continue
		}
		s.counted[k] = true
		s.total++
	}
	return nil
}

// swept says whether the sweep counted an entry of `starts`.
func (s *staleSweep) swept(e *submitStart) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counted[staleKey{e.Bio, e.Ns}]
}

// deliver sends the count of the bios the sweep counted.
func (s *staleSweep) deliver(sink Sink) {
	s.mu.Lock()
	n := s.total
	s.mu.Unlock()
	if n > 0 {
		sink.Loss(event.Loss{Probe: event.ProbeSubmit, What: staleWhat, Count: n})
	}
}
