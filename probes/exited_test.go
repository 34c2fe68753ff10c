package probes

import (
	"bufio"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/whyslow/whyslow/internal/event"
)

// pidCounts follows what checkpoints say of each process, by pid (a
// process's name comes from its record on the ring, which a checkpoint
// can read after its sums): the latest count of each, and the counts of
// the pids a probe removed (Pruner), moved aside as a later process may
// get the pid again (the guests' pids wrap).
type pidCounts struct {
	latest map[uint32]uint64
	done   []uint64
}

// read notes the counts a checkpoint delivered whole (by pid).
func (c *pidCounts) read(counts map[uint32]uint64) {
	if c.latest == nil {
		c.latest = map[uint32]uint64{}
	}
	maps.Copy(c.latest, counts)
}

// removed moves the counts of the pids a Prune removed aside.
func (c *pidCounts) removed(pids []uint32) {
	for _, pid := range pids {
		if n, ok := c.latest[pid]; ok {
			c.done = append(c.done, n)
			delete(c.latest, pid)
		}
	}
}

// checkpoint checkpoints r as serve does, reads the counts of the
// checkpoint's events by pid with count, keeps the losses, and prunes the
// processes gone when prune is set.
func (c *pidCounts) checkpoint(t *testing.T, r Running, prune bool, losses *[]event.Loss, count func(*blkSink) map[uint32]uint64) {
	t.Helper()
	sink := new(blkSink)
	if err := r.(Checkpointer).Checkpoint(sink); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	c.read(count(sink))
	*losses = append(*losses, sink.losses...)
	if prune {
		gone, err := r.(Pruner).Prune()
		if err != nil {
			t.Fatalf("Prune: %v", err)
		}
		c.removed(gone)
	}
}

// total is how many counts there are and their sum.
func (c *pidCounts) total() (counted, sum uint64) {
	for _, n := range append(slices.Clone(c.done), slices.Collect(maps.Values(c.latest))...) {
		counted++
		sum += n
	}
	return counted, sum
}

// ddSpawner runs short-lived dd processes on a device and notes their
// pids.
type ddSpawner struct {
	mu      sync.Mutex
	started map[uint32]bool
	next    int // the next dd's number
}

// run runs n dd processes, workers at a time, each writing count 4 KiB
// O_DIRECT blocks to path at an offset of its own (modulo blocks). With
// busybox, a busybox shell per worker forks them (its dd runs in the
// forked shell, without an exec where busybox is built so): under qemu
// without KVM an exec of dd costs some 17 ms, which 4000 processes feel.
func (s *ddSpawner) run(t *testing.T, path string, n, workers, count, blocks int) {
	t.Helper()
	if s.started == nil {
		s.started = map[uint32]bool{}
	}
	first := s.next
	s.next += n
	bb, bbErr := exec.LookPath("busybox")
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	per := (n + workers - 1) / workers
	for w := 0; w < workers; w++ {
		lo, hi := first+w*per, min(first+(w+1)*per, first+n)
		if lo >= hi {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if bbErr == nil {
				errs <- s.shell(bb, path, lo, hi, count, blocks)
				return
			}
			for i := lo; i < hi; i++ {
				cmd := exec.Command("dd", "if=/dev/zero", "of="+path, "bs=4096", fmt.Sprintf("count=%d", count), "oflag=direct",
					fmt.Sprintf("seek=%d", (i*count)%blocks), "status=none")
				out, err := cmd.CombinedOutput()
				if cmd.Process != nil {
					s.note(cmd.Process.Pid)
				}
				if err != nil {
					errs <- fmt.Errorf("dd: %v: %s", err, out)
					return
				}
			}
			errs <- nil
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// shell runs dd number lo to hi-1 from a busybox shell, one after the
// other, and notes their pids as the shell prints them.
func (s *ddSpawner) shell(busybox, path string, lo, hi, count, blocks int) error {
	script := fmt.Sprintf(`i=%d
while [ $i -lt %d ]; do
	dd if=/dev/zero of="$1" bs=4096 count=%d oflag=direct seek=$(( (i * %d) %% %d )) 2>/dev/null &
	p=$!
	echo $p
	wait $p || { echo "dd $i failed" >&2; exit 1; }
	i=$((i + 1))
done`, lo, hi, count, count, blocks)
	cmd := exec.Command(busybox, "sh", "-c", script, "sh", path)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		pid, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
		if err != nil {
			return fmt.Errorf("busybox sh printed %q, not a pid", sc.Text())
		}
		s.note(pid)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("busybox sh running dd: %v: %s", err, stderr.String())
	}
	return nil
}

func (s *ddSpawner) note(pid int) {
	s.mu.Lock()
	s.started[uint32(pid)] = true
	s.mu.Unlock()
}

// has reports whether pid is one of the dd processes.
func (s *ddSpawner) has(pid uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.started[pid]
}

// More short-lived processes than the call histogram map holds (2048
// entries) start and exit within one checkpoint interval, as under a
// build or a cron storm on a host serve watches: the drain moves the final
// sums of those gone out of the kernel's maps every second, so none of
// their calls is lost to a full map and every one's writes are counted at
// the checkpoint; read and pruned then, as serve does, the names of the
// processes gone are forgotten, and a process started after the prune is
// counted too. With 8 histogram slots for the exit's fast path, the
// processes beyond them go to the hash map, and the slots of those gone
// are given to others, and still every write is counted.
func TestSyscallPruneExited(t *testing.T) {
	blkNeedRoot(t)
	for _, tt := range []struct {
		name  string
		slots uint32 // 0: sized to the host
	}{
		{"host's slots", 0},
		{"8 slots", 8},
	} {
		t.Run(tt.name, func(t *testing.T) {
			syscallHistSlotsFixed = tt.slots
			defer func() { syscallHistSlotsFixed = 0 }()
			syscallPruneExited(t)
		})
	}
}

func syscallPruneExited(t *testing.T) {
	const procs = 3000
	loop := newBlkLoop(t, 16<<20)
	_, r := startSyscallOn(t, (syscallProbe{}).Decl().Mechs()[0], time.Second)
	sr := r.(*syscallRunning)
	if _, ok := r.(Pruner); !ok {
		t.Fatal("the syscall probe is no Pruner")
	}
	var (
		dd     ddSpawner
		counts pidCounts
		losses []event.Loss
	)
	checkpoint := func(prune bool) {
		t.Helper()
		counts.checkpoint(t, r, prune, &losses, func(sink *blkSink) map[uint32]uint64 {
			writes := map[uint32]uint64{}
			for _, s := range sinkEvents[event.SyscallStats](sink) {
				if s.Dev.Name == loop.name && s.Call == "write" && dd.has(s.Pid) {
					writes[s.Pid] = s.Latency.Count
				}
			}
			return writes
		})
	}
	began := time.Now()
	dd.run(t, loop.path, procs, 2, 2, 1000) // one checkpoint interval: no checkpoint in between
	t.Logf("%d dd processes in %s (drains every %s)", procs, time.Since(began).Round(time.Millisecond), syscallDrainEvery)
	checkpoint(true)
	dd.run(t, loop.path, 1, 1, 2, 1000) // started after the prune
	checkpoint(false)
	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	for _, l := range losses {
		if strings.Contains(l.What, "map full") {
			t.Errorf("loss: %+v", l)
		}
	}
	counted, total := counts.total()
	// A pid used twice between two prunes is one entry with both dd's
	// writes: every write counted is what says nothing was lost.
	t.Logf("%d dd processes (%d pids) counted as %d with %d writes", procs+1, len(dd.started), counted, total)
	if total != 2*(procs+1) || counted < uint64(len(dd.started)) {
		t.Errorf("%d dd processes (%d pids) counted as %d with %d writes on %s, want %d writes and at least one count a pid", procs+1, len(dd.started), counted, total, loop.name, 2*(procs+1))
	}
	sr.mu.Lock()
	names := len(sr.comms)
	sr.mu.Unlock()
	if names > 100 {
		t.Errorf("%d process names kept after %d processes ran and were pruned", names, procs)
	}
}

// More short-lived writer processes than the I/O accounting table has
// entries per CPU (4096 on a small host) each write to a loop device
// while the submit probe runs, read and pruned at checkpoints as serve
// does: the table swapped every second never fills, so none of their bios
// is lost and every process's write is counted for it, the last ones' as
// the first ones'. With a table of 512 entries per CPU, more processes
// than all CPUs' entries together, which a table never emptied could not
// hold.
func TestSubmitIOUsageManyProcesses(t *testing.T) {
	blkNeedRoot(t)
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		bits  uint32 // 0: sized to the host
		procs func(slots int) int
		every int // processes between two checkpoints
	}{
		{"host's table", 0, func(slots int) int { return slots + 200 }, 1000},
		{"512 entries per CPU", 9, func(slots int) int { return slots*cpus + 200 }, 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ioUseBitsFixed = tt.bits
			defer func() { ioUseBitsFixed = 0 }()
			submitManyProcesses(t, tt.procs, tt.every)
		})
	}
}

// submitManyProcesses runs procsFor(the table's entries per CPU) dd
// processes, a checkpoint and a prune after every every of them.
func submitManyProcesses(t *testing.T, procsFor func(slots int) int, every int) {
	loop := newBlkLoop(t, 16<<20)
	stopSink, r := startSubmitProbe(t, time.Hour)
	sr := r.(*submitRunning)
	slots := int(sr.use.spec.MaxEntries)
	procs := procsFor(slots)
	if _, ok := r.(Pruner); !ok {
		t.Fatal("the submit probe is no Pruner")
	}
	var (
		dd     ddSpawner
		counts pidCounts
		losses []event.Loss
	)
	countBios := func(sink *blkSink) map[uint32]uint64 {
		bios := map[uint32]uint64{}
		for _, u := range sinkEvents[event.IOUsage](sink) {
			if u.Dev.Name == loop.name && dd.has(u.Task.Tgid) {
				bios[u.Task.Tgid] += u.IOs
			}
		}
		return bios
	}
	checkpoint := func(prune bool) {
		t.Helper()
		counts.checkpoint(t, r, prune, &losses, countBios)
	}
	began := time.Now()
	for left := procs; left > 0; left -= every {
		dd.run(t, loop.path, min(left, every), 2, 1, 4000)
		checkpoint(true)
	}
	t.Logf("%d dd processes in %s (table of %d entries per CPU, swapped every %s)", procs, time.Since(began).Round(time.Millisecond), slots, ioUseSwapEvery)
	checkpoint(false)
	// Stop delivers the sums whole once more, with the bios whose
	// completion the probe did not see counted (TestSubmitIOUsageUnseenCompletions).
	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	counts.read(countBios(stopSink))
	losses = append(losses, stopSink.losses...)
	for _, l := range losses {
		t.Logf("loss: %+v", l)
		if strings.Contains(l.What, "map full") || l.What == ioUseOverWhat {
			t.Errorf("loss: %+v", l)
		}
	}
	counted, total := counts.total()
	t.Logf("%d dd processes (%d pids) counted as %d with %d bios", procs, len(dd.started), counted, total)
	// A bio whose completion the probe did not see and whose address a
	// later bio took (dd's bios are on its stack: addresses recur) is
	// counted lost then (submitLossWhat's first), on whatever device: a dd
	// may be missing for each of those, never silently.
	var missed uint64
	for _, l := range losses {
		if l.What == submitLossWhat[submitSubLossKindSUB_LOSS_MISSED] {
			missed = max(missed, l.Count) // each checkpoint delivers the count so far
		}
	}
	if total < uint64(procs) && total+missed >= uint64(procs) {
		t.Logf("%d dd bios not counted, reported lost (%d bios whose end the accounting missed)", uint64(procs)-total, missed)
		total = uint64(procs)
		counted = max(counted, uint64(len(dd.started)))
	}
	if total != uint64(procs) || counted < uint64(len(dd.started)) {
		t.Errorf("%d dd processes (%d pids) counted as %d with %d bios on %s, want %d bios and at least one count a pid", procs, len(dd.started), counted, total, loop.name, procs)
	}
	sr.use.mu.Lock()
	kept := len(sr.use.sums)
	sr.use.mu.Unlock()
	if kept > every+100 {
		t.Errorf("the I/O sums hold %d keys after %d processes ran, most of them gone and pruned", kept, procs)
	}
}

// A call histogram drained keeps its non-empty slots only, and adds back
// to a map entry as the entry it was; drained twice (a pid reused before
// a checkpoint), it holds both.
func TestDrainedHist(t *testing.T) {
	var a, b syscallScHist
	a.SumNs, a.MaxNs, a.SleepNs, a.RunqNs = 300, 200, 50, 7
	a.Slots[3], a.Slots[100] = 1, 2
	b.SumNs, b.MaxNs = 40, 40
	b.Slots[3], b.Slots[5] = 1, 1
	var d drainedHist
	absorbHist(&d, &a)
	if len(d.slots) != 2 {
		t.Errorf("drained histogram holds %d slots, want the 2 non-empty ones", len(d.slots))
	}
	var back syscallScHist
	addDrainedHist(&back, &d)
	if back != a {
		t.Errorf("added back: %+v, want %+v", back, a)
	}
	absorbHist(&d, &b)
	var both, want syscallScHist
	addDrainedHist(&both, &d)
	addHist(&want, &a)
	addHist(&want, &b)
	if both != want || both.MaxNs != 200 || both.Slots[3] != 2 {
		t.Errorf("drained twice: %+v, want %+v", both, want)
	}
	// Sleep with no call returned yet (a sum the histogram reads add up
	// over the CPUs and maps) is kept through a second absorb.
	var s drainedHist
	absorbHist(&s, &syscallScHist{SleepNs: 9, RunqNs: 4, Seeded: 1})
	absorbHist(&s, &b)
	var got syscallScHist
	addDrainedHist(&got, &s)
	if got.SleepNs != 9 || got.RunqNs != 4 || got.Seeded != 1 || got.SumNs != 40 || got.Slots[5] != 1 {
		t.Errorf("a sleep-only sum absorbed then a call: %+v", got)
	}
}
