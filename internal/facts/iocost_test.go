package facts

import (
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// What the iocost probe saw becomes each device's IOCostState: the vrate
// from its periods (or, with none traced, from the activations), each
// cgroup's share, shortages and forgiven debt; For merges the cgroups of
// the tasks asked about; a device iocost's probe saw nothing of says
// unknown (-1).
func TestIOCostState(t *testing.T) {
	sda := event.Device{Major: 8, Minor: 0, Name: "sda"}
	tl := &timeline.Timeline{Start: 0, End: event.Mono(10 * time.Second)}
	tl.Add(event.IOCostVrate{Time: 1, Dev: loop0, Pct: 100, Busy: -1})
	tl.Add(event.IOCostVrate{Time: 2, Dev: loop0, Pct: 60, Busy: 1, ReadMissedPPM: 10_000, WriteMissedPPM: 250_000, RqWaitPct: 3})
	tl.Add(event.IOCostVrate{Time: 3, Dev: loop0, Pct: 80})
	tl.Add(event.IOCostCgroup{Time: 1, Dev: loop0, Cgroup: "/a", Kind: event.IOCostActivate, VratePct: 100, Weight: 100, SharePct: 50})
	tl.Add(event.IOCostCgroup{Time: 2, Dev: loop0, Cgroup: "/a", Kind: event.IOCostShortage, SharePct: 40})
	tl.Add(event.IOCostCgroup{Time: 3, Dev: loop0, Cgroup: "/a", Kind: event.IOCostIdle, VratePct: 80, Weight: 100, SharePct: 45})
	tl.Add(event.IOCostCgroup{Time: 4, Dev: loop0, Cgroup: "/b", Kind: event.IOCostForgive, Debt: 5 * time.Millisecond, Delay: 20 * time.Millisecond})
	tl.Add(event.IOCostCgroup{Time: 5, Dev: loop0, Cgroup: "/b", Kind: event.IOCostForgive, Debt: 2 * time.Millisecond, Delay: 40 * time.Millisecond})
	// no period traced on sdb: the vrate is the activations'
	sdb := event.Device{Major: 8, Minor: 16, Name: "sdb"}
	tl.Add(event.IOCostCgroup{Time: 1, Dev: sdb, Cgroup: "/c", Kind: event.IOCostActivate, VratePct: 120, Weight: 200, SharePct: 100})
	tl.Add(event.Requeues{Time: 1, Dev: sda, Count: 1}) // a device iocost did not touch
	tl.Sort()
	run := Build(tl, Options{})

	s := run.Find("loop0").IOCostState
	if s.VratePct != 80 || s.VrateMinPct != 60 || s.VrateMaxPct != 100 || s.Periods != 3 || s.BusyMax != 1 || s.MissedPct != 25 || s.RqWaitPct != 3 {
		t.Errorf("loop0 %+v", s)
	}
	if len(s.Cgroups) != 2 || s.Cgroups[0].Cgroup != "/a" {
		t.Fatalf("cgroups %+v, want /a (a shortage) first", s.Cgroups)
	}
	if a := s.Cgroups[0]; a.Activations != 1 || a.Shortages != 1 || a.Weight != 100 || a.SharePct != 45 || a.ShareMinPct != 40 {
		t.Errorf("/a %+v", a)
	}
	if b := s.Cgroups[1]; b.Forgiven != 2 || b.DebtMs != 5 || b.DelayMs != 40 || b.SharePct != -1 {
		t.Errorf("/b %+v", b)
	}
	both := s.For(Tasks{{Pid: 1, Cgroup: "/a"}, {Pid: 2, Cgroup: "/b"}, {Pid: 3, Cgroup: "/elsewhere"}})
	if both.Cgroup != "/a" || both.Shortages != 1 || both.Forgiven != 2 || both.ShareMinPct != 40 || both.DelayMs != 40 {
		t.Errorf("For /a and /b: %+v", both)
	}
	if none := s.For(Tasks{{Pid: 3, Cgroup: "/elsewhere"}}); none.SharePct != -1 || none.ShareMinPct != -1 || none.Shortages != 0 {
		t.Errorf("For a cgroup iocost did not see: %+v", none)
	}
	if s := run.Find("sdb").IOCostState; s.VratePct != 120 || s.Periods != 0 || len(s.Cgroups) != 1 || s.Cgroups[0].Weight != 200 {
		t.Errorf("sdb %+v", s)
	}
	if s := run.Find("sda").IOCostState; s.VratePct != -1 || s.VrateMinPct != -1 || s.VrateMaxPct != -1 || len(s.Cgroups) != 0 {
		t.Errorf("sda, unseen by iocost: %+v", s)
	}
}
