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
	if h.h.Count < writes {
		t.Errorf("histogram count %d, want >= %d", h.h.Count, writes)
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
