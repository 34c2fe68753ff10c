package probes

import (
	"strings"
	"testing"
	"time"

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
	}{
		{"none", nil, nil, nil, 0},
		{"process gone: counted with its request", []submitStart{gotRq}, []uint32{100},
			[]submitIoUse{{Tgid: 100, Dev: 7 << 20, Cgroup: 7, Op: 1, Flags: 1, Used: 1, Ios: 1, Requests: 1, Bytes: 4096, Comm: comm}}, 0},
		{"process there: in flight", []submitStart{gotRq}, nil, nil, 0},
		{"free slot", []submitStart{{Tgid: 100, Dev: 1}}, []uint32{100}, nil, 0},
		{"merged in front: counted at its merge", []submitStart{{Bio: 0x20, Tgid: 100, Dev: 1, State: startFront}}, []uint32{100}, nil, 0},
		{"queued with its device noted: no request", []submitStart{{Bio: 0x30, Tgid: 100, Dev: 1, Bytes: 512, State: startQueued}}, []uint32{100},
			[]submitIoUse{{Tgid: 100, Dev: 1, Used: 1, Ios: 1, Bytes: 512}}, 0},
		{"queued, device unknown", []submitStart{{Bio: 0x30, Tgid: 100, State: startQueued}}, []uint32{100}, nil, 1},
		{"two processes, one gone", []submitStart{gotRq, {Bio: 0x40, Tgid: 200, Dev: 1, State: startGotRq}, gotRq}, []uint32{100},
			[]submitIoUse{
				{Tgid: 100, Dev: 7 << 20, Cgroup: 7, Op: 1, Flags: 1, Used: 1, Ios: 1, Requests: 1, Bytes: 4096, Comm: comm},
				{Tgid: 100, Dev: 7 << 20, Cgroup: 7, Op: 1, Flags: 1, Used: 1, Ios: 1, Requests: 1, Bytes: 4096, Comm: comm},
			}, 0},
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
