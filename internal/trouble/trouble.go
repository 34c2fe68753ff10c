// Package trouble watches cheap, always-on signals of storage trouble and
// says when trouble starts and ends: the trigger of an armed mode, where
// the costly programs on the hot scheduler and system-call hooks would be
// attached only while trouble is seen (docs/report-schema.md, "trouble").
//
// Its sources cost nothing while all is well:
//   - PSI triggers on /proc/pressure/io and /proc/pressure/memory ("some"
//     stall of Stall in Window), or on a cgroup's io.pressure and
//     memory.pressure when scoped to it (Config.Cgroup): the kernel wakes
//     the watcher, nothing polls;
//   - the slow spans the block-path probes already stream (a bio's
//     submission over the run's threshold, a throttled bio, a wait to
//     enter a frozen queue) and device errors and timeouts, fed in by
//     Observe;
//   - a disk at least Busy busy over a BusyEvery interval (io_ticks of
//     /sys/block/*/stat, read once per interval).
//
// Arming is the state machine: the first signal arms, Hold without one
// disarms. A Watcher only says what an armed mode would have done (shadow
// mode); it attaches nothing.
package trouble

import (
	"fmt"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// Source is where a signal came from.
type Source string

// The sources of signals.
const (
	PSIIO        Source = "psi_io"        // PSI trigger on /proc/pressure/io
	PSIMemory    Source = "psi_memory"    // PSI trigger on /proc/pressure/memory
	SlowSubmit   Source = "slow_submit"   // a bio's submission (Q2G) over the threshold
	ThrottleWait Source = "throttle_wait" // a bio blk-throttle held over the threshold
	QueueEnter   Source = "queue_enter"   // a wait to enter a frozen queue over the threshold
	DeviceFault  Source = "device_fault"  // a failed or timed-out request
	DiskBusy     Source = "disk_busy"     // a disk at least Config.Busy busy over an interval
)

// Sources lists every source, in the order a summary lists them.
var Sources = []Source{PSIIO, PSIMemory, SlowSubmit, ThrottleWait, QueueEnter, DeviceFault, DiskBusy}

// Signal is one sign of storage trouble.
type Signal struct {
	Source Source
	At     event.Mono // when the watcher learned of it
	Detail string     // what was seen, e.g. "loop0 busy 98% over 1s"
}

// String formats the signal for logs.
func (s Signal) String() string { return fmt.Sprintf("%s at %d: %s", s.Source, s.At, s.Detail) }

// SourceStatus says whether a source watched, and why not.
type SourceStatus struct {
	Source Source
	On     bool
	// Reason says why it is off ("/proc/pressure/io: no such file (kernel
	// without PSI, or psi=0)"), or, when on, how it works if not as
	// configured (an unprivileged PSI trigger).
	Reason string
}

// PSITotals are the "some" and "full" stall times PSI counted over the
// run (the growth of "total=" in /proc/pressure/io and memory): the time
// at least one task (some), or every non-idle task (full), waited on I/O
// or on memory. Known is false when /proc/pressure could not be read.
type PSITotals struct {
	Known                  bool
	IOSome, IOFull         time.Duration
	MemorySome, MemoryFull time.Duration
}

// Summary is what a Watcher saw over a run.
type Summary struct {
	Start, End event.Mono
	// Hold is the disarm delay, Stall and Window the PSI triggers', Busy
	// the disk-busy threshold: the settings the intervals were found with.
	Hold, Stall, Window time.Duration
	Busy                float64
	Sources             []SourceStatus
	// Signals are the first signals (Config.KeepSignals), Counts every
	// signal by source.
	Signals []Signal
	Counts  map[Source]uint64
	// First is each source's first signal: when it alone would have armed.
	First     map[Source]event.Mono
	Intervals []Interval
	PSI       PSITotals
	// Devices is the scope of the block path's and busy disks' signals
	// (Config.Devices; empty: every disk), OutOfScope the signals of
	// other disks, by source, which armed nothing, and OutOfScopeDisks
	// those disks (the first 20).
	Devices         []string          `json:",omitempty"`
	OutOfScope      map[Source]uint64 `json:",omitempty"`
	OutOfScopeDisks []string          `json:",omitempty"`
	// Cgroup is the cgroup v2 directory PSI was scoped to (Config.Cgroup;
	// empty: host-wide), CgroupPSI its stall over the run (PSI stays the
	// host's). Host-wide PSI events its stall did not account for are in
	// OutOfScope.
	Cgroup    string    `json:",omitempty"`
	CgroupPSI PSITotals `json:",omitzero"`
}

// ArmedTime is the time the run would have been armed.
func (s *Summary) ArmedTime() time.Duration {
	var d time.Duration
	for _, iv := range s.Intervals {
		d += iv.To.Sub(iv.From)
	}
	return d
}

// Total is the number of signals seen.
func (s *Summary) Total() uint64 {
	var n uint64
	for _, c := range s.Counts {
		n += c
	}
	return n
}
