package probes

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/scenario"
	"github.com/whyslow/whyslow/internal/timeline"
)

// fullLoop attaches a loop device of size bytes over a sparse file on a
// tmpfs of 1 MiB: writes past the first megabyte of data fail (the loop
// driver fails them: an I/O error up to 6.x, "no space" on newer kernels). It returns the device's name and
// path; the cleanup detaches it and unmounts the tmpfs.
func fullLoop(t *testing.T, size int64) (name, path string) {
	t.Helper()
	scenario.Hold(t)
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "whyslow-test", dir).CombinedOutput(); err != nil {
		t.Fatalf("mounting a tmpfs: %v: %s", err, out)
	}
	// The loop device's detach (the cleanup below, run first) can finish
	// a moment after losetup returns, while the device is still held open
	// (the kernel then clears it at the last close): the tmpfs is busy
	// until then, so the unmount is tried again for up to 2 s.
	t.Cleanup(func() {
		var out []byte
		var err error
		for i := 0; i < 40; i++ {
			if out, err = exec.Command("umount", dir).CombinedOutput(); err == nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Errorf("unmounting %s: %v: %s", dir, err, out)
	})
	backing := filepath.Join(dir, "backing.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	path = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", path).CombinedOutput(); err != nil {
			t.Errorf("detaching %s: %v: %s", path, err, out)
		}
	})
	return filepath.Base(path), path
}

// Writes to a loop device whose backing file cannot grow fail: each failed
// request is a DeviceFault of kind error on that device: an I/O error (or
// "no space") of a write.
func TestDevfaultLoopErrors(t *testing.T) {
	blkNeedRoot(t)
	const size = 16 << 20
	name, path := fullLoop(t, size)
	sink := new(blkSink)
	r, st := devfaultProbe{}.Start(Config{SysFS: "/sys", ProcFS: "/proc"}, sink)
	if st.Status != event.StatusOK || r == nil {
		t.Fatalf("starting devfault: %+v", st)
	}
	t.Cleanup(func() { r.Stop() })

	_, failed := chainWrites(t, path, 0, 512)
	if failed == 0 {
		t.Fatalf("no write to %s failed: the tmpfs under it did not fill", path)
	}
	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	var errs int
	for _, f := range sinkEvents[event.DeviceFault](sink) {
		if f.Dev.Name != name {
			continue
		}
		ioErr := f.Status == "I/O error" && f.Errno == -5
		noSpace := f.Status == "no space" && f.Errno == -28
		if f.Kind != event.FaultError || f.Op != "write" || !ioErr && !noSpace {
			t.Errorf("fault %+v, want an I/O error or no space of a write", f)
			continue
		}
		errs++
	}
	t.Logf("%d writes failed, %d faults on %s", failed, errs, name)
	if errs < failed {
		t.Errorf("%d faults on %s for %d failed writes", errs, name, failed)
	}
	assertProgsUnloaded(t, "df_rq_complete", "df_rq_requeue")
}

// A failed request whose completion no program of whyslow's saw (forced:
// service's and devfault's completion programs taken off
// block_rq_complete) cannot be among the faults, but it is not missing
// silently: with devfault, the group reports the completions the service
// probe counted missed as devfault's loss too, at each checkpoint (serve)
// and at the stop, so the faults and that loss together cover the failed
// writes (service counts a missed completion when its request object is
// issued again: all but the last of each object's).
func TestDevfaultCountsUnseenCompletions(t *testing.T) {
	blkNeedRoot(t)
	serviceSlotsOnly = true
	defer func() { serviceSlotsOnly = false }()
	name, path := fullLoop(t, 16<<20)
	sink := new(blkSink)
	g := Start(Config{SysFS: "/sys", ProcFS: "/proc"}, sink, serviceProbe{}, devfaultProbe{})
	t.Cleanup(func() { g.Stop() })
	for _, st := range g.Statuses() {
		if st.Status != event.StatusOK {
			t.Fatalf("starting %s: %+v", st.Name, st)
		}
	}
	g.mu.Lock()
	for _, s := range g.running {
		var m *rqMember
		switch r := s.r.(type) {
		case *serviceRunning:
			m = r.complete
		case *devfaultRunning:
			m = r.complete
		}
		if err := chainRqComplete.leave(m); err != nil {
			t.Fatal(err)
		}
	}
	g.mu.Unlock()
	_, failed := chainWrites(t, path, 0, 512)
	if failed == 0 {
		t.Fatalf("no write to %s failed: the tmpfs under it did not fill", path)
	}
	lossOf := func(ls []event.Loss, probe, what string) (n uint64) {
		for _, l := range ls {
			if l.Probe == probe && l.What == what {
				n += l.Count
			}
		}
		return n
	}
	missedWhat := serviceLossWhat[serviceSvcLossKindSVC_LOSS_MISSED]
	// How many times a loss is delivered: once a pass, each to its
	// pass's sink, or the counts are double (or under) counted.
	times := func(ls []event.Loss, probe, what string) (n int) {
		for _, l := range ls {
			if l.Probe == probe && l.What == what {
				n++
			}
		}
		return n
	}
	sink.mu.Lock()
	runLosses, runHists := len(sink.losses), len(sink.hists)
	sink.mu.Unlock()
	cp := new(blkSink)
	if err := g.Checkpoint(cp); err != nil {
		t.Fatal(err)
	}
	// The service probe's per-disk shortfall against the kernel's counts
	// (completions.go): with its program off the hook, every write.
	shortfall := func(ls []event.Loss) (n uint64) {
		for _, l := range ls {
			if l.Probe == event.ProbeService && strings.HasPrefix(l.What, unseenCompletionsPrefix) {
				n += l.Count
			}
		}
		return n
	}
	if m, k, u := lossOf(cp.losses, event.ProbeService, missedWhat), shortfall(cp.losses), lossOf(cp.losses, event.ProbeDevFault, devfaultUnseenWhat); u == 0 || u != max(m, k) {
		t.Errorf("checkpoint: devfault reports %d completions unseen, service %d missed, %d short of the kernel's counts; want the larger, not 0 (losses: %+v)", u, m, k, cp.losses)
	}
	for _, w := range []struct{ probe, what string }{{event.ProbeService, missedWhat}, {event.ProbeDevFault, devfaultUnseenWhat}} {
		if n := times(cp.losses, w.probe, w.what); n != 1 {
			t.Errorf("checkpoint: %s's %q delivered %d times, want once", w.probe, w.what, n)
		}
	}
	sink.mu.Lock()
	if len(sink.losses) != runLosses || len(sink.hists) != runHists {
		t.Errorf("the checkpoint delivered %d losses and %d histograms to the run's sink, not its own: counted twice in the run (losses: %+v)",
			len(sink.losses)-runLosses, len(sink.hists)-runHists, sink.losses[runLosses:])
	}
	sink.mu.Unlock()
	cpMissed := lossOf(cp.losses, event.ProbeService, missedWhat)
	if err := g.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	for _, w := range []struct{ probe, what string }{{event.ProbeService, missedWhat}, {event.ProbeDevFault, devfaultUnseenWhat}} {
		if n := times(sink.losses, w.probe, w.what); n != 1 {
			t.Errorf("stop: %s's %q delivered %d times, want once", w.probe, w.what, n)
		}
	}
	if m := lossOf(sink.losses, event.ProbeService, missedWhat); m < cpMissed {
		t.Errorf("stop: service reports %d missed, fewer than the %d of the checkpoint before: the counts are cumulative", m, cpMissed)
	}
	errs := uint64(0)
	for _, f := range sinkEvents[event.DeviceFault](sink) {
		if f.Dev.Name == name && f.Kind == event.FaultError {
			errs++
		}
	}
	missed, unseen, short := lossOf(sink.losses, event.ProbeService, missedWhat), lossOf(sink.losses, event.ProbeDevFault, devfaultUnseenWhat), shortfall(sink.losses)
	t.Logf("%d writes failed; %d faults on %s, %d completions devfault reports unseen, service %d missed, %d short of the kernel's counts", failed, errs, name, unseen, missed, short)
	if unseen != max(missed, short) {
		t.Errorf("at the stop devfault reports %d completions unseen, service %d missed, %d short of the kernel's counts: want the larger", unseen, missed, short)
	}
	if short < uint64(failed) {
		t.Errorf("%d writes failed unseen, %d completions reported short of the kernel's counts", failed, short)
	}
	if errs+unseen < uint64(failed) {
		t.Errorf("%d failed writes, %d faults and %d completions devfault reports unseen: failed writes missing silently", failed, errs, unseen)
	}
	// The lines stay, but the run's total counts those completions once:
	// devfault's line is the larger of service's missed count and its
	// per-disk shortfalls again, all in one overlap class.
	tl := new(timeline.Timeline)
	var sum uint64
	for _, l := range sink.losses {
		tl.AddLoss(l)
		sum += l.Count
	}
	if got, want := tl.LostEvents(), sum-missed-short; got != want {
		t.Errorf("lost events in all %d, want %d: the %d unseen completions once, not twice (losses: %+v)", got, want, unseen, tl.Losses)
	}
}
