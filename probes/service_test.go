package probes

import (
	"github.com/cilium/ebpf/btf"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// Every O_DIRECT write to a loop device is a request the loop driver
// serves: the service histogram of the device counts them.
// serviceWays runs a service test both ways the probe finds a request's
// issue time: the kernel's stamp (every queue here collects statistics:
// writeback throttling) and its own slots.
func serviceWays(t *testing.T, test func(t *testing.T)) {
	for _, way := range []struct {
		name      string
		slotsOnly bool
	}{{"stamps", false}, {"slots", true}} {
		t.Run(way.name, func(t *testing.T) {
			serviceSlotsOnly = way.slotsOnly
			defer func() { serviceSlotsOnly = false }()
			test(t)
		})
	}
}

// plugClock says whether the running kernel's plugs keep the block
// layer's clock (struct blk_plug's cur_ktime, 6.9+).
func plugClock(t *testing.T) bool {
	kernel, err := kernelSpec(Config{})
	if err != nil {
		t.Fatalf("kernel BTF: %v", err)
	}
	var plug *btf.Struct
	if err := kernel.TypeByName("blk_plug", &plug); err != nil {
		t.Fatalf("struct blk_plug: %v", err)
	}
	for _, m := range plug.Members {
		if m.Name == "cur_ktime" {
			return true
		}
	}
	return false
}

func TestServiceLoopWrites(t *testing.T) {
	blkNeedRoot(t)
	serviceWays(t, testServiceLoopWrites)
}

func testServiceLoopWrites(t *testing.T) {
	const size = 64 << 20
	loop := newBlkLoop(t, size)
	sink := new(blkSink)
	r, st := serviceProbe{}.Start(Config{SysFS: "/sys", ProcFS: "/proc"}, sink)
	if st.Status != event.StatusOK || r == nil {
		t.Fatalf("starting service: %+v", st)
	}
	t.Cleanup(func() { r.Stop() })
	if st.Mechanism != event.MechTPBTF {
		t.Errorf("mechanism = %q, want %q", st.Mechanism, event.MechTPBTF)
	}

	const writes = 200
	_, done, _ := directWriter(t, loop.path, size, writes, nil)
	<-done
	// Where the loop device's queue collects statistics (writeback
	// throttling on), the kernel stamps its requests' issue and no slot is
	// ever written, unless (6.9+) the writer's plug had read the block
	// layer's clock before the issue (the stamp would be that earlier
	// time); the slots' way writes one per request object (a completion
	// frees its slot, the issue time stays; a device reuses a fixed set
	// of request objects).
	if wbt := readTrim(filepath.Join("/sys/block", loop.name, "queue", "wbt_lat_usec")); wbt != "" && wbt != "0" {
		var k uint32
		var v struct{ Rq, Ns uint64 }
		it := r.(*serviceRunning).objs.Issued.Iterate()
		used := 0
		for it.Next(&k, &v) {
			if v.Ns != 0 {
				used++
			}
		}
		if err := it.Err(); err != nil {
			t.Fatalf("reading the slots: %v", err)
		}
		if !serviceSlotsOnly && used > 0 && !plugClock(t) {
			t.Errorf("%d slots written, want none: the loop device's queue collects statistics (wbt_lat_usec %s), its issue times are the kernel's", used, wbt)
		}
		if serviceSlotsOnly && used == 0 {
			t.Errorf("no slot written, want one per request object (%d writes)", writes)
		}
		t.Logf("%d slots written", used)
	}
	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	h, ok := sink.hist(timeline.HistService, loop.name)
	if !ok {
		t.Fatalf("no service histogram for %s; got %+v", loop.name, sink.hists)
	}
	if h.dev.Major != loop.major || h.dev.Minor != loop.minor {
		t.Errorf("histogram device %d:%d, want %d:%d", h.dev.Major, h.dev.Minor, loop.major, loop.minor)
	}
	// A request whose slot another device's request took while it was in
	// flight is not timed; it is counted as a loss instead (map full).
	var lost uint64
	for _, l := range sink.losses {
		if l.Probe == event.ProbeService {
			lost += l.Count
		}
	}
	if h.h.Count+lost < writes || lost > writes/10 {
		t.Errorf("histogram count %d and %d losses, want %d writes timed or counted lost (at most a tenth lost)", h.h.Count, lost, writes)
	}
	// A write through the loop driver to a file takes microseconds at least.
	if p50 := h.h.Quantile(0.5); p50 < time.Microsecond || time.Duration(h.h.MaxNs) < p50 {
		t.Errorf("p50 %v max %v: not a plausible service time", p50, time.Duration(h.h.MaxNs))
	}
	for _, l := range sink.losses {
		t.Logf("loss: %+v", l)
	}
	assertProgsUnloaded(t, "svc_rq_issue", "svc_rq_complete")
}

// Many requests in flight at once (64 writers, each with a write in
// flight) out of many request objects (mq-deadline with 1024 requests):
// every request is timed and none is lost. The issue times wait in slots
// by request pointer; a device's requests are a fixed set of objects (its
// tags' or its scheduler's), so whether two of those in flight together
// share a slot depends on where the kernel put them: where they do, the
// second waits in the spill table. (On the machine this was written on,
// no two did, with the spill or without: this load guards the counts, it
// cannot force a collision.)
func TestServiceManyInFlight(t *testing.T) {
	blkNeedRoot(t)
	serviceWays(t, testServiceManyInFlight)
}

func testServiceManyInFlight(t *testing.T) {
	const size = 64 << 20
	loop := newBlkLoop(t, size)
	queue := filepath.Join("/sys/block", loop.name, "queue")
	// The loop device outlives the test: its scheduler and size put back.
	oldSched, oldNr := activeScheduler(filepath.Join(queue, "scheduler")), readTrim(filepath.Join(queue, "nr_requests"))
	t.Cleanup(func() {
		if oldSched != "" {
			os.WriteFile(filepath.Join(queue, "scheduler"), []byte(oldSched), 0o644)
		}
		if oldNr != "" {
			os.WriteFile(filepath.Join(queue, "nr_requests"), []byte(oldNr), 0o644)
		}
	})
	if err := os.WriteFile(filepath.Join(queue, "scheduler"), []byte("mq-deadline"), 0o644); err != nil {
		t.Logf("no mq-deadline on %s (%v): its own requests only", loop.name, err)
	} else if err := os.WriteFile(filepath.Join(queue, "nr_requests"), []byte("1024"), 0o644); err != nil {
		t.Logf("nr_requests of %s: %v", loop.name, err)
	}
	t.Logf("%s: %s, %s requests", loop.name, activeScheduler(filepath.Join(queue, "scheduler")), readTrim(filepath.Join(queue, "nr_requests")))
	sink := new(blkSink)
	r, st := serviceProbe{}.Start(Config{SysFS: "/sys", ProcFS: "/proc"}, sink)
	if st.Status != event.StatusOK || r == nil {
		t.Fatalf("starting service: %+v", st)
	}
	t.Cleanup(func() { r.Stop() })

	const writers, each = 64, 300
	var dones []<-chan struct{}
	for range writers {
		_, done, _ := directWriter(t, loop.path, size, each, nil)
		dones = append(dones, done)
	}
	for _, d := range dones {
		<-d
	}
	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	h, ok := sink.hist(timeline.HistService, loop.name)
	if !ok {
		t.Fatalf("no service histogram for %s; got %+v", loop.name, sink.hists)
	}
	// A completion the kernel ran no program for (6.18 skips some in
	// softirqs: submitleft.go) is counted, never silent; any other loss
	// fails, and so do more than a few of those.
	writes := uint64(writers * each)
	var missed uint64
	for _, l := range sink.losses {
		if l.Probe != event.ProbeService {
			continue
		}
		if l.What == serviceLossWhat[serviceSvcLossKindSVC_LOSS_MISSED] && l.Count <= writes/1000 {
			missed += l.Count
			t.Logf("counted: %+v", l)
			continue
		}
		// The same completions, against the disk's statistics
		// (completions.go).
		if l.What == unseenCompletionsWhat(loop.name, false) && l.Count <= writes/1000 {
			t.Logf("counted: %+v", l)
			continue
		}
		t.Errorf("loss: %+v", l)
	}
	// Writes merged into a request in flight are fewer requests; at
	// random offsets over 16384 blocks they are rare.
	if got := h.h.Count + missed; got < writes*9/10 || h.h.Count > writes+100 {
		t.Errorf("histogram count %d (+%d counted missed), want the %d writes' requests", h.h.Count, missed, writes)
	}
	t.Logf("%d requests timed", h.h.Count)
}

// activeScheduler is the scheduler in brackets in a queue's scheduler
// file ("none", "mq-deadline"), "" when unreadable.
func activeScheduler(path string) string {
	s := readTrim(path)
	if i := strings.IndexByte(s, '['); i >= 0 {
		if j := strings.IndexByte(s[i:], ']'); j > 0 {
			return s[i+1 : i+j]
		}
	}
	return ""
}

// readTrim is a file's content without surrounding space, "" when unreadable.
func readTrim(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

// A request whose completion never reaches the service probe is counted
// lost, not dropped silently: with svc_rq_complete taken off
// block_rq_complete, each request object the loop device issues again
// finds its earlier issue still in its slot (the slots' way: the kernel's
// stamps leave nothing behind to see). With the completion on, none is
// counted (TestServiceLoopWrites, TestHookChainRqComplete).
func TestServiceCountsMissedCompletions(t *testing.T) {
	blkNeedRoot(t)
	serviceSlotsOnly = true
	defer func() { serviceSlotsOnly = false }()
	loop := newBlkLoop(t, 64<<20)
	sink := new(blkSink)
	r, st := serviceProbe{}.Start(Config{SysFS: "/sys", ProcFS: "/proc"}, sink)
	if st.Status != event.StatusOK || r == nil {
		t.Fatalf("starting service: %+v", st)
	}
	t.Cleanup(func() { r.Stop() })
	if err := chainRqComplete.leave(r.(*serviceRunning).complete); err != nil {
		t.Fatal(err)
	}
	const writes = 200
	chainWrites(t, loop.path, 0, writes)
	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	var missed uint64
	for _, l := range sink.losses {
		t.Logf("loss: %+v", l)
		if l.Probe == event.ProbeService && l.What == serviceLossWhat[serviceSvcLossKindSVC_LOSS_MISSED] {
			missed += l.Count
		}
	}
	// One write in flight at a time: the device reuses a few request
	// objects, each issue but their first finds its own earlier one.
	if missed < writes/2 || missed > writes {
		t.Errorf("%d requests counted with a missed completion, want most of %d", missed, writes)
	}
}
