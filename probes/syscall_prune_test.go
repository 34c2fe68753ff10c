package probes

import (
	"fmt"
	"os/exec"
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
	writes := map[uint32]uint64{} // the latest count of each dd on the loop device
	var losses []event.Loss
	checkpoint := func(prune bool) {
		t.Helper()
		sink := new(blkSink)
		if err := r.(Checkpointer).Checkpoint(sink); err != nil {
			t.Fatalf("Checkpoint: %v", err)
		}
		for _, s := range sinkEvents[event.SyscallStats](sink) {
			if s.Dev.Name == loop.name && s.Call == "write" && s.Comm == "dd" {
				writes[s.Pid] = s.Latency.Count
			}
		}
		losses = append(losses, sink.losses...)
		if prune {
			if _, err := pruner.Prune(); err != nil {
				t.Fatalf("Prune: %v", err)
			}
		}
	}
	dd := func(i int) {
		out, err := exec.Command("dd", "if=/dev/zero", "of="+loop.path, "bs=4096", "count=2", "oflag=direct",
			fmt.Sprintf("seek=%d", i%1000), "status=none").CombinedOutput()
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
	for _, n := range writes {
		counted++
		total += n
	}
	if counted != procs+1 || total != 2*(procs+1) {
		t.Errorf("%d dd processes counted with %d writes on %s, want %d with %d", counted, total, loop.name, procs+1, 2*(procs+1))
	}
	sr.mu.Lock()
	names := len(sr.comms)
	sr.mu.Unlock()
	if names > every+100 {
		t.Errorf("%d process names kept after %d processes ran, most of them gone", names, procs)
	}
}
