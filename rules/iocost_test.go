package rules

import (
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// callIOCost is a storage call's sleep in iocost's throttle.
var callIOCost = stack("__schedule", "schedule", "io_schedule", "ioc_rqos_throttle", "__rq_qos_throttle", "blk_mq_submit_bio")

// iocost adds what the iocost probe sees of cgroup on d: the vrate lowered
// from 100% to 50% for missed targets, the cgroup activated with a share
// of 40% (io.weight 50), short of it twice, and its debt of 12.5 ms
// forgiven after it had cost a delay of 30 ms.
func (s *scenario) iocost(d event.Device, cgroup string) *scenario {
	s.tl.Add(event.IOCost{Time: at(0), Dev: d, QoS: "enable=1 ctrl=user rpct=95.00 rlat=5000 wpct=95.00 wlat=5000 min=50.00 max=100.00",
		Model: "ctrl=user model=linear rbps=20000000 rseqiops=100 rrandiops=100 wbps=20000000 wseqiops=100 wrandiops=100"})
	s.tl.Add(event.IOCostCgroup{Time: at(100), Dev: d, Cgroup: cgroup, Kind: event.IOCostActivate, VratePct: 100, Weight: 50, SharePct: 40})
	for i, pct := range []float64{100, 75, 50} {
		s.tl.Add(event.IOCostVrate{Time: at(1000 * float64(i+1)), Dev: d, Pct: pct, OldPct: pct, Busy: 2, WriteMissedPPM: 250_000, Shortages: 1})
	}
	s.tl.Add(event.IOCostCgroup{Time: at(1500), Dev: d, Cgroup: cgroup, Kind: event.IOCostShortage, SharePct: 40})
	s.tl.Add(event.IOCostCgroup{Time: at(2500), Dev: d, Cgroup: cgroup, Kind: event.IOCostShortage, SharePct: 35})
	s.tl.Add(event.IOCostCgroup{Time: at(9000), Dev: d, Cgroup: cgroup, Kind: event.IOCostForgive,
		Debt: 12500 * time.Microsecond, Delay: 30 * time.Millisecond, UsagePct: 20})
	// another cgroup on the device, never held
	s.tl.Add(event.IOCostCgroup{Time: at(200), Dev: d, Cgroup: "/idle", Kind: event.IOCostActivate, VratePct: 100, Weight: 100, SharePct: 60})
	return s
}
