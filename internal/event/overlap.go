package event

import "strings"

// Losses that count the same happenings, seen by different probes.
//
// The kernel completes some requests where it runs none of the BPF
// programs on block_rq_complete (seen on 6.18, in some softirqs, without a
// recursion miss: probes/submitleft.go). One such completion is missed by
// the service probe (a request whose service time is not counted), by the
// submit probe (the ends of its bios) and by devfault (whether it failed),
// and each says so in a loss line of its own, so that each probe shows what
// it lost. Those lines belong to one overlap class: a total counts the
// class once, at the largest of its probes' counts (a probe's count being
// the sum of its lines in the class), not once per probe, so that one
// missed completion is not counted two or three times. The largest, not the
// sum: the probes count the same completions in their own units (submit
// bios, service and devfault requests; a request may carry several bios),
// and each probe's count is a lower bound of them.

// OverlapMissedCompletions is the overlap class of the losses that count
// block completions no program of whyslow's saw.
const OverlapMissedCompletions = "block completions missed"

// The causes of loss in OverlapMissedCompletions. The probes name their
// losses with these.
const (
	// ServiceMissedWhat is the service probe's (svc_loss_kind
	// SVC_LOSS_MISSED).
	ServiceMissedWhat = "requests whose completion never reached the probe (issued again while their earlier issue still waited): their service time not counted in the device's latency"
	// SubmitMissedWhat is the submit probe's (sub_loss_kind
	// SUB_LOSS_MISSED).
	SubmitMissedWhat = "bios whose end the accounting missed (no end of theirs reached the probe: their entry waited until a later bio of the same address took it): missing from their process's I/O counts (bios, bytes, time in flight)"
	// SubmitEndsUnseenWhat is the submit probe's bios of processes gone,
	// their end unseen when it stopped.
	SubmitEndsUnseenWhat = "bios of processes gone whose completion the probe had not seen when it stopped (the kernel completes some where it runs none of the probe's programs; or still in flight, e.g. readahead): counted then, without their time in flight"
	// SubmitStaleWhat is the submit probe's bios a long run's sweep counts
	// (5m0s is probes.staleAfter).
	SubmitStaleWhat = "bios that got a request and waited more than 5m0s for an end the probe never saw (the kernel completes some where it runs none of the probe's programs), counted by a long run's sweep: missing from their process's I/O counts (a bio a device held that long and then completed is counted there too)"
	// DevFaultUnseenWhat is devfault's: the larger of the service and
	// submit probes' counts (probes/missed.go).
	DevFaultUnseenWhat = "block completions that reached none of whyslow's programs, as the service and submit probes counted them (the larger count): whether any of them failed is unknown; a failed request among them is missing from the device faults"
)

// DiskUnseenPrefix begins the service probe's losses of each disk's
// completions that the kernel counted in the disk's statistics and no
// program saw (probes/completions.go): "completions the kernel counted
// on DISK ...", one line per disk. They are in OverlapMissedCompletions,
// as a unit of their own (diskUnit): their sum counts the same
// completions as the service probe's other line, not more of them.
const DiskUnseenPrefix = "completions the kernel counted on "

// diskUnit is the unit, beside the probes, of the lines that begin with
// DiskUnseenPrefix in Distinct.
const diskUnit = " per disk"

// overlaps are the classes of the losses in one, by probe and cause.
var overlaps = map[[2]string]string{
	{ProbeService, ServiceMissedWhat}:   OverlapMissedCompletions,
	{ProbeSubmit, SubmitMissedWhat}:     OverlapMissedCompletions,
	{ProbeSubmit, SubmitEndsUnseenWhat}: OverlapMissedCompletions,
	{ProbeSubmit, SubmitStaleWhat}:      OverlapMissedCompletions,
	{ProbeDevFault, DevFaultUnseenWhat}: OverlapMissedCompletions,
}

// Overlap returns the overlap class of the events l counts, which losses of
// other probes count too; "" when they are l's own.
func (l Loss) Overlap() string {
	if l.diskUnseen() {
		return OverlapMissedCompletions
	}
	return overlaps[[2]string{l.Probe, l.What}]
}

// diskUnseen says whether l is one disk's completions the kernel counted
// and no program saw.
func (l Loss) diskUnseen() bool {
	return l.Probe == ProbeService && strings.HasPrefix(l.What, DiskUnseenPrefix)
}

// Distinct is how many events losses lost, each counted once: the sum of
// the losses in no overlap class, plus, for each class, the largest of its
// probes' counts (a probe's count being the sum of its losses in the
// class; the service probe's per-disk lines are summed apart from its
// other line). A total that would pass the largest uint64 stays there.
func Distinct(losses []Loss) uint64 {
	var n uint64
	byClass := map[string]map[string]uint64{} // class -> probe -> count
	for _, l := range losses {
		c := l.Overlap()
		if c == "" {
			n = saturatingSum(n, l.Count)
			continue
		}
		if byClass[c] == nil {
			byClass[c] = map[string]uint64{}
		}
		unit := l.Probe
		if l.diskUnseen() {
			unit += diskUnit
		}
		byClass[c][unit] = saturatingSum(byClass[c][unit], l.Count)
	}
	for _, probes := range byClass {
		var most uint64
		for _, k := range probes {
			most = max(most, k)
		}
		n = saturatingSum(n, most)
	}
	return n
}

// saturatingSum is a+b, or the largest uint64 when the sum would wrap
// (timeline.SaturatingSum, which imports this package).
func saturatingSum(a, b uint64) uint64 {
	if s := a + b; s >= a {
		return s
	}
	return ^uint64(0)
}
