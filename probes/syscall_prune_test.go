package probes

import (
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// More short-lived processes than the call histogram map holds (2048
// entries), read and pruned at checkpoints as serve does, lose no call to
// a full map: every one's writes are counted at some checkpoint, the one
// started at the end too, and the names of the processes gone are
// forgotten.
func TestSyscallPruneExited(t *testing.T) {
	blkNeedRoot(t)
	const procs, every = 3000, 500
	loop := newBlkLoop(t, 16<<20)
	_, r := startSyscallOn(t, (syscallProbe{}).Decl().Mechs()[0], time.Second)
	sr := r.(*syscallRunning)
	pruner, ok := r.(Pruner)
	if !ok {
		t.Fatal("the syscall probe is no Pruner")
	}
	// The latest count of each dd on the loop device, by pid; a pid the
	// probe removed moves its count to done (a later dd may get the pid
	// again: the guests' pids wrap).
	writes := map[uint32]uint64{}
	var done []uint64
	started := map[int]bool{} // the dd pids
	var losses []event.Loss
	checkpoint := func(prune bool) {
		t.Helper()
		sink := new(blkSink)
		if err := r.(Checkpointer).Checkpoint(sink); err != nil {
			t.Fatalf("Checkpoint: %v", err)
		}
		for _, s := range sinkEvents[event.SyscallStats](sink) {
			// by pid: a process's name comes from its record on the ring,
			// which a checkpoint can read before (its Comm is "" then)
			if s.Dev.Name == loop.name && s.Call == "write" && started[int(s.Pid)] {
				writes[s.Pid] = s.Latency.Count
			}
		}
		losses = append(losses, sink.losses...)
		if prune {
			gone, err := pruner.Prune()
			if err != nil {
				t.Fatalf("Prune: %v", err)
			}
			for _, pid := range gone {
				if n, ok := writes[pid]; ok {
					done = append(done, n)
					delete(writes, pid)
				}
			}
		}
	}
	dd := func(i int) {
		cmd := exec.Command("dd", "if=/dev/zero", "of="+loop.path, "bs=4096", "count=2", "oflag=direct",
			fmt.Sprintf("seek=%d", i%1000), "status=none")
		out, err := cmd.CombinedOutput()
		if cmd.Process != nil {
			started[cmd.Process.Pid] = true
		}
		if err != nil {
			t.Fatalf("dd: %v: %s", err, out)
		}
	}
	for i := 0; i < procs; i++ {
		dd(i)
		if (i+1)%every == 0 {
			checkpoint(true)
		}
	}
	dd(procs) // started at the end, after the last prune
	checkpoint(false)
	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	for _, l := range losses {
		if strings.Contains(l.What, "map full") {
			t.Errorf("loss: %+v", l)
		}
	}
	var counted, total uint64
	for _, n := range append(done, slices.Collect(maps.Values(writes))...) {
		counted++
		total += n
	}
	// A pid used twice between two prunes is one entry with both dd's
	// writes: every write counted is what says nothing was lost.
	t.Logf("%d dd processes (%d pids) counted as %d with %d writes", procs+1, len(started), counted, total)
	if total != 2*(procs+1) || counted < uint64(len(started)) {
		t.Errorf("%d dd processes (%d pids) counted as %d with %d writes on %s, want %d writes and at least one count a pid", procs+1, len(started), counted, total, loop.name, 2*(procs+1))
	}
	sr.mu.Lock()
	names := len(sr.comms)
	sr.mu.Unlock()
	if names > every+100 {
		t.Errorf("%d process names kept after %d processes ran, most of them gone", names, procs)
	}
}
