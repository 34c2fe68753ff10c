// Package timeline holds everything one run observed, on one CLOCK_MONOTONIC
// time axis: typed event streams sorted by time, per-device latency
// histograms, probe status and loss counts. It is the only input of the
// analysis, so a live run and a recorded trace give the same report.
package timeline

import (
	"math"
	"slices"
	"sort"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
)

// DeviceHistograms is the in-kernel latency aggregation for one device.
type DeviceHistograms struct {
	Dev     event.Device
	Submit  hist.Histogram // block_bio_queue -> getrq/merge, every bio
	Service hist.Histogram // block_rq_issue -> block_rq_complete, every request
	// SubmitCall is submit_bio_noacct entry -> return, every call (probe
	// submitfn, when a direct mechanism ran).
	SubmitCall hist.Histogram
}

// Timeline is one run's observations.
type Timeline struct {
	Start, End event.Mono // the observation window
	Kernel     string     // kernel release, e.g. "6.18.44"
	Hostname   string
	// MinLatency is the threshold above which single events were streamed.
	MinLatency time.Duration

	Probes []event.ProbeStatus
	Losses []event.Loss

	Devices []DeviceHistograms
	// Holders is the block device stacking seen at the start of the run.
	Holders []event.Holder

	SlowSubmits []event.SlowSubmit
	OffCPU      []event.OffCPU
	Execs       []event.Exec
	Exits       []event.Exit
	Uevents     []event.Uevent
	SysfsWrites []event.SysfsWrite
	// Direct measurements at kernel functions (fentry or kprobe), when
	// those probes ran.
	QueueEnters []event.QueueEnter
	Freezes     []event.Freeze
	SubmitCalls []event.SubmitCall
}

// Duration is the length of the observation window.
func (t *Timeline) Duration() time.Duration { return t.End.Sub(t.Start) }

// Add appends one event to its stream. Unknown event types are ignored.
func (t *Timeline) Add(e event.Event) {
	switch v := e.(type) {
	case event.SlowSubmit:
		t.SlowSubmits = append(t.SlowSubmits, v)
	case event.OffCPU:
		t.OffCPU = append(t.OffCPU, v)
	case event.Exec:
		t.Execs = append(t.Execs, v)
	case event.Exit:
		t.Exits = append(t.Exits, v)
	case event.Uevent:
		t.Uevents = append(t.Uevents, v)
	case event.SysfsWrite:
		t.SysfsWrites = append(t.SysfsWrites, v)
	case event.QueueEnter:
		t.QueueEnters = append(t.QueueEnters, v)
	case event.Freeze:
		t.Freezes = append(t.Freezes, v)
	case event.SubmitCall:
		t.SubmitCalls = append(t.SubmitCalls, v)
	}
}

// AddLoss adds to the loss count of a probe and cause. A count that would
// pass the largest uint64 stays there: a total never wraps to a small one.
func (t *Timeline) AddLoss(l event.Loss) {
	if l.Count == 0 {
		return
	}
	for i := range t.Losses {
		if t.Losses[i].Probe == l.Probe && t.Losses[i].What == l.What {
			t.Losses[i].Count = SaturatingSum(t.Losses[i].Count, l.Count)
			return
		}
	}
	t.Losses = append(t.Losses, l)
}

// LostEvents is the total of all losses, the largest uint64 when it would
// be more.
func (t *Timeline) LostEvents() uint64 {
	var n uint64
	for _, l := range t.Losses {
		n = SaturatingSum(n, l.Count)
	}
	return n
}

// SaturatingSum is a+b, or the largest uint64 when the sum would wrap.
func SaturatingSum(a, b uint64) uint64 {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxUint64
}

// Device returns the histograms of a device, creating them if needed.
func (t *Timeline) Device(d event.Device) *DeviceHistograms {
	for i := range t.Devices {
		if t.Devices[i].Dev.Major == d.Major && t.Devices[i].Dev.Minor == d.Minor {
			if t.Devices[i].Dev.Name == "" {
				t.Devices[i].Dev.Name = d.Name
			}
			return &t.Devices[i]
		}
	}
	t.Devices = append(t.Devices, DeviceHistograms{Dev: d})
	return &t.Devices[len(t.Devices)-1]
}

// Sort orders every stream by time (stable, so equal times keep arrival
// order) and devices by name.
func (t *Timeline) Sort() {
	sortBy(t.SlowSubmits)
	sortBy(t.OffCPU)
	sortBy(t.Execs)
	sortBy(t.Exits)
	sortBy(t.Uevents)
	sortBy(t.SysfsWrites)
	sortBy(t.QueueEnters)
	sortBy(t.Freezes)
	sortBy(t.SubmitCalls)
	sort.SliceStable(t.Devices, func(i, j int) bool { return t.Devices[i].Dev.String() < t.Devices[j].Dev.String() })
}

func sortBy[E event.Event](s []E) {
	slices.SortStableFunc(s, func(a, b E) int {
		switch {
		case a.When() < b.When():
			return -1
		case a.When() > b.When():
			return 1
		}
		return 0
	})
}

// Window returns the sub-slice of a time-sorted stream whose start times lie
// in [from, to).
func Window[E event.Event](s []E, from, to event.Mono) []E {
	lo := sort.Search(len(s), func(i int) bool { return s[i].When() >= from })
	hi := sort.Search(len(s), func(i int) bool { return s[i].When() >= to })
	if hi < lo {
		hi = lo
	}
	return s[lo:hi]
}
