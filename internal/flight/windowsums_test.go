package flight

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// exitStorm is the states of a window of checkpoints taken while many
// short-lived processes made storage calls: running processes (pids
// 1..running, "fio") whose sums grow, and at each checkpoint perCkpt new
// processes that exited after a few calls, a sleep in a stack and a memory
// stall each, read whole by that checkpoint and pruned by it. comm names
// the i-th exited process.
func exitStorm(ckpts, running, perCkpt int, comm func(i int) string) []State {
	loop := event.Device{Major: 7, Minor: 0, Name: "loop0"}
	stack := []event.Frame{{Addr: 0x10, Symbol: "blk_mq_get_tag"}}
	states := []State{{At: 0}}
	next := uint32(1000)
	for c := 1; c <= ckpts; c++ {
		st := State{At: event.Mono(c) * event.Mono(10*time.Second)}
		for p := 1; p <= running; p++ {
			lat := make([]uint64, 10*c)
			for i := range lat {
				lat[i] = 1000 * uint64(p)
			}
			st.Stats = append(st.Stats, event.SyscallStats{Pid: uint32(p), Comm: "fio", Call: "pwrite64", Dev: loop,
				Latency: histOf(lat...), Sleep: time.Duration(c) * time.Millisecond})
			st.Blocked = append(st.Blocked, event.BlockedStack{Pid: uint32(p), Comm: "fio", Call: "pwrite64", Dev: loop,
				Total: time.Duration(c) * time.Millisecond, Count: uint64(c), KernelStack: stack})
		}
		for i := 0; i < perCkpt; i++ {
			pid := next
			next++
			name := comm(int(pid))
			st.Stats = append(st.Stats, event.SyscallStats{Pid: pid, Comm: name, Call: "write", Dev: loop,
				Latency: histOf(2000, 4000, 8000), Sleep: 3 * time.Microsecond})
			st.Blocked = append(st.Blocked, event.BlockedStack{Pid: pid, Comm: name, Call: "write", Dev: loop,
				Total: 3 * time.Microsecond, Count: 1, KernelStack: stack})
			st.MemStalls = append(st.MemStalls, event.MemStall{Pid: pid, Comm: name, Call: "write", Dev: loop,
				Kind: event.MemDirectReclaim, Total: time.Microsecond, Count: 1, Max: time.Microsecond})
			st.Pruned = append(st.Pruned, pid)
		}
		states = append(states, st)
	}
	return states
}

// totals are what a window's sums count, whoever they are counted under.
type totals struct {
	calls                    uint64
	sleep, blocked, stalled  time.Duration
	sleeps, stalls           uint64
	stats, stacks, memStalls int
}

func totalsOf(tl *timeline.Timeline) totals {
	var t totals
	for _, s := range tl.SyscallStats {
		t.calls += s.Latency.Count
		t.sleep += s.Sleep
	}
	for _, b := range tl.BlockedStacks {
		t.blocked += b.Total
		t.sleeps += b.Count
	}
	for _, m := range tl.MemStalls {
		t.stalled += m.Total
		t.stalls += m.Count
	}
	t.stats, t.stacks, t.memStalls = len(tl.SyscallStats), len(tl.BlockedStacks), len(tl.MemStalls)
	return t
}

func lossOf(tl *timeline.Timeline, probe, what string) uint64 {
	for _, l := range tl.Losses {
		if l.Probe == probe && l.What == what {
			return l.Count
		}
	}
	return 0
}

// What serve holds of a window's checkpoints stays within the documented
// bound however many processes exit in it: the state at its start without
// sums, the latest state without the sums of the processes it pruned, and
// the window's sums, whose exited processes fold per command once over the
// bound. Holding every state of the window (and counting the sums along
// them, AddSumsChain) took memory in proportion to the processes that
// exited. Nothing is lost by folding but process ids, and that is counted.
func TestWindowSumsBoundManyExited(t *testing.T) {
	cmds := []string{"sh", "dd", "cp"}
	states := exitStorm(6, 50, 2000, func(i int) string { return cmds[i%3] })
	var whole timeline.Timeline
	AddSumsChain(&whole, states)

	bound := DefaultSumsBound.Bytes()
	var held int64 // every state of the window, as serve held them before
	for _, st := range states[1:] {
		held += st.SumsBytes()
	}
	if held <= bound {
		t.Fatalf("the storm's states take %d bytes, within the bound %d: the test shows nothing", held, bound)
	}

	var ws WindowSums
	prev := states[0].Carried()
	for i, st := range states[1:] {
		ws.Add(st, prev)
		prev = st.Carried()
		if ws.Bytes() > bound {
			t.Fatalf("checkpoint %d: the window's sums take %d bytes, over the bound %d", i+1, ws.Bytes(), bound)
		}
		if n := len(prev.Stats); n != 50 {
			t.Errorf("checkpoint %d: the state carried holds %d call sums, want the 50 running processes'", i+1, n)
		}
	}
	var tl timeline.Timeline
	losses := ws.Take(&tl)
	got, want := totalsOf(&tl), totalsOf(&whole)
	if got.calls != want.calls || got.sleep != want.sleep || got.blocked != want.blocked || got.sleeps != want.sleeps ||
		got.stalled != want.stalled || got.stalls != want.stalls {
		t.Errorf("folded sums count %+v, want the totals of the sums counted whole %+v", got, want)
	}
	// The running processes keep their sums as they were; the exited
	// ones are one process per command.
	perPid := map[uint32]uint64{}
	for _, s := range tl.SyscallStats {
		perPid[s.Pid] += s.Latency.Count
	}
	for _, s := range whole.SyscallStats {
		if s.Pid <= 50 && perPid[s.Pid] != s.Latency.Count {
			t.Errorf("running pid %d: %d calls, want %d", s.Pid, perPid[s.Pid], s.Latency.Count)
		}
	}
	if got.stats != 50+len(cmds) || got.stacks != 50+len(cmds) || got.memStalls != len(cmds) {
		t.Errorf("%d call sums, %d stacks, %d stalls; want the 50 running processes' and one per command (%d)",
			got.stats, got.stacks, got.memStalls, len(cmds))
	}
	folded := uint64(want.stats + want.stacks + want.memStalls - got.stats - got.stacks - got.memStalls)
	if n := lossOf(&tl, event.ProbeSyscall, FoldedLoss); n != folded {
		t.Errorf("folded loss counted %d, want %d (the sums merged into another)", n, folded)
	}
	if len(losses) != 1 || losses[0].Count != folded {
		t.Errorf("Take returned %+v, want the fold's loss", losses)
	}
	if ws.Len() != 0 || len(ws.Losses()) != 0 {
		t.Errorf("after Take the window's sums hold %d sums and %d losses, want none", ws.Len(), len(ws.Losses()))
	}
}

// When folding per command is not enough (every exited process with a
// name of its own), the exited processes' sums are dropped down to the
// bound, counted; the running processes' are kept whole.
func TestWindowSumsDropsBeyondFolding(t *testing.T) {
	states := exitStorm(3, 20, 1000, func(i int) string { return fmt.Sprintf("job-%d", i) })
	ws := WindowSums{Bound: SumsBound{Stats: 500, Blocked: 500, MemStalls: 500, IOUsage: 500}}
	prev := states[0].Carried()
	for i, st := range states[1:] {
		ws.Add(st, prev)
		prev = st.Carried()
		// What the window remembers of its exited processes and of the
		// commands they fold under is bounded with their sums: at most
		// one per process whose sums are held.
		if n, m := len(ws.exited), len(ws.rep); n > 1500 || m > 1500 {
			t.Errorf("checkpoint %d: %d exited processes and %d commands remembered for %d sums held, want at most one per process held",
				i+1, n, m, ws.Len())
		}
	}
	var whole timeline.Timeline
	AddSumsChain(&whole, states)
	var tl timeline.Timeline
	ws.Take(&tl)
	got, want := totalsOf(&tl), totalsOf(&whole)
	if got.stats != 500 || got.stacks != 500 || got.memStalls != 500 {
		t.Errorf("%d call sums, %d stacks, %d stalls, want 500 each (the bound)", got.stats, got.stacks, got.memStalls)
	}
	running := 0
	for _, s := range tl.SyscallStats {
		if s.Pid <= 20 {
			running++
		}
	}
	if running != 20 {
		t.Errorf("%d running processes' call sums kept, want all 20", running)
	}
	dropped := uint64(want.stats + want.stacks + want.memStalls - 1500)
	if n := lossOf(&tl, event.ProbeSyscall, DroppedSumsLoss); n != dropped {
		t.Errorf("dropped loss counted %d, want %d", n, dropped)
	}
	if n := lossOf(&tl, event.ProbeSyscall, FoldedLoss); n != 0 {
		t.Errorf("folded loss counted %d, want 0: no two exited processes share a command", n)
	}
}

// The submit probe's I/O sums fold the same way, under its own bound and
// its own list of processes pruned (PrunedIO), counted as its loss.
func TestWindowSumsFoldsIOUsage(t *testing.T) {
	loop := event.Device{Major: 7, Minor: 0, Name: "loop0"}
	states := []State{{At: 0}}
	next := uint32(100)
	for c := 1; c <= 3; c++ {
		st := State{At: event.Mono(c)}
		st.IOUsage = append(st.IOUsage, event.IOUsage{Task: event.Task{Pid: 1, Tgid: 1, Comm: "fio"}, Dev: loop, Op: "write",
			IOs: uint64(100 * c), Bytes: uint64(409600 * c)})
		for i := 0; i < 40; i++ {
			st.IOUsage = append(st.IOUsage, event.IOUsage{Task: event.Task{Pid: next, Tgid: next, Comm: "dd"}, Dev: loop, Op: "write",
				IOs: 2, Bytes: 8192})
			st.PrunedIO = append(st.PrunedIO, next)
			next++
		}
		states = append(states, st)
	}
	ws := WindowSums{Bound: SumsBound{IOUsage: 50}}
	prev := states[0].Carried()
	for _, st := range states[1:] {
		ws.Add(st, prev)
		prev = st.Carried()
	}
	var tl timeline.Timeline
	ws.Take(&tl)
	var ios, bytes uint64
	for _, u := range tl.IOUsage {
		ios += u.IOs
		bytes += u.Bytes
	}
	if ios != 300+120*2 || bytes != 3*409600+120*8192 {
		t.Errorf("I/O sums count %d bios, %d bytes; want %d, %d", ios, bytes, 300+120*2, 3*409600+120*8192)
	}
	if len(tl.IOUsage) > 50 {
		t.Errorf("%d I/O sums, over the bound of 50", len(tl.IOUsage))
	}
	if lossOf(&tl, event.ProbeSubmit, FoldedLoss) == 0 {
		t.Errorf("no fold counted for the submit probe: %+v", tl.Losses)
	}
}

// A window counted checkpoint by checkpoint (serve's windows, /trace)
// has the calls still in the kernel at its last checkpoint, cut to the
// window as a window counted along its chain has them (AddSumsChain): a
// call begun before the window counts from the window's start.
func TestWindowSumsUnfinished(t *testing.T) {
	loop := event.Device{Major: 7, Minor: 0, Name: "loop0"}
	hung := func(at event.Mono) event.UnfinishedCall {
		return event.UnfinishedCall{Time: at, Start: 5, Task: event.Task{Pid: 2, Tgid: 2}, Call: "pread64", Dev: loop,
			InCall: time.Duration(at - 5), Asleep: time.Duration(at - 6)}
	}
	chain := []State{{At: 10, Unfinished: []event.UnfinishedCall{hung(10)}}, {At: 20, Unfinished: []event.UnfinishedCall{hung(20)}},
		{At: 30, Unfinished: []event.UnfinishedCall{hung(30)}}}
	var w WindowSums
	for i := 1; i < len(chain); i++ {
		w.Add(chain[i], chain[i-1])
	}
	var got, want timeline.Timeline
	w.Take(&got)
	AddSumsChain(&want, chain)
	if len(got.UnfinishedCalls) != 1 || !reflect.DeepEqual(got.UnfinishedCalls, want.UnfinishedCalls) {
		t.Fatalf("window's unfinished calls %+v, want %+v", got.UnfinishedCalls, want.UnfinishedCalls)
	}
	if u := got.UnfinishedCalls[0]; u.Start != 10 || u.InCall != 20 {
		t.Errorf("the hung call counts from %d for %d, want from the window's start 10 for 20", u.Start, u.InCall)
	}
	var next timeline.Timeline
	w.Take(&next)
	if len(next.UnfinishedCalls) != 0 {
		t.Errorf("an empty stretch after Take has unfinished calls %+v", next.UnfinishedCalls)
	}
}
