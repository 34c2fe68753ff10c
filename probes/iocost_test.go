package probes

import (
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/scenario"
)

// The iocost probe attaches wherever the kernel has iocost: on the 6.18
// host too, whose io controller is bound to cgroup v1, so that iocost is
// never on there and the probe sees nothing. Where iocost is on for a disk
// (the kernel matrix) with a model of 100 IOPS and its vrate held at 100%
// (io.cost.qos min=max=100), a direct writer in a cgroup of its own is
// activated on the disk with io.weight 100 and the whole budget (share
// 100%), at a vrate of 50% to 200% (the base, 100%, with iocost's
// short-term correction: 5.10 and 6.1 show it), the periods iocost traced
// say mostly 100%, and nothing is lost.
func TestIOCostLive(t *testing.T) {
	blkNeedRoot(t)
	sink := &blkSink{}
	r, st := (iocostProbe{}).Start(Config{}, sink)
	if r == nil {
		t.Fatalf("iocost probe: %s", st.Reason)
	}
	t.Logf("status: %+v", st)
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			if err := r.Stop(); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(stop)

	dev := ""
	if scenario.InMatrix() {
		dev = scenario.DiskBySerial("nvme")
	}
	if dev == "" {
		dev = scenario.DiskLoop(t, 256<<20)
	}
	scenario.IOCost(t, dev, // skips, saying why, where iocost cannot be on
		"ctrl=user model=linear rbps=20000000 rseqiops=100 rrandiops=100 wbps=20000000 wseqiops=100 wrandiops=100",
		"enable=1 ctrl=user rpct=0 rlat=0 wpct=0 wlat=0 min=100.00 max=100.00")
	c := scenario.IOCgroup(t, "iocprobe")
	if _, err := scenario.WriterIn(t, c, dev, 3*time.Second).Wait(); err != nil {
		t.Fatal(err)
	}
	stop()
	for _, l := range sink.losses {
		t.Errorf("loss: %+v", l)
	}
	var activations, periods, at100 int
	for _, e := range sink.events {
		switch e := e.(type) {
		case event.IOCostCgroup:
			if e.Dev.Name != dev || e.Cgroup != c.Path {
				continue
			}
			if e.Kind == event.IOCostActivate {
				activations++
				if e.VratePct < 50 || e.VratePct > 200 || e.Weight != 100 || e.SharePct != 100 {
					t.Errorf("activation %+v, want a vrate of 50 to 200%%, io.weight 100, share 100%%", e)
				}
			}
		case event.IOCostVrate:
			if e.Dev.Name != dev {
				continue
			}
			if e.Dev.ID() == "0:0" {
				t.Errorf("period %+v: the device's numbers not found", e)
			}
			periods++
			if e.Pct == 100 {
				at100++
			}
		}
	}
	t.Logf("%d events: %d activations of %s on %s, %d periods (%d at 100%%)", len(sink.events), activations, c.Path, dev, periods, at100)
	if periods > 0 && 2*at100 <= periods {
		t.Errorf("%d of %d periods at a vrate of 100%%, want most (min=max=100)", at100, periods)
	}
	if activations == 0 {
		t.Errorf("no activation of %s on %s", c.Path, dev)
	}
}
