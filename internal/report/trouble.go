package report

import (
	"fmt"
	"strings"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/internal/trouble"
)

// Trouble is what the trouble watcher saw over a live run, in shadow mode:
// the signals of storage trouble (PSI triggers, the block path's slow
// spans, device faults, busy disks) and when an armed mode, which attaches
// the syscall and sched programs only while trouble is seen, would have
// been armed. Nothing was gated: every probe ran all the time. Times are
// seconds from the start of the observation window.
type Trouble struct {
	Mode        string          `json:"mode"` // "shadow", or "auto" when armed mode auto gated the run by these signals
	HoldSeconds float64         `json:"hold_seconds"`
	Sources     []TroubleSource `json:"sources"`
	// SignalsTotal counts every signal, SignalCounts by source; Signals
	// are the first ones (at most 20).
	SignalsTotal uint64            `json:"signals_total"`
	SignalCounts map[string]uint64 `json:"signal_counts"`
	// FirstSignalSeconds is each source's first signal: when that source
	// alone would have armed.
	FirstSignalSeconds map[string]float64 `json:"first_signal_seconds"`
	Signals            []TroubleSignal    `json:"signals"`
	// Armed are the intervals the run would have been armed, ArmedSeconds
	// their sum, FirstArmedSeconds the start of the first (absent when it
	// never armed).
	Armed             []ArmedInterval `json:"armed"`
	ArmedSeconds      float64         `json:"armed_seconds"`
	FirstArmedSeconds *float64        `json:"first_armed_seconds,omitempty"`
	// FirstSlowSeconds is the start of the run's first slow span over the
	// threshold, of any probe (absent when there was none). SlowSpans are
	// the slow spans of the probes on the hot hooks an armed mode would
	// gate (slow storage calls, blocked spans), SlowSpansUnarmed those of
	// them that lie wholly outside every armed interval: what an armed
	// mode would have lost.
	FirstSlowSeconds *float64 `json:"first_slow_seconds,omitempty"`
	SlowSpans        int      `json:"slow_spans"`
	SlowSpansUnarmed int      `json:"slow_spans_unarmed"`
	// PSI is the time PSI counted tasks stalled on I/O and on memory over
	// the run (absent when /proc/pressure could not be read).
	PSI *PSIStall `json:"psi,omitempty"`
	// Devices is the scope of the block path's and busy disks' signals
	// (--device; absent: every disk), OutOfScopeCounts the signals of
	// other disks by source, which armed nothing, OutOfScopeDisks those
	// disks (the first 20; both absent when none).
	Devices          []string          `json:"devices,omitempty"`
	OutOfScopeCounts map[string]uint64 `json:"out_of_scope_counts,omitempty"`
	OutOfScopeDisks  []string          `json:"out_of_scope_disks,omitempty"`
	// Cgroup is the cgroup v2 directory the PSI signals were scoped to
	// (--cgroup; absent: host-wide), CgroupPSI its stall over the run
	// (PSI stays the host's). Host-wide PSI events its stall did not
	// account for are counted in OutOfScopeCounts.
	Cgroup    string    `json:"cgroup,omitempty"`
	CgroupPSI *PSIStall `json:"cgroup_psi,omitempty"`
}

// TroubleSource is one source of signals, and why it did not watch.
type TroubleSource struct {
	Source string `json:"source"`
	On     bool   `json:"on"`
	Reason string `json:"reason,omitempty"`
}

// TroubleSignal is one signal of storage trouble.
type TroubleSignal struct {
	Source    string  `json:"source"`
	AtSeconds float64 `json:"at_seconds"`
	Detail    string  `json:"detail"`
}

// ArmedInterval is a stretch of the run an armed mode would have been
// armed: from the signal that armed it (By) to Hold after its last one.
type ArmedInterval struct {
	FromSeconds float64 `json:"from_seconds"`
	ToSeconds   float64 `json:"to_seconds"`
	By          string  `json:"by"`
	Signals     int     `json:"signals"`
}

// PSIStall is the growth of /proc/pressure/io and memory's "total" over
// the run, ms: "some" is time at least one task stalled, "full" time
// every non-idle task did.
type PSIStall struct {
	IOSomeMs     float64 `json:"io_some_ms"`
	IOFullMs     float64 `json:"io_full_ms"`
	MemorySomeMs float64 `json:"memory_some_ms"`
	MemoryFullMs float64 `json:"memory_full_ms"`
}

// troubleOf builds the trouble section of a live run's timeline; nil when
// the watcher did not run (a trace).
func troubleOf(tl *timeline.Timeline) *Trouble {
	s := tl.Trouble
	if s == nil {
		return nil
	}
	at := func(m event.Mono) float64 { return seconds(m.Sub(tl.Start)) }
	t := &Trouble{Mode: "shadow", HoldSeconds: seconds(s.Hold), Sources: []TroubleSource{}, Signals: []TroubleSignal{},
		Armed: []ArmedInterval{}, SignalCounts: map[string]uint64{}, SignalsTotal: s.Total(), ArmedSeconds: seconds(s.ArmedTime())}
	if tl.Coverage != nil && tl.Coverage.Mode == trouble.ModeAuto {
		t.Mode = trouble.ModeAuto // the intervals are those it armed
	}
	t.Devices, t.OutOfScopeDisks = s.Devices, s.OutOfScopeDisks
	for k, v := range s.OutOfScope {
		if t.OutOfScopeCounts == nil {
			t.OutOfScopeCounts = map[string]uint64{}
		}
		t.OutOfScopeCounts[string(k)] = v
	}
	for _, src := range s.Sources {
		t.Sources = append(t.Sources, TroubleSource{Source: string(src.Source), On: src.On, Reason: src.Reason})
	}
	t.FirstSignalSeconds = map[string]float64{}
	for k, v := range s.Counts {
		t.SignalCounts[string(k)] = v
		if f, ok := s.First[k]; ok {
			t.FirstSignalSeconds[string(k)] = at(f)
		}
	}
	for _, g := range s.Signals {
		t.Signals = append(t.Signals, TroubleSignal{Source: string(g.Source), AtSeconds: at(g.At), Detail: g.Detail})
	}
	for _, iv := range s.Intervals {
		t.Armed = append(t.Armed, ArmedInterval{FromSeconds: at(iv.From), ToSeconds: at(iv.To), By: string(iv.By), Signals: iv.Signals})
	}
	if len(s.Intervals) > 0 {
		f := at(s.Intervals[0].From)
		t.FirstArmedSeconds = &f
	}
	first := event.Mono(-1)
	note := func(start event.Mono) {
		if first < 0 || start < first {
			first = start
		}
	}
	hot := func(start event.Mono, d time.Duration) {
		note(start)
		t.SlowSpans++
		if !trouble.Covered(s.Intervals, start, start.Add(d)) {
			t.SlowSpansUnarmed++
		}
	}
	for _, e := range tl.Syscalls {
		hot(e.Start, e.Duration)
	}
	for _, e := range tl.OffCPU {
		hot(e.Start, e.Duration)
	}
	for _, e := range tl.SlowSubmits {
		note(e.Start)
	}
	for _, e := range tl.ThrottleWaits {
		note(e.Start)
	}
	for _, e := range tl.QueueEnters {
		note(e.Start)
	}
	if first >= 0 {
		f := at(first)
		t.FirstSlowSeconds = &f
	}
	t.PSI = psiStall(s.PSI)
	t.Cgroup = s.Cgroup
	if s.Cgroup != "" {
		t.CgroupPSI = psiStall(s.CgroupPSI)
	}
	return t
}

// psiStall is p in ms; nil when unknown.
func psiStall(p trouble.PSITotals) *PSIStall {
	if !p.Known {
		return nil
	}
	ms := func(d time.Duration) float64 { return round(float64(d)/float64(time.Millisecond), 2) }
	return &PSIStall{IOSomeMs: ms(p.IOSome), IOFullMs: ms(p.IOFull), MemorySomeMs: ms(p.MemorySome), MemoryFullMs: ms(p.MemoryFull)}
}

// troubleLine is the text report's one-line account of the trouble
// section.
func troubleLine(t *Trouble) string {
	var b strings.Builder
	if t.Mode == "shadow" {
		b.WriteString("shadow armed mode: ")
	} else {
		b.WriteString("signals of armed mode " + t.Mode + ": ")
	}
	if len(t.Armed) == 0 {
		fmt.Fprintf(&b, "never armed (%d signals)", t.SignalsTotal)
	} else {
		fmt.Fprintf(&b, "armed %s, %s in all, first at %s by %s",
			countOf(len(t.Armed), "interval", "intervals"), fmtSeconds(t.ArmedSeconds), fmtSeconds(*t.FirstArmedSeconds), t.Armed[0].By)
	}
	if t.PSI != nil {
		fmt.Fprintf(&b, "; PSI stall io %s, memory %s", fmtMs(t.PSI.IOSomeMs), fmtMs(t.PSI.MemorySomeMs))
	}
	if t.SlowSpans > 0 {
		fmt.Fprintf(&b, "; slow calls and blocked spans outside armed time: %d of %d", t.SlowSpansUnarmed, t.SlowSpans)
	}
	if len(t.Devices) > 0 {
		var n uint64
		for src, c := range t.OutOfScopeCounts {
			if !strings.HasPrefix(src, "psi_") {
				n += c
			}
		}
		psi := "PSI is host-wide"
		if t.Cgroup != "" {
			psi = "PSI is scoped to the cgroup"
		}
		fmt.Fprintf(&b, "; block and busy-disk signals scoped to %s (%d of other disks ignored; %s)", strings.Join(t.Devices, ", "), n, psi)
	}
	if t.Cgroup != "" {
		fmt.Fprintf(&b, "; PSI scoped to cgroup %s", t.Cgroup)
		if t.CgroupPSI != nil {
			fmt.Fprintf(&b, " (its stall io %s, memory %s)", fmtMs(t.CgroupPSI.IOSomeMs), fmtMs(t.CgroupPSI.MemorySomeMs))
		}
		fmt.Fprintf(&b, ", %d host-wide stalls of others ignored", t.OutOfScopeCounts["psi_io"]+t.OutOfScopeCounts["psi_memory"])
	}
	var off []string
	for _, s := range t.Sources {
		if !s.On {
			off = append(off, s.Source)
		}
	}
	if len(off) > 0 {
		fmt.Fprintf(&b, "; off: %s", strings.Join(off, ", "))
	}
	return b.String()
}
