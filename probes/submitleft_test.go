package probes

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/whyslow/whyslow/internal/event"
)

// The entries left waiting when the probe stops: those of processes gone
// are bios whose end the probe did not see, counted once each (a request
// of its own for one that got it), without a time in flight; a process
// still there has its bios in flight; an entry merged in front was
// counted at its merge; a bio still queued has no device noted yet.
func TestLeftEnds(t *testing.T) {
	comm := [16]int8{'d', 'd'}
	gotRq := submitStart{Bio: 0x10, Ns: 5, Cgroup: 7, Tgid: 100, Dev: 7 << 20, Bytes: 4096, Op: 1, Flags: 1, State: startGotRq, Comm: comm}
	for _, tt := range []struct {
		name    string
		entries []submitStart
		gone    []uint32
		want    []submitIoUse
		unknown uint64
		swept   []staleKey
	}{
		{"none", nil, nil, nil, 0, nil},
		{"process gone: counted with its request", []submitStart{gotRq}, []uint32{100},
			[]submitIoUse{{Tgid: 100, Dev: 7 << 20, Cgroup: 7, Op: 1, Flags: 1, Used: 1, Ios: 1, Requests: 1, Bytes: 4096, Comm: comm}}, 0, nil},
		{"process there: in flight", []submitStart{gotRq}, nil, nil, 0, nil},
		{"free slot", []submitStart{{Tgid: 100, Dev: 1}}, []uint32{100}, nil, 0, nil},
		{"merged in front: counted at its merge", []submitStart{{Bio: 0x20, Tgid: 100, Dev: 1, State: startFront}}, []uint32{100}, nil, 0, nil},
		{"queued with its device noted: no request", []submitStart{{Bio: 0x30, Tgid: 100, Dev: 1, Bytes: 512, State: startQueued}}, []uint32{100},
			[]submitIoUse{{Tgid: 100, Dev: 1, Used: 1, Ios: 1, Bytes: 512}}, 0, nil},
		{"queued, device unknown", []submitStart{{Bio: 0x30, Tgid: 100, State: startQueued}}, []uint32{100}, nil, 1, nil},
		{"two processes, one gone", []submitStart{gotRq, {Bio: 0x40, Tgid: 200, Dev: 1, State: startGotRq}, gotRq}, []uint32{100},
			[]submitIoUse{
				{Tgid: 100, Dev: 7 << 20, Cgroup: 7, Op: 1, Flags: 1, Used: 1, Ios: 1, Requests: 1, Bytes: 4096, Comm: comm},
				{Tgid: 100, Dev: 7 << 20, Cgroup: 7, Op: 1, Flags: 1, Used: 1, Ios: 1, Requests: 1, Bytes: 4096, Comm: comm},
			}, 0, nil},
		{"process gone, counted lost by a long run's sweep: not again", []submitStart{gotRq}, []uint32{100}, nil, 0, []staleKey{{0x10, 5}}},
		{"swept another bio of the address: counted", []submitStart{gotRq}, []uint32{100},
			[]submitIoUse{{Tgid: 100, Dev: 7 << 20, Cgroup: 7, Op: 1, Flags: 1, Used: 1, Ios: 1, Requests: 1, Bytes: 4096, Comm: comm}}, 0, []staleKey{{0x10, 4}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			asked := map[uint32]int{}
			use, unknown := leftEnds(tt.entries, func(tgid uint32) bool {
				asked[tgid]++
				for _, g := range tt.gone {
					if g == tgid {
						return true
					}
				}
				return false
			}, func(e *submitStart) bool {
				for _, k := range tt.swept {
					if k == (staleKey{e.Bio, e.Ns}) {
						return true
					}
				}
				return false
			})
			if len(use) != len(tt.want) || unknown != tt.unknown {
				t.Fatalf("leftEnds = %+v, %d unknown; want %+v, %d", use, unknown, tt.want, tt.unknown)
			}
			for i := range use {
				if use[i] != tt.want[i] {
					t.Errorf("use[%d] = %+v, want %+v", i, use[i], tt.want[i])
				}
			}
			for tgid, n := range asked {
				if n > 1 {
					t.Errorf("asked whether %d is gone %d times, want once", tgid, n)
				}
			}
		})
	}
}

// A request whose completion the probe's programs do not see (as when
// the kernel completes it where it runs none of them: forced here by
// detaching the completion program) leaves its bio's entry waiting, while
// the direct write that waited for it returns and its dd exits. When the
// probe stops, each such bio of a process gone is counted for its process
// (bios, requests, bytes), and the loss of their time in flight is
// reported; one whose entry a later dd's bio took first (same stack
// address) is counted lost then: never silently missing.
func TestSubmitIOUsageUnseenCompletions(t *testing.T) {
	blkNeedRoot(t)
	loop := newBlkLoop(t, 16<<20)
	sink, r := startSubmitProbe(t, time.Hour)
	sr := r.(*submitRunning)
	// sub_rq_done leaves block_rq_complete's chain (Stop leaves it again:
	// a no-op).
	if sr.done == nil {
		t.Fatal("sub_rq_done is not on block_rq_complete")
	}
	if err := chainRqComplete.leave(sr.done); err != nil {
		t.Fatal(err)
	}
	const procs = 20
	var dd ddSpawner
	dd.run(t, loop.path, procs, 2, 1, 1000)
	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	var ios, requests, bytes uint64
	for _, u := range sinkEvents[event.IOUsage](sink) {
		if u.Dev.Name == loop.name && dd.has(u.Task.Tgid) {
			ios += u.IOs
			requests += u.Requests
			bytes += u.Bytes
		}
	}
	var unseen, missed uint64
	for _, l := range sink.losses {
		switch {
		case l.What == endsUnseenWhat:
			unseen += l.Count
		case l.What == submitLossWhat[submitSubLossKindSUB_LOSS_MISSED]:
			// A later dd's bio on the same stack address took the entry
			// before the probe stopped: counted lost then.
			missed += l.Count
		case strings.Contains(l.What, "unreadable"):
			t.Errorf("loss: %+v", l)
		}
	}
	if ios > procs || ios+missed < procs || requests != ios || bytes != ios*4096 {
		t.Errorf("%d dd writes of 4 KiB whose completion the probe did not see: counted %d bios, %d requests, %d bytes, %d reported lost; want %d bios with a request and 4 KiB each, less those reported lost", procs, ios, requests, bytes, missed, procs)
	}
	if unseen < ios {
		t.Errorf("%d bios reported counted without their time in flight, want at least the %d dd writes counted (losses: %+v)", unseen, ios, sink.losses)
	}
	// The last dd's entry cannot be taken by a later one: counted at Stop
	// (in the 1-CPU guests most dd bios share a stack address: lost there).
	if ios == 0 {
		t.Errorf("no dd write counted when the probe stopped, want at least the last (losses: %+v)", sink.losses)
	}
}

// A long run's sweep counts an entry once it has waited longer than the
// bound with a request (not a bio still queued: a throttle may hold it),
// each once however many sweeps see it, and forgets those no longer there.
func TestStaleSplit(t *testing.T) {
	const after = time.Second
	now := uint64(100 * time.Second)
	old := uint64(now) - uint64(2*after)
	for _, tt := range []struct {
		name      string
		entries   []submitStart
		counted   []staleKey
		fresh     []staleKey
		forgotten []staleKey
	}{
		{"none", nil, nil, nil, nil},
		{"old with a request", []submitStart{{Bio: 1, Ns: old, State: startGotRq}}, nil, []staleKey{{1, old}}, nil},
		{"young", []submitStart{{Bio: 1, Ns: now - uint64(after/2), State: startGotRq}}, nil, nil, nil},
		{"from the future (read before the clock)", []submitStart{{Bio: 1, Ns: now + 5, State: startGotRq}}, nil, nil, nil},
		{"old, still queued", []submitStart{{Bio: 1, Ns: old, State: startQueued}}, nil, nil, nil},
		{"old, merged in front", []submitStart{{Bio: 1, Ns: old, State: startFront}}, nil, nil, nil},
		{"free slot", []submitStart{{Ns: old, State: startGotRq}}, nil, nil, nil},
		{"counted already", []submitStart{{Bio: 1, Ns: old, State: startGotRq}}, []staleKey{{1, old}}, nil, nil},
		{"counted, gone; its address taken again", []submitStart{{Bio: 1, Ns: old + 1, State: startGotRq}}, []staleKey{{1, old}},
			[]staleKey{{1, old + 1}}, []staleKey{{1, old}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			counted := map[staleKey]bool{}
			for _, k := range tt.counted {
				counted[k] = true
			}
			fresh, gone := staleSplit(tt.entries, now, after, counted)
			if len(fresh) != len(tt.fresh) || len(gone) != len(tt.forgotten) {
				t.Fatalf("staleSplit = %v, %v; want %v, %v", fresh, gone, tt.fresh, tt.forgotten)
			}
			for i := range fresh {
				if fresh[i] != tt.fresh[i] {
					t.Errorf("fresh[%d] = %v, want %v", i, fresh[i], tt.fresh[i])
				}
			}
			for i := range gone {
				if gone[i] != tt.forgotten[i] {
					t.Errorf("gone[%d] = %v, want %v", i, gone[i], tt.forgotten[i])
				}
			}
		})
	}
}

// The sweep's loss line says how long a bio waited before it counted it
// (the line is event.SubmitStaleWhat, in an overlap class there).
func TestStaleWhatSaysStaleAfter(t *testing.T) {
	if want := "more than " + staleAfter.String() + " for an end"; !strings.Contains(staleWhat, want) {
		t.Errorf("staleWhat = %q, want it to say %q", staleWhat, want)
	}
}

// In a long run (serve, whose Checkpoints sweep), a bio whose completion
// no program of the probe saw (forced: the completion program taken off
// the hook) is reported lost once it has waited longer than the bound,
// without waiting for the stop or for its address to be reused, and
// once only: not again by later sweeps, nor when a later bio takes its
// address (dd processes: a new one often runs on the kernel stack of one
// gone, where the bio of a small direct write is), nor at the stop, where
// it is not counted for its process either.
func TestSubmitSweepCountsStaleEnds(t *testing.T) {
	blkNeedRoot(t)
	loop := newBlkLoop(t, 16<<20)
	sink, r := startSubmitProbe(t, time.Hour)
	sr := r.(*submitRunning)
	sr.stale.mu.Lock()
	sr.stale.after = 50 * time.Millisecond
	sr.stale.mu.Unlock()
	if sr.done == nil {
		t.Fatal("sub_rq_done is not on block_rq_complete")
	}
	done := *sr.done
	if err := chainRqComplete.leave(sr.done); err != nil {
		t.Fatal(err)
	}
	var first, later ddSpawner
	first.run(t, loop.path, 1, 1, 1, 1000)
	es, err := readStarts(sr.objs.Starts)
	if err != nil {
		t.Fatal(err)
	}
	var waiting []submitStart
	for _, e := range es {
		if first.has(e.Tgid) && e.State == startGotRq {
			waiting = append(waiting, e)
		}
	}
	if len(waiting) != 1 {
		t.Fatalf("%d entries of the dd's write waiting for an end, want 1 (its completion unseen)", len(waiting))
	}
	stale := waiting[0]
	time.Sleep(100 * time.Millisecond)
	lossOf := func(ls []event.Loss, what string) (n uint64) {
		for _, l := range ls {
			if l.What == what {
				n += l.Count
			}
		}
		return n
	}
	var total uint64
	for i := 1; i <= 2; i++ {
		cp := new(blkSink)
		if err := sr.Checkpoint(cp); err != nil {
			t.Fatal(err)
		}
		n := lossOf(cp.losses, staleWhat)
		if n < 1 || !sr.stale.swept(&stale) {
			t.Fatalf("sweep %d: %d bios reported lost for an end overdue, the dd's among them: %v; want it among them (losses: %+v)", i, n, sr.stale.swept(&stale), cp.losses)
		}
		if i == 2 && n != total {
			t.Errorf("the second sweep reports %d bios lost, the first %d: want the same, each counted once", n, total)
		}
		total = n
		// No bio of the machine's other I/O (its completions unseen too,
		// the program being off) may become overdue before the second
		// sweep: then that sweep differs from the first only by counting
		// a bio again (seen once on a busy host: 7 against 5).
		sr.stale.mu.Lock()
		sr.stale.after = time.Hour
		sr.stale.mu.Unlock()
	}
	// The completions seen again; later dd processes' bios take the
	// stale one's address (most likely): own_stale finds it counted.
	m, err := chainRqComplete.join(rankSubmit, done.prog, done.next)
	if err != nil {
		t.Fatal(err)
	}
	sr.done = m
	later.run(t, loop.path, 20, 1, 1, 1000)
	var ns uint64
	reused := errors.Is(sr.objs.Swept.Lookup(stale.Bio, &ns), ebpf.ErrKeyNotExist)
	t.Logf("the stale bio's address taken by a later bio: %v", reused)
	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if n := lossOf(sink.losses, staleWhat); n < total {
		t.Errorf("at the stop %d bios reported lost for an end overdue, want at least the sweeps' %d (losses: %+v)", n, total, sink.losses)
	}
	var ios, laterIOs uint64
	for _, u := range sinkEvents[event.IOUsage](sink) {
		if u.Dev.Name != loop.name {
			continue
		}
		if first.has(u.Task.Tgid) {
			ios += u.IOs
		}
		if later.has(u.Task.Tgid) {
			laterIOs += u.IOs
		}
	}
	if ios != 0 {
		t.Errorf("the dd whose bio was reported lost is counted for %d bios at the stop, want 0: one loss, not a count too", ios)
	}
	if laterIOs != 20 {
		t.Errorf("the later dd processes' writes counted %d, want 20", laterIOs)
	}
}
