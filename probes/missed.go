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
const devfaultUnseenWhat = "block completions that reached none of whyslow's programs, as the service and submit probes counted them (the largest of their counts and of the disks' statistics' shortfall): whether any of them failed is unknown; a failed request among them is missing from the device faults"

// missedTap passes a sink's deliveries on and counts the missed
// completions the service and submit probes report.
type missedTap struct {
	Sink
	mu                      sync.Mutex
	service, submit, kernel uint64
}

// Loss implements Sink.
func (t *missedTap) Loss(l event.Loss) {
	t.Sink.Loss(l)
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case l.Probe == event.ProbeService && l.What == serviceLossWhat[serviceSvcLossKindSVC_LOSS_MISSED]:
		t.service = timeline.SaturatingSum(t.service, l.Count)
	case l.Probe == event.ProbeService && strings.HasPrefix(l.What, unseenCompletionsPrefix):
		t.kernel = timeline.SaturatingSum(t.kernel, l.Count)
	case l.Probe == event.ProbeSubmit && (l.What == submitLossWhat[submitSubLossKindSUB_LOSS_MISSED] || l.What == endsUnseenWhat || l.What == staleWhat):
		t.submit = timeline.SaturatingSum(t.submit, l.Count)
	}
}

// deliver reports to sink, as devfault's loss, the missed completions
// counted so far.
func (t *missedTap) deliver(sink Sink) {
	t.mu.Lock()
	n := max(t.service, t.submit, t.kernel)
	t.mu.Unlock()
	if n > 0 {
		sink.Loss(event.Loss{Probe: event.ProbeDevFault, What: devfaultUnseenWhat, Count: n})
	}
}
