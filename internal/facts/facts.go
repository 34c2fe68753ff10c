// Package facts derives, from a timeline, what the rules reason about: per
// device latency summaries and spans (submission stalls, queue-enter waits,
// queue freezes), uevents per device, and groups of execs of the same command
// with their period. Times are relative to the start of the run.
//
// Facts are pure data with methods that rules call from expr, such as
// Spans.Overlapping or Points.Preceding; nothing here reads the host.
package facts

import (
	"math"
	"slices"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// Run is everything the rules see about one run.
type Run struct {
	Duration   time.Duration
	Kernel     string
	MinLatency time.Duration
	LostEvents uint64
	Devices    []*Device
	Commands   []*Command // execs grouped by command and parent
	Uevents    Points     // every uevent, any subsystem
	// OffCPUByKind counts blocked spans by their Kind, for the summary.
	OffCPUByKind map[string]int

	// Window is the coincidence window rules use to relate spans (Options.Window).
	Window time.Duration
	// SysfsWrites are every block queue attribute write, on any device.
	SysfsWrites Points
	// Unattributed are the queue-enter, tag-wait and freeze-wait spans that
	// could not be tied to a device.
	Unattributed Spans
	// Processes are the processes whose storage system calls the syscall
	// probe traced, the most time in those calls first.
	Processes Processes
	// DirtyLimits are the vm.dirty_* sysctls at the start (probe writeback).
	DirtyLimits DirtyLimits
	// Pressure is what PSI counted over a live run: the time tasks
	// stalled on I/O and on memory (/proc/pressure). Known is false for a
	// run from a trace, or where PSI is off.
	Pressure Pressure

	// probes are the status of every probe of the run (Missing reads them).
	probes []event.ProbeStatus
}

// Latency summarizes a latency histogram, in microseconds.
type Latency struct {
	Count  uint64
	MeanUs float64
	P50Us  float64
	P99Us  float64
	MaxUs  float64
}

// Span kinds, from the frames a task blocked in.
const (
	KindQueueEnter = "queue-enter" // waiting to enter a frozen queue (__bio_queue_enter, blk_queue_enter)
	KindFreezeWait = "freeze-wait" // freezing a queue, waiting for in-flight I/O (blk_mq_freeze_queue_wait)
	KindTagWait    = "tag-wait"    // waiting for a free tag (blk_mq_get_tag)
	KindIOWait     = "io-wait"     // waiting for I/O to complete (io_schedule and friends)
	KindOther      = "other"
	KindSubmit     = "submit" // a slow bio submission (SlowSubmit), not an off-CPU span
	// KindFreeze is a queue freeze timed directly, freeze start to unfreeze
	// (event.Freeze); it holds the freezer's drain wait and what it changed.
	KindFreeze = "freeze"
	// KindSubmitCall is a slow call of submit_bio_noacct timed directly.
	KindSubmitCall = "submit-call"
)

// Sources: how a span was measured, the precision a finding rests on.
const (
	// SourceOffCPU: inferred from the stack a task blocked in (offcpu probe).
	SourceOffCPU = "inferred: off-CPU stacks"
	// SourceSubmitTP: from the block_bio_queue and block_getrq/merge tracepoints.
	SourceSubmitTP = "tracepoints: block_bio_queue to getrq/merge"
)

// SourceDirect is the Source of a span timed at a kernel function, e.g.
// "direct: kprobe __bio_queue_enter".
func SourceDirect(mech event.Mechanism, fn string) string {
	return "direct: " + string(mech) + " " + fn
}

// Span is a time interval with the task it belongs to.
type Span struct {
	Start, End time.Duration // since the start of the run
	Kind       string
	Pid, Tgid  uint32
	Comm       string
	Device     string // device name, empty when not attributed
	// Attr is the sysfs attribute whose write caused a freeze, e.g. "queue/scheduler".
	Attr        string
	Waker       event.Task
	KernelStack []event.Frame
	UserStack   []event.Frame
	// Source says how the span was measured: SourceOffCPU, SourceSubmitTP
	// or SourceDirect(...).
	Source string
}

// Duration is End-Start.
func (s Span) Duration() time.Duration { return s.End - s.Start }

// Spans is a time-ordered list of spans.
type Spans []Span

// Point is an instant: an exec, a uevent, a sysfs write.
type Point struct {
	At     time.Duration // since the start of the run
	Pid    uint32
	Comm   string
	Device string
	What   string // uevent action, exec filename, sysfs attribute
	// Late is how much later than what it records At may be: it happened
	// in [At-Late, At]. Uevents are timed when whyslow reads them from
	// netlink (the kernel gives no time), after udev may already have acted
	// on them: they carry Options.UeventLate. Points timed by the kernel
	// have 0. The relations that ask what followed a point honour it
	// (Spans.PrecededBy and the others; see methods.go).
	Late time.Duration
}

// Points is a time-ordered list of points: in order of At, and of At-Late
// (which a list whose points have one Late, as every list Build makes, is).
type Points []Point

// Task is a thread a finding can name, with the role it played.
type Task struct {
	Pid, Tgid uint32
	Comm      string
	Role      string // set by Tasks.As: "freezer", "submitter", ...
	// Part is the task's part in the finding, PartCause or PartVictim,
	// when the rule knows it (Tasks.AsCause, Tasks.AsVictim); "" when not.
	Part string
	// Cgroup is the cgroup the task's I/O is charged to, when known.
	Cgroup string
}

// Explained is what the device and command findings of a run cover: the
// devices they are about, the tasks they name and, finding by finding
// (Covers), the stages of those processes' blocked time they explain.
// Run-scope rules read it (rules.RunEnv) to tell what no finding explains.
type Explained struct {
	// Devices and Tasks are those of all the findings together.
	Devices []string
	Tasks   Tasks
	// Covers are what each finding explains. Without them (an Explained
	// made by hand), Devices and Tasks explain every stage.
	Covers []Cover
}

// Cover is what one finding explains: the stages Stages of the blocked
// time of the processes it names (Tasks), on every device, and of every
// process on the devices it is about (Devices). Stages nil: every stage,
// which is what a rule that declares no stages explains.
type Cover struct {
	Rule    string
	Devices []string
	Tasks   Tasks
	Stages  []string
}

// Device reports whether a finding is about device name.
func (e Explained) Device(name string) bool { return slices.Contains(e.Devices, name) }

// covers returns e.Covers, or one cover of every stage made of Devices and
// Tasks when there are none.
func (e Explained) covers() []Cover {
	if len(e.Covers) > 0 {
		return e.Covers
	}
	if len(e.Devices) == 0 && len(e.Tasks) == 0 {
		return nil
	}
	return []Cover{{Devices: e.Devices, Tasks: e.Tasks}}
}

// about reports whether the cover's finding names process pid or is about
// device.
func (c Cover) about(pid uint32, device string) bool {
	return slices.Contains(c.Devices, device) || len(Tasks{{Pid: pid, Tgid: pid}}.In(c.Tasks)) > 0
}

// explains reports whether the cover explains stage st.
func (c Cover) explains(st string) bool { return c.Stages == nil || slices.Contains(c.Stages, st) }

// About returns the rules of the findings that are about some of the
// processes ps (name them, or are about a device their calls went to),
// sorted, each once.
func (e Explained) About(ps Processes) []string {
	var out []string
	for _, c := range e.Covers {
		if slices.Contains(out, c.Rule) {
			continue
		}
		for _, p := range ps {
			if p != nil && slices.ContainsFunc(p.Devices, func(d string) bool { return c.about(p.Pid, d) }) {
				out = append(out, c.Rule)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

// Explains reports whether a finding explains the blocked time of process
// pid in stage st on device: one that names the process or is about the
// device, and explains that stage.
func (e Explained) Explains(pid uint32, device, st string) bool {
	for _, c := range e.covers() {
		if c.about(pid, device) && c.explains(st) {
			return true
		}
	}
	return false
}

// A task's part in a finding (Task.Part).
const (
	PartCause  = "cause"  // what the finding blames
	PartVictim = "victim" // who suffered it
)

// Tasks is a list of distinct tasks, in the order they were first seen.
type Tasks []Task

// Device is what is known about one block device.
type Device struct {
	Name    string
	ID      string // major:minor
	Submit  Latency
	Service Latency
	// ServiceTime is the service time of all the device's requests
	// (issue to completion), summed: over a stretch of time, the mean
	// number of requests in service (InService).
	ServiceTime time.Duration
	// SubmitCall is the time in submit_bio_noacct per call, when the
	// submitfn probe ran on a direct mechanism (else Count is 0).
	SubmitCall Latency
	// Stalls are slow submissions (block_bio_queue to getrq/merge above the threshold).
	Stalls Spans
	// QueueWaits are waits to enter this device's queue: timed at
	// __bio_queue_enter/blk_queue_enter when the queueenter probe ran
	// directly, else off-CPU spans in queue enter attributed to the device.
	QueueWaits Spans
	// TagWaits are off-CPU spans waiting for a tag attributed to this device.
	TagWaits Spans
	// Freezes are this device's queue freezes: freeze start to unfreeze
	// (KindFreeze) when the freeze probe ran directly, else spans of
	// freezers waiting for the queue to drain (KindFreezeWait, off-CPU).
	Freezes Spans
	// SubmitCalls are slow calls of submit_bio_noacct on this device, when
	// the submitfn probe ran directly.
	SubmitCalls Spans
	// Uevents for this device (any action).
	Uevents Points
	// SysfsWrites are opens for writing of this device's queue attributes.
	SysfsWrites Points
	// Lower and Upper are the devices this one is stacked on, and stacked under.
	Lower, Upper []string
	// IO is all the I/O counted on this device (probe submit): the sum of
	// IOBy, every share 1.
	IO IOUse
	// IOBy is this device's I/O per process that queued it, the most time
	// in flight first; IOByCgroup per cgroup it was charged to.
	IOBy, IOByCgroup IOUses
	// Processes are the processes that made storage system calls to this
	// device, each as seen on it (Process.On), the most time first.
	Processes Processes
	// UpperStalls are the slow submissions to the devices stacked on this
	// one (Upper), as measured there: each upper device's slow calls of
	// submit_bio_noacct (SubmitCalls) when the submitfn probe timed them,
	// else its slow submissions (Stalls). Those that overlap this device's
	// freezes are what a freeze here cost the upper device's submitters.
	UpperStalls Spans
	// Errors are the requests the device failed (probe devfault; What is
	// the error: "medium error", "I/O error", "timeout", "no space", ...);
	// errors that are answers rather than failures (not supported, try
	// again, out of resources, ...) are left out.
	Errors Points
	// Timeouts are the requests that timed out, kind KindTimeout: from the
	// request's start to when the driver gave it back to be issued again
	// (or failed it) after its deadline; Attr is the operation.
	Timeouts Spans
	// Requeues counts the requests the driver gave back to be issued
	// again, for any reason (timeouts, resets, busy).
	Requeues uint64
	// IOTimeout is the device's request timeout (queue/io_timeout), 0
	// when not known.
	IOTimeout time.Duration
	// SCSITimeouts are the SCSI commands that timed out on the device,
	// by name ("READ_10"), in order (scsi:scsi_dispatch_cmd_timeout).
	SCSITimeouts []string
	// Recoveries counts the times the error handler of the device's SCSI
	// host was woken to recover failed commands (scsi:scsi_eh_wakeup):
	// aborts, then device, target, bus and host resets.
	Recoveries int
	// Limits are the blk-throttle limits of cgroups on this device (v2
	// io.max, v1 blkio.throttle.*), the most delay first.
	Limits Limits
	// IOCost is iocost's configuration on this device, nil when it is not
	// enabled there (or the iolimits probe did not run).
	IOCost *IOCost
	// IOCostState is what iocost did on the device and to the cgroups
	// issuing I/O there (probe iocost).
	IOCostState IOCostState
	// Wbt, Dirty and Journal are the write-back throttles and journal
	// commits seen on the device (probe writeback); Mounts its filesystems.
	Wbt     Wbt
	Dirty   Dirty
	Journal Journal
	Mounts  []Mount
}

// IOUse is the I/O one process (or one cgroup, or everyone) issued to a
// device over the run, counted per bio when it ends (its request
// completes, it is merged into another's, or a bio-based device completes
// it): a bio counts for the task that queued it, which for buffered writes
// is the kernel thread that writes the pages back (Kthread), charged to
// the cgroup that owns them.
type IOUse struct {
	Pid     uint32 // the process; 0 in a row per cgroup or for the whole device
	Comm    string // its name; "" in a row per cgroup
	Kthread bool   // a kernel thread: writeback, journal, loop workers
	// Cgroup is the cgroup its I/O was charged to ("/" is the root, "" unknown;
	// of a process charged to several, the one with the most time in flight).
	Cgroup string
	// Comms are the processes of a row per cgroup (or of the device), the
	// most time in flight first; [Comm] for a process.
	Comms []string
	// IOs are the bios, Requests those that got a request of their own.
	IOs, Requests uint64
	Bytes         uint64
	Reads, Writes uint64 // bios of each direction
	// SyncWrites are the writes the kernel treats as synchronous (O_DIRECT,
	// O_SYNC, fsync's write-out); Flushes the cache flushes.
	SyncWrites, Flushes   uint64
	ReadBytes, WriteBytes uint64
	// InFlightMs is the bios' time from queueing to their end, summed: over
	// the run's length, how many it had in flight on average.
	InFlightMs float64
	// The row's shares (0..1) of the device's bios, requests, bytes and
	// time in flight.
	IOShare, RequestShare, ByteShare, TimeShare float64
}

// IOUses is a list of IOUse rows, the most time in flight first.
type IOUses []IOUse

// Command is a group of execs of the same file by the same parent command.
type Command struct {
	Filename   string
	Comm       string
	Args       []string // of the first exec
	ParentComm string
	PPid       uint32   // parent of the first exec
	Pids       []uint32 // every exec's pid
	PPids      []uint32 // every exec's parent pid, in the order of Pids
	// Ends is when each exec's process ended, in the order of Pids; 0 when
	// its end was not seen (still running, or exits not recorded).
	Ends []time.Duration
	// Forks is when each exec's process was forked, in the order of Pids.
	Forks []time.Duration
	// Under is the command line of the command that runs this one (most of
	// its execs are children of that command's processes, as `cat` run by
	// a script, or `arcconf` run by `sudo`); "" for a command of its own.
	Under string
	// Pipeline is the whole shell pipeline when the command runs in one
	// ("arcconf getconfig 1 AL | grep Temperature", this command first);
	// empty otherwise.
	Pipeline string
	Count    int
	// Period is the median interval between execs, 0 with fewer than 3 execs.
	Period time.Duration
	// Jitter is the spread of the intervals relative to Period (0 = clockwork).
	Jitter float64
	// Periodic is true when there are at least 3 execs and Jitter <= 0.25.
	Periodic bool
	Execs    Points
}

// SaturatingAdd is a+b, or the largest (smallest) time.Duration when the
// sum would overflow: totals of many long spans, or a span's start plus its
// length, stay ordered instead of wrapping to a negative value.
func SaturatingAdd(a, b time.Duration) time.Duration {
	switch s := a + b; {
	case b > 0 && s < a:
		return math.MaxInt64
	case b < 0 && s > a:
		return math.MinInt64
	default:
		return s
	}
}
