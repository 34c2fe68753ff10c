package facts

import (
	"cmp"
	"slices"

	"github.com/whyslow/whyslow/internal/event"
)

// IOCostState is what the iocost controller did on a device over the run
// (probe iocost, from iocost's tracepoints): its vrate, and what it did to
// each cgroup issuing I/O there. The zero value (VratePct -1) says the
// probe saw nothing of iocost on the device.
type IOCostState struct {
	// VratePct is the vrate over the run, in percent of the device's cost
	// model (io.cost.model): the median of the periods iocost traced (busy
	// or adjusting the vrate), or of the cgroups' activations when it
	// traced none, as each may be off its base by iocost's short-term
	// correction (50% to 200%); VrateMinPct and VrateMaxPct its range; -1
	// when unknown. Periods counts the periods traced.
	VratePct, VrateMinPct, VrateMaxPct float64
	Periods                            int
	// BusyMax is the highest busy level (above 0: the device missed its
	// QoS targets and iocost lowered the vrate); MissedPct the most I/Os
	// of a period that missed the QoS latency target, in percent;
	// RqWaitPct the most of a period spent waiting for a request.
	BusyMax              int
	MissedPct, RqWaitPct float64
	// Cgroups are the cgroups iocost saw issue I/O to the device, the
	// most shortages first.
	Cgroups []IOCostCgroup
}

// IOCostCgroup is what iocost did to one cgroup's I/O on a device.
type IOCostCgroup struct {
	Cgroup string
	// Activations counts the times it started issuing I/O after a pause;
	// Shortages the periods it needed more than its share.
	Activations, Shortages int
	// Weight is its io.weight; SharePct its share of the device's budget
	// (hweight in use, %) as last seen, ShareMinPct the least.
	Weight                int
	SharePct, ShareMinPct float64
	// Forgiven counts the times iocost forgave its debt (I/O issued over
	// budget); DebtMs is the most debt forgiven at once (ms of device time
	// at a vrate of 100%), DelayMs the most delay iocost imposed on it then.
	Forgiven        int
	DebtMs, DelayMs float64
}

// For merges the rows of the cgroups these tasks' I/O is charged to
// (Device.StageTasks("iocost")): their activations, shortages and
// forgiven debts summed, the least share, the most debt and delay; the
// zero row (SharePct and ShareMinPct -1) when iocost saw none of them.
func (s IOCostState) For(tasks Tasks) IOCostCgroup {
	out := IOCostCgroup{SharePct: -1, ShareMinPct: -1}
	least := func(a, b float64) float64 { // the least share known
		if a < 0 || b >= 0 && b < a {
			return b
		}
		return a
	}
	for _, c := range s.Cgroups {
		if !slices.ContainsFunc(tasks, func(t Task) bool { return t.Cgroup == c.Cgroup }) {
			continue
		}
		if out.Cgroup == "" {
			out.Cgroup, out.Weight = c.Cgroup, c.Weight
		}
		out.Activations += c.Activations
		out.Shortages += c.Shortages
		out.Forgiven += c.Forgiven
		out.SharePct = least(out.SharePct, c.SharePct)
		out.ShareMinPct = least(out.ShareMinPct, c.ShareMinPct)
		out.DebtMs = max(out.DebtMs, c.DebtMs)
		out.DelayMs = max(out.DelayMs, c.DelayMs)
	}
	return out
}

// iocost builds Device.IOCostState from the iocost probe's events.
func (b *builder) iocost() {
	periods, activations := map[*Device][]float64{}, map[*Device][]float64{}
	for _, v := range b.tl.IOCostVrates {
		d := b.deviceOf(b.name(v.Dev), v.Dev)
		s := &d.IOCostState
		periods[d] = append(periods[d], v.Pct)
		s.Periods++
		s.BusyMax = max(s.BusyMax, int(v.Busy))
		s.MissedPct = max(s.MissedPct, float64(max(v.ReadMissedPPM, v.WriteMissedPPM))/10000)
		s.RqWaitPct = max(s.RqWaitPct, float64(v.RqWaitPct))
	}
	rows := map[*Device]map[string]*IOCostCgroup{}
	for _, c := range b.tl.IOCostCgroups {
		d := b.deviceOf(b.name(c.Dev), c.Dev)
		if rows[d] == nil {
			rows[d] = map[string]*IOCostCgroup{}
		}
		row := rows[d][c.Cgroup]
		if row == nil {
			row = &IOCostCgroup{Cgroup: c.Cgroup, SharePct: -1, ShareMinPct: -1}
			rows[d][c.Cgroup] = row
		}
		share := func(pct float64) {
			row.SharePct = pct
			if row.ShareMinPct < 0 || pct < row.ShareMinPct {
				row.ShareMinPct = pct
			}
		}
		switch c.Kind {
		case event.IOCostActivate, event.IOCostIdle:
			if c.Kind == event.IOCostActivate {
				row.Activations++
			}
			if c.VratePct > 0 {
				activations[d] = append(activations[d], c.VratePct)
			}
			row.Weight = int(c.Weight)
			share(c.SharePct)
		case event.IOCostShortage:
			row.Shortages++
			share(c.SharePct)
		case event.IOCostForgive:
			row.Forgiven++
			row.DebtMs = max(row.DebtMs, ms(c.Debt))
			row.DelayMs = max(row.DelayMs, ms(c.Delay))
		}
	}
	for d, byCgroup := range rows {
		for _, row := range byCgroup {
			d.IOCostState.Cgroups = append(d.IOCostState.Cgroups, *row)
		}
	}
	for _, d := range b.byName {
		s := &d.IOCostState
		pcts := periods[d]
		if len(pcts) == 0 {
			pcts = activations[d] // no period traced: the vrate the cgroups saw
		}
		s.VratePct, s.VrateMinPct, s.VrateMaxPct = -1, -1, -1
		if len(pcts) > 0 {
			slices.Sort(pcts)
			s.VratePct, s.VrateMinPct, s.VrateMaxPct = pcts[len(pcts)/2], pcts[0], pcts[len(pcts)-1]
		}
		slices.SortFunc(s.Cgroups, func(a, c IOCostCgroup) int {
			return cmp.Or(cmp.Compare(c.Shortages, a.Shortages), cmp.Compare(a.Cgroup, c.Cgroup))
		})
	}
}
