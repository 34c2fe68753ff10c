package probes

import (
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// Every O_DIRECT write to a loop device is a request the loop driver
// serves: the service histogram of the device counts them.
func TestServiceLoopWrites(t *testing.T) {
	blkNeedRoot(t)
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
