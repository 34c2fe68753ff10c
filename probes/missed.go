package probes

import (
	"strings"
	"sync"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// Completions no program of whyslow's saw, as the devfault probe's loss.
//
// On 6.18 the kernel completes some requests where it runs none of the
// BPF programs on block_rq_complete (submitleft.go), with no recursion
// miss to count. The devfault probe's program is one of them: a request
// that failed there is missing from its faults. Devfault cannot tell such
// a completion from none: it keeps nothing per request (it looks only at
// completions and requeues), and keeping a request from its issue to its
// completion would cost a program run per I/O (the dispatch of a program
// on block_rq_issue and a map update: what issue 16 cuts) to learn only
// what the submit and service probes, which keep such state anyway, learn
// already: that a completion was missed, never whether it failed (its
// error is only in the completion no program saw). So when devfault runs,
// the group reports, as devfault's loss, the completions the service and
// submit probes counted missed: the larger of their counts (service
// counts requests issued again while their earlier issue still waited;
// submit counts bios with their end missed, of which some were still in
// flight at its stop). The count is not whether a fault was lost: it is
// how many completions devfault could not look at. The service probe also
// reports, per disk, the completions the kernel counted in the disk's
// statistics beyond those its program saw (completions.go): their sum
// stands for the count when it is the larger.

// devfaultUnseenWhat names devfault's share of the missed completions.
// Its line, and the service and submit probes' lines it echoes, are in
// one overlap class (event.OverlapMissedCompletions): a report's total
// counts them once.
const devfaultUnseenWhat = event.DevFaultUnseenWhat

// missedTap counts, for a group, the missed completions the service and
// submit probes report, whichever sink they report them to. One tap serves
// the group's whole run: the probes are given tapped(the group's sink) at
// their start and tapped(a checkpoint's sink) at each checkpoint, so a
// count reaches the tap however a probe routes it. Each of these counts is
// cumulative (a checkpoint's and the stop's are the totals so far, see
// Checkpointer), so the tap keeps the latest of each, never a sum across
// deliveries: a count delivered at a checkpoint and again at the stop, or
// to both sinks, is counted once.
type missedTap struct {
	mu      sync.Mutex
	service uint64
	submit  map[string]uint64 // by What: its latest count
	disks   map[string]uint64 // the service probe's per disk, by What: its latest count
}

// tapped returns a sink that delivers to sink and notes in t the missed
// completions among the losses.
func (t *missedTap) tapped(sink Sink) Sink { return tappedSink{Sink: sink, tap: t} }

// tappedSink is a sink whose losses a missedTap notes.
type tappedSink struct {
	Sink
	tap *missedTap
}

// Loss implements Sink.
func (s tappedSink) Loss(l event.Loss) {
	s.Sink.Loss(l)
	s.tap.note(l)
}

// note keeps l's count if it is one of the missed completions.
func (t *missedTap) note(l event.Loss) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case l.Probe == event.ProbeService && l.What == serviceLossWhat[serviceSvcLossKindSVC_LOSS_MISSED]:
		t.service = max(t.service, l.Count)
	case l.Probe == event.ProbeSubmit && (l.What == submitLossWhat[submitSubLossKindSUB_LOSS_MISSED] || l.What == endsUnseenWhat || l.What == staleWhat):
		if t.submit == nil {
			t.submit = map[string]uint64{}
		}
		t.submit[l.What] = max(t.submit[l.What], l.Count)
	case l.Probe == event.ProbeService && strings.HasPrefix(l.What, unseenCompletionsPrefix):
		if t.disks == nil {
			t.disks = map[string]uint64{}
		}
		t.disks[l.What] = max(t.disks[l.What], l.Count)
	}
}

// deliver reports to sink, as devfault's loss, the missed completions
// counted so far: the largest of the service and submit probes' counts
// and of the service probe's per-disk shortfalls' sum.
func (t *missedTap) deliver(sink Sink) {
	t.mu.Lock()
	var submit uint64
	for _, n := range t.submit {
		submit = timeline.SaturatingSum(submit, n)
	}
	var disks uint64
	for _, n := range t.disks {
		disks = timeline.SaturatingSum(disks, n)
	}
	n := max(t.service, submit, disks)
	t.mu.Unlock()
	if n > 0 {
		sink.Loss(event.Loss{Probe: event.ProbeDevFault, What: devfaultUnseenWhat, Count: n})
	}
}
