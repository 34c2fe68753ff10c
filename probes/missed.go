package probes

import (
	"sync"

	"github.com/whyslow/whyslow/internal/event"
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
	mu     sync.Mutex
	latest map[missedKey]uint64 // each count's latest value
}

// missedKey is one count the tap keeps: a probe's loss line.
type missedKey struct{ probe, what string }

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

// note keeps l's count if it is one of the service and submit probes'
// missed completions: a loss line of theirs in the class of devfault's
// (event.OverlapMissedCompletions).
func (t *missedTap) note(l event.Loss) {
	if l.Probe == event.ProbeDevFault || l.Overlap() != event.OverlapMissedCompletions {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.latest == nil {
		t.latest = map[missedKey]uint64{}
	}
	k := missedKey{l.Probe, l.What}
	t.latest[k] = max(t.latest[k], l.Count)
}

// deliver reports to sink, as devfault's loss, the missed completions
// counted so far: the largest of the service and submit probes' counts
// and of the service probe's per-disk shortfalls' sum, as event.Distinct
// counts the class.
func (t *missedTap) deliver(sink Sink) {
	t.mu.Lock()
	ls := make([]event.Loss, 0, len(t.latest))
	for k, n := range t.latest {
		ls = append(ls, event.Loss{Probe: k.probe, What: k.what, Count: n})
	}
	t.mu.Unlock()
	if n := event.Distinct(ls); n > 0 {
		sink.Loss(event.Loss{Probe: event.ProbeDevFault, What: devfaultUnseenWhat, Count: n})
	}
}
