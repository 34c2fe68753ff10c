package flight

import (
	"slices"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
)

// State is a checkpoint of the probes' counters: what they count in the
// kernel since they started (their per-device latency histograms and loss
// counters, probes.Checkpointer), read at one time. A window's histograms
// and counted losses are the difference of the states at its two ends
// (Delta).
type State struct {
	At      event.Mono
	Devices []timeline.DeviceHistograms // cumulative since the probes started
	Losses  []event.Loss                // cumulative counters of the probes
	// Stats, Blocked and MemStalls are the syscall probe's sums, whole
	// since it started, Requeues the devfault probe's, IOUsage the submit
	// probe's: every timeline.Sums stream (SumsDelta, AddSums).
	Stats     []event.SyscallStats
	Blocked   []event.BlockedStack
	MemStalls []event.MemStall
	Requeues  []event.Requeues
	IOUsage   []event.IOUsage
	// Unfinished are the storage calls still in the kernel at At (the
	// syscall probe's): not sums, a window takes those of its end
	// (AddSums).
	Unfinished []event.UnfinishedCall
	// Pruned are the processes (tgids) whose every sum the syscall probe
	// removed once this state had read them (probes.Pruner): in the next
	// state a sum of theirs in Stats, Blocked or MemStalls is counted
	// anew, from zero (their pid was reused). PrunedIO are those whose
	// every IOUsage the submit probe removed so: the same for IOUsage.
	Pruned   []uint32
	PrunedIO []uint32
}

// Carried is st as the next difference from it needs it (SumsDelta): the
// sums of the processes pruned once st read them (Pruned, PrunedIO) are
// final and left out; a difference leaves them out of its before anyway.
// What a checkpoint keeps of st is then bounded by the probes' maps (their
// running processes' sums), however many processes exited.
func (st State) Carried() State {
	pruned, prunedIO := prunedSet(st.Pruned), prunedSet(st.PrunedIO)
	if len(pruned) > 0 {
		st.Stats = slices.DeleteFunc(slices.Clone(st.Stats), func(s event.SyscallStats) bool { return pruned[s.Pid] })
		st.Blocked = slices.DeleteFunc(slices.Clone(st.Blocked), func(b event.BlockedStack) bool { return pruned[b.Pid] })
		st.MemStalls = slices.DeleteFunc(slices.Clone(st.MemStalls), func(m event.MemStall) bool { return pruned[m.Pid] })
	}
	if len(prunedIO) > 0 {
		st.IOUsage = slices.DeleteFunc(slices.Clone(st.IOUsage), func(u event.IOUsage) bool { return prunedIO[u.Task.Tgid] })
	}
	return st
}

// WithoutSums is st without the sums: what a window's start needs of it
// (Recorder.Events: its time, histograms and loss counters).
func (st State) WithoutSums() State {
	st.Stats, st.Blocked, st.MemStalls, st.Requeues, st.IOUsage = nil, nil, nil, nil, nil
	return st
}

// SumsBytes estimates the memory of st's sums.
func (st State) SumsBytes() int64 {
	return sumsBytes(st.Stats, st.Blocked) + int64(len(st.MemStalls))*112 + int64(len(st.Requeues))*64 + int64(len(st.IOUsage))*160
}

// Delta is what the probes counted between two states: each device's
// histograms and each loss counter of now less those of before. Counts,
// sums and losses are exact. A histogram's maximum is exact when it rose
// between the two (the new maximum came in between); otherwise the largest
// value in between is not known, and Delta takes the top of the highest
// slot that gained values (within 12.5% of it, hist.Bounds), never above
// now's maximum. A counter that went down (a probe that restarted its
// counting) counts from zero: its value in now. Devices that gained
// nothing are left out.
func Delta(now, before State) ([]timeline.DeviceHistograms, []event.Loss) {
	var devs []timeline.DeviceHistograms
	for _, d := range now.Devices {
		var prev *timeline.DeviceHistograms
		for i := range before.Devices {
			if before.Devices[i].Dev.Major == d.Dev.Major && before.Devices[i].Dev.Minor == d.Dev.Minor {
				prev = &before.Devices[i]
				break
			}
		}
		out := timeline.DeviceHistograms{Dev: d.Dev}
		any := false
		for _, k := range histKinds() {
			h := k.Of(&d)
			var p *hist.Histogram
			if prev != nil {
				p = k.Of(prev)
			}
			dh := deltaHist(h, p)
			if dh.Count > 0 {
				*k.Of(&out) = dh
				any = true
			}
		}
		if any {
			devs = append(devs, out)
		}
	}
	var losses []event.Loss
	for _, l := range now.Losses {
		n := l.Count
		for _, p := range before.Losses {
			if p.Probe == l.Probe && p.What == l.What && p.Count <= n {
				n -= p.Count
				break
			}
		}
		if n > 0 {
			losses = append(losses, event.Loss{Probe: l.Probe, What: l.What, Count: n})
		}
	}
	return devs, losses
}

// deltaHist is h less before (nil: nothing before).
func deltaHist(h, before *hist.Histogram) hist.Histogram {
	if before == nil || before.Count == 0 {
		return *h
	}
	for i := range h.Counts {
		if h.Counts[i] < before.Counts[i] {
			return *h // counted anew: all of it is new
		}
	}
	if h.Count < before.Count || h.SumNs < before.SumNs {
		return *h
	}
	var d hist.Histogram
	for i := range h.Counts {
		d.Counts[i] = h.Counts[i] - before.Counts[i]
	}
	d.Count = h.Count - before.Count
	d.SumNs = h.SumNs - before.SumNs
	if d.Count == 0 {
		return d
	}
	if h.MaxNs > before.MaxNs {
		d.MaxNs = h.MaxNs
		return d
	}
	for i := len(d.Counts) - 1; i >= 0; i-- {
		if d.Counts[i] > 0 {
			_, hi := hist.Bounds(i)
			d.MaxNs = min(hi-1, h.MaxNs)
			break
		}
	}
	return d
}

// histKinds are the histograms of a device, as timeline.Sources declares
// them.
func histKinds() []timeline.Hist {
	var out []timeline.Hist
	for _, s := range timeline.Sources {
		out = append(out, s.Hists...)
	}
	return out
}

// packed is a State as the recorder keeps it: each histogram's non-empty
// slots only (a device's three histograms take some 8 KB unpacked, a few
// hundred bytes packed).
type packed struct {
	at       event.Mono
	devs     []packedDev
	losses   []event.Loss
	stats    []event.SyscallStats
	blocked  []event.BlockedStack
	mem      []event.MemStall
	requeues []event.Requeues
	ioUsage  []event.IOUsage
	unfin    []event.UnfinishedCall
	pruned   []uint32
	prunedIO []uint32
	bytes    int64 // estimated memory
}

type packedDev struct {
	dev   event.Device
	hists []packedHist // in the order of histKinds
}

type packedHist struct {
	slots               []uint16
	counts              []uint64
	count, sumNs, maxNs uint64
}

func pack(st State) *packed {
	p := &packed{at: st.At, losses: slices.Clone(st.Losses)}
	p.stats, p.blocked = cloneSums(st.Stats, st.Blocked)
	p.mem, p.requeues, p.ioUsage = slices.Clone(st.MemStalls), slices.Clone(st.Requeues), slices.Clone(st.IOUsage)
	p.pruned, p.prunedIO = slices.Clone(st.Pruned), slices.Clone(st.PrunedIO)
	p.unfin = slices.Clone(st.Unfinished)
	p.bytes = int64(len(p.unfin))*200 + 64 + int64(len(p.pruned)+len(p.prunedIO))*4 + int64(len(p.losses))*48 + sumsBytes(p.stats, p.blocked) + int64(len(p.mem))*112 + int64(len(p.requeues))*64 +
		int64(len(p.ioUsage))*160
	kinds := histKinds()
	for _, d := range st.Devices {
		pd := packedDev{dev: d.Dev, hists: make([]packedHist, len(kinds))}
		p.bytes += 64 + int64(len(d.Dev.Name)) + int64(len(kinds))*80
		for i, k := range kinds {
			h := k.Of(&d)
			ph := packedHist{count: h.Count, sumNs: h.SumNs, maxNs: h.MaxNs}
			for s, n := range h.Counts {
				if n > 0 {
					ph.slots = append(ph.slots, uint16(s))
					ph.counts = append(ph.counts, n)
				}
			}
			p.bytes += int64(len(ph.slots)) * 10
			pd.hists[i] = ph
		}
		p.devs = append(p.devs, pd)
	}
	return p
}

func (p *packed) unpack() State {
	st := State{At: p.at, Losses: slices.Clone(p.losses)}
	st.Stats, st.Blocked = cloneSums(p.stats, p.blocked)
	st.MemStalls, st.Requeues, st.IOUsage = slices.Clone(p.mem), slices.Clone(p.requeues), slices.Clone(p.ioUsage)
	st.Pruned, st.PrunedIO = slices.Clone(p.pruned), slices.Clone(p.prunedIO)
	st.Unfinished = slices.Clone(p.unfin)
	kinds := histKinds()
	for _, pd := range p.devs {
		d := timeline.DeviceHistograms{Dev: pd.dev}
		for i, k := range kinds {
			ph := pd.hists[i]
			h := k.Of(&d)
			for j, s := range ph.slots {
				h.Counts[s] = ph.counts[j]
			}
			h.Count, h.SumNs, h.MaxNs = ph.count, ph.sumNs, ph.maxNs
		}
		st.Devices = append(st.Devices, d)
	}
	return st
}
