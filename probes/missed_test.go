package probes

import (
	"testing"

	"github.com/whyslow/whyslow/internal/event"
)

// The group's one tap counts each probe's cumulative missed completions
// once, whichever sink a probe delivered them to and however many passes
// (checkpoints, then the stop) delivered them: devfault's share is the
// larger of service's and submit's (its three kinds summed), never a sum
// across passes or sinks.
func TestMissedTapCountsCumulativeOnce(t *testing.T) {
	svc := serviceLossWhat[serviceSvcLossKindSVC_LOSS_MISSED]
	sub := submitLossWhat[submitSubLossKindSUB_LOSS_MISSED]
	type delivery struct {
		toRun bool // to the run's sink, else to the checkpoint's
		l     event.Loss
	}
	for _, tc := range []struct {
		name   string
		passes [][]delivery
		want   uint64 // devfault's unseen after the last pass
	}{
		{"none", [][]delivery{{}}, 0},
		{"service at a checkpoint then the stop", [][]delivery{
			{{false, event.Loss{Probe: event.ProbeService, What: svc, Count: 5}}},
			{{true, event.Loss{Probe: event.ProbeService, What: svc, Count: 7}}},
		}, 7},
		{"a checkpoint's count sent to the run's sink", [][]delivery{
			{{true, event.Loss{Probe: event.ProbeService, What: svc, Count: 5}}},
		}, 5},
		{"the same count to both sinks", [][]delivery{
			{{true, event.Loss{Probe: event.ProbeService, What: svc, Count: 5}}, {false, event.Loss{Probe: event.ProbeService, What: svc, Count: 5}}},
		}, 5},
		{"submit's kinds summed, larger than service's", [][]delivery{
			{{false, event.Loss{Probe: event.ProbeService, What: svc, Count: 4}}, {false, event.Loss{Probe: event.ProbeSubmit, What: sub, Count: 3}}},
			{{true, event.Loss{Probe: event.ProbeService, What: svc, Count: 4}}, {true, event.Loss{Probe: event.ProbeSubmit, What: sub, Count: 3}},
				{true, event.Loss{Probe: event.ProbeSubmit, What: endsUnseenWhat, Count: 2}}},
		}, 5},
		{"other losses not counted", [][]delivery{
			{{true, event.Loss{Probe: event.ProbeService, What: "undecodable record", Count: 9}}, {true, event.Loss{Probe: event.ProbeDevFault, What: svc, Count: 9}}},
		}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tap := new(missedTap)
			run, cp := new(blkSink), new(blkSink)
			runS, cpS := tap.tapped(run), tap.tapped(cp)
			var got uint64
			for _, pass := range tc.passes {
				for _, d := range pass {
					if d.toRun {
						runS.Loss(d.l)
					} else {
						cpS.Loss(d.l)
					}
				}
				out := new(blkSink)
				tap.deliver(out)
				got = 0
				for _, l := range out.losses {
					if l.Probe != event.ProbeDevFault || l.What != devfaultUnseenWhat {
						t.Fatalf("deliver sent %+v", l)
					}
					got += l.Count
				}
			}
			if got != tc.want {
				t.Errorf("devfault's unseen %d, want %d", got, tc.want)
			}
			if n := len(run.losses) + len(cp.losses); n != countDeliveries(tc.passes) {
				t.Errorf("the sinks got %d losses, %d delivered: the tap must pass each on once", n, countDeliveries(tc.passes))
			}
		})
	}
}

func countDeliveries[T any](passes [][]T) (n int) {
	for _, p := range passes {
		n += len(p)
	}
	return n
}
