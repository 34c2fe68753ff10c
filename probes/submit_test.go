package probes

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

var submitProgNames = []string{"sub_bio_queue", "sub_getrq", "sub_backmerge", "sub_frontmerge", "sub_rq_done", "sub_rq_merge", "sub_bio_done"}

func startSubmitProbe(t *testing.T, minLatency time.Duration) (*blkSink, Running) {
	t.Helper()
	sink := new(blkSink)
	r, st := submitProbe{}.Start(Config{MinLatency: minLatency, SysFS: "/sys", ProcFS: "/proc"}, sink)
	if st.Status != event.StatusOK || r == nil {
		t.Fatalf("starting submit: %+v", st)
	}
	if st.Mechanism != event.MechTPBTF {
		t.Errorf("mechanism = %q, want %q", st.Mechanism, event.MechTPBTF)
	}
	t.Cleanup(func() { r.Stop() })
	if held := heldProgs(t, submitProgNames...); len(held) == 0 {
		t.Fatal("heldProgs sees none of the running probe's programs: the unload check would prove nothing")
	}
	return sink, r
}

// Every O_DIRECT write to a loop device shows up in its submit histogram,
// and with no threshold each is streamed naming the device and the writer.
func TestSubmitLoopWrites(t *testing.T) {
	blkNeedRoot(t)
	const size = 64 << 20
	loop := newBlkLoop(t, size)
	sink, r := startSubmitProbe(t, 0)

	const writes = 200
	tid, done, _ := directWriter(t, loop.path, size, writes, nil)
	<-done
	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}

	h, ok := sink.hist(timeline.HistSubmit, loop.name)
	if !ok {
		t.Fatalf("no submit histogram for %s; got %d histograms", loop.name, len(sink.hists))
	}
	if h.dev.Major != loop.major || h.dev.Minor != loop.minor {
		t.Errorf("histogram device %d:%d, want %d:%d", h.dev.Major, h.dev.Minor, loop.major, loop.minor)
	}
	if h.h.Count < writes {
		t.Errorf("histogram count %d, want >= %d", h.h.Count, writes)
	}
	if h.h.MaxNs == 0 || h.h.SumNs == 0 {
		t.Errorf("histogram sum %d max %d, want both > 0", h.h.SumNs, h.h.MaxNs)
	}

	var mine int
	for _, e := range sink.slowSubmits(loop.name) {
		if e.Task.Pid != uint32(tid) {
			continue
		}
		mine++
		if e.Task.Tgid != uint32(os.Getpid()) {
			t.Errorf("tgid %d, want %d", e.Task.Tgid, os.Getpid())
		}
		if e.Dev.Major != loop.major || e.Dev.Minor != loop.minor {
			t.Errorf("event device %s, want %d:%d", e.Dev.ID(), loop.major, loop.minor)
		}
		if !strings.Contains(e.Op, "W") || e.Bytes != 4096 {
			t.Errorf("event op %q bytes %d, want a 4096-byte write", e.Op, e.Bytes)
		}
		if e.End != "getrq" && e.End != "backmerge" && e.End != "frontmerge" {
			t.Errorf("event end %q", e.End)
		}
		if e.Latency <= 0 || e.Start <= 0 {
			t.Errorf("event start %d latency %v", e.Start, e.Latency)
		}
	}
	if mine < writes {
		t.Errorf("%d slow-submit events from the writer (tid %d) on %s, want >= %d", mine, tid, loop.name, writes)
	}
	assertProgsUnloaded(t, submitProgNames...)
}

// Switching the I/O scheduler freezes the queue: a writer running meanwhile
// waits in queue enter, and its submission latency shows it.
func TestSubmitQueueFreeze(t *testing.T) {
	blkNeedRoot(t)
	const size = 64 << 20
	loop := newBlkLoop(t, size)
	sink, r := startSubmitProbe(t, time.Millisecond)

	stop := make(chan struct{})
	tid, done, writes := directWriter(t, loop.path, size, 0, stop)
	sched, values := freezingWrite(t, loop.name)
	for i := 0; i < 10; i++ {
		for _, s := range values {
			if err := os.WriteFile(sched, []byte(s), 0); err != nil {
				t.Fatalf("writing %s: %v", sched, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	close(stop)
	<-done
	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	var slow []event.SlowSubmit
	for _, e := range sink.slowSubmits(loop.name) {
		if e.Latency >= time.Millisecond {
			slow = append(slow, e)
		}
	}
	t.Logf("%d writes, %d submissions >= 1ms on %s", writes.Load(), len(slow), loop.name)
	if len(slow) == 0 {
		t.Fatalf("no submission >= 1ms on %s while its scheduler switched", loop.name)
	}
	var longest event.SlowSubmit
	fromWriter := false
	for _, e := range slow {
		if e.Latency > longest.Latency {
			longest = e
		}
		fromWriter = fromWriter || e.Task.Pid == uint32(tid)
	}
	t.Logf("longest: %v by %s[%d] %s", longest.Latency, longest.Task.Comm, longest.Task.Pid, longest.Op)
	if !fromWriter {
		t.Errorf("no slow submission from the writer thread %d", tid)
	}
	assertProgsUnloaded(t, submitProgNames...)
	h, ok := sink.hist(timeline.HistSubmit, loop.name)
	if !ok || time.Duration(h.h.MaxNs) < longest.Latency {
		t.Errorf("histogram max %v below the longest event %v (found %v)", time.Duration(h.h.MaxNs), longest.Latency, ok)
	}
}

func TestOpDecoderRWBS(t *testing.T) {
	kernel, err := kernelSpec(Config{})
	if err != nil {
		t.Fatal(err)
	}
	// 6.x numbering: REQ_OP_WRITE 1, DISCARD 3, SECURE_ERASE 5; __REQ_SYNC 11,
	// __REQ_META 12, __REQ_FUA 17, __REQ_PREFLUSH 18, __REQ_RAHEAD 19.
	tests := []struct {
		opf  uint32
		want string
	}{
		{0, "R"},
		{0 | 1<<19, "RA"},
		{1, "W"},
		{1 | 1<<11, "WS"},
		{1 | 1<<18 | 1<<17 | 1<<11, "FWFS"},
		{2 | 1<<18, "FF"},
		{3, "D"},
		{5, "DE"},
		{0 | 1<<12 | 1<<11, "RSM"},
		{9, "N"}, // write zeroes: the kernel prints N too
	}
	for _, d := range []struct {
		name string
		dec  *opDecoder
	}{{"fallback", newOpDecoder(nil)}, {"kernel BTF", newOpDecoder(kernel)}} {
		for _, tt := range tests {
			if got := d.dec.rwbs(tt.opf); got != tt.want {
				t.Errorf("%s: rwbs(%#x) = %q, want %q", d.name, tt.opf, got, tt.want)
			}
		}
	}
}
