// Package event defines what probes observe: the typed events that go on the
// timeline, the per-device latency histograms, probe status and loss counts.
//
// Every timestamp is a Mono: nanoseconds of CLOCK_MONOTONIC, the clock behind
// bpf_ktime_get_ns. Sources that are not BPF (the uevent netlink socket) read
// CLOCK_MONOTONIC when the message arrives, so all events share one clock.
//
// A field tagged `mem:"shared"` shares its contents with other events: a
// string the timeline's memory bound keeps one copy of (timeline.Bound
// counts each distinct one once), a stack the probe caches (counted as its
// header only: timeline.Stream.Bytes).
package event

import (
	"fmt"
	"time"

	"github.com/whyslow/whyslow/internal/hist"
)

// Mono is a CLOCK_MONOTONIC timestamp in nanoseconds.
type Mono int64

// Add returns m shifted by d.
func (m Mono) Add(d time.Duration) Mono { return m + Mono(d) }

// Sub returns the duration m-o.
func (m Mono) Sub(o Mono) time.Duration { return time.Duration(m - o) }

// Event is anything that can be placed on the timeline.
type Event interface {
	// When is the time the event started.
	When() Mono
}

// Task identifies a thread and its process.
type Task struct {
	Pid  uint32 `json:"pid"`  // thread id
	Tgid uint32 `json:"tgid"` // process id
	Comm string `json:"comm"`
}

// Device identifies a whole block device (never a partition).
type Device struct {
	Major uint32 `json:"major"`
	Minor uint32 `json:"minor"`
	Name  string `json:"name"` // kernel name, e.g. "loop0", "bcache0", "sda"
}

// ID returns "major:minor".
func (d Device) ID() string { return fmt.Sprintf("%d:%d", d.Major, d.Minor) }

// String returns the name, or major:minor when the name is unknown.
func (d Device) String() string {
	if d.Name != "" {
		return d.Name
	}
	return d.ID()
}

// SlowSubmit is one bio whose submission took longer than the threshold:
// from block_bio_queue to the moment it got a request (block_getrq) or was
// merged into one. This is the time before request accounting starts, where
// waits for a frozen queue and for a free tag happen.
type SlowSubmit struct {
	Start   Mono          `json:"start"`
	Latency time.Duration `json:"latency"`
	Task    Task          `json:"task"`
	Dev     Device        `json:"dev"`
	Op      string        `json:"op"`  // rwbs, e.g. "WS", "R", "FWS"
	End     string        `json:"end"` // "getrq", "backmerge", "frontmerge"
	Sector  uint64        `json:"sector"`
	Bytes   uint32        `json:"bytes"`
}

// When implements Event.
func (e SlowSubmit) When() Mono { return e.Start }

// IOUsage is what one process submitted to one block device over the run,
// counted in the kernel per process, device, cgroup and kind of I/O: the
// bios that completed, their bytes and their time in flight. A bio counts
// for the task that queued it (block_bio_queue): the application for
// direct and synchronous I/O, but the kernel thread that writes back dirty
// pages (a kworker, a flusher) for buffered writes, whose cgroup is still
// the one the pages are charged to.
type IOUsage struct {
	Time Mono `json:"time"` // when the counts were read: at the end of the run, or at a checkpoint
	// Task is the process: Pid and Tgid are its process id, Comm the name
	// of the thread that queued its first bio counted here.
	Task Task `json:"task"`
	// Kthread is true for a kernel thread (writeback, journal, loop workers).
	Kthread bool `json:"kthread,omitempty"`
	// Cgroup is the path of the cgroup the I/O was charged to (its blkcg),
	// relative to the hierarchy of the io (v2) or blkio (v1) controller:
	// "/" for the root, "" when unknown. CgroupID is its inode number.
	Cgroup   string `json:"cgroup" mem:"shared"`
	CgroupID uint64 `json:"cgroup_id"`
	Dev      Device `json:"dev"`
	// Op is "read", "write", "flush" (a write of no data with a cache
	// flush), "discard" or "other"; Sync says whether the kernel treats it
	// as synchronous (reads; writes with REQ_SYNC, FUA or a flush).
	Op   string `json:"op" mem:"shared"`
	Sync bool   `json:"sync"`
	// IOs are the bios completed; Requests how many of them got a request
	// of their own (the others were merged into one, or the device is
	// bio-based: zram, dm, md, bcache).
	IOs      uint64 `json:"ios"`
	Requests uint64 `json:"requests"`
	Bytes    uint64 `json:"bytes"`
	// InFlight is the bios' time from block_bio_queue to completion,
	// summed: divided by the run's length, the mean number in flight.
	InFlight time.Duration `json:"in_flight"`
}

// When implements Event.
func (e IOUsage) When() Mono { return e.Time }

// Frame is one symbolized stack frame.
type Frame struct {
	Addr   uint64 `json:"addr"`
	Symbol string `json:"symbol,omitempty"` // function name, empty when unknown
	Offset uint64 `json:"offset,omitempty"` // Addr - symbol start
	Module string `json:"module,omitempty"` // "kernel", a module name, or a binary path
}

// String formats the frame as symbol+0xoff or as a bare address.
func (f Frame) String() string {
	if f.Symbol == "" {
		if f.Module != "" {
			return fmt.Sprintf("%s+0x%x", f.Module, f.Addr)
		}
		return fmt.Sprintf("0x%x", f.Addr)
	}
	return fmt.Sprintf("%s+0x%x", f.Symbol, f.Offset)
}

// OffCPU is one span a task spent blocked in uninterruptible sleep (D state)
// longer than the threshold, with the stacks it blocked in.
type OffCPU struct {
	Start       Mono          `json:"start"`
	Duration    time.Duration `json:"duration"`
	Task        Task          `json:"task"`
	Waker       Task          `json:"waker"` // zero when the wake-up was not seen
	KernelStack []Frame       `json:"kernel_stack,omitempty" mem:"shared"`
	UserStack   []Frame       `json:"user_stack,omitempty"`
}

// When implements Event.
func (e OffCPU) When() Mono { return e.Start }

// Exec is one successful execve, with its parent.
type Exec struct {
	Time          Mono     `json:"time"`
	Forked        Mono     `json:"forked"` // when the process was forked, before its exec
	Task          Task     `json:"task"`
	PPid          uint32   `json:"ppid"`
	ParentComm    string   `json:"parent_comm"`
	UID           uint32   `json:"uid"`
	Filename      string   `json:"filename"`
	Args          []string `json:"args"`
	ArgsTruncated bool     `json:"args_truncated,omitempty"`
	// Ret is 0 for an exec that ran, or the error (-errno) of an execve
	// that failed: then Task is the caller, Filename and Args what it
	// asked for, and Forked is 0. Only `whyslow trace exec` asks the exec
	// probe for failed execs (probes.Config.FailedExecs).
	Ret int32 `json:"ret,omitempty"`
}

// When implements Event.
func (e Exec) When() Mono { return e.Time }

// Exit is the end of a process (its thread group leader).
type Exit struct {
	Time     Mono   `json:"time"`
	Pid      uint32 `json:"pid"`
	ExitCode int32  `json:"exit_code"` // the kernel's wait status: code<<8 | signal
}

// When implements Event.
func (e Exit) When() Mono { return e.Time }

// Uevent is one kernel uevent (NETLINK_KOBJECT_UEVENT, kernel group).
type Uevent struct {
	Time      Mono   `json:"time"`
	Action    string `json:"action" mem:"shared"` // add, remove, change, bind, ...
	DevPath   string `json:"devpath" mem:"shared"`
	Subsystem string `json:"subsystem" mem:"shared"`
	DevName   string `json:"devname,omitempty" mem:"shared"` // e.g. "loop0" for block devices
	DevType   string `json:"devtype,omitempty" mem:"shared"` // "disk", "partition"
	Seqnum    uint64 `json:"seqnum"`
}

// When implements Event.
func (e Uevent) When() Mono { return e.Time }

// SysfsWrite is an open for writing of a block queue attribute in sysfs,
// such as /sys/devices/virtual/block/loop0/queue/scheduler.
type SysfsWrite struct {
	Time   Mono   `json:"time"`
	Task   Task   `json:"task"`
	Path   string `json:"path"`
	Device string `json:"device"` // block device name parsed from Path
	Attr   string `json:"attr"`   // attribute below the device, e.g. "queue/scheduler"
}

// When implements Event.
func (e SysfsWrite) When() Mono { return e.Time }

// Probe names. Every probe is named by one of these wherever it is named:
// its status and losses, the streams it fills (timeline.Sources), the
// facts it supplies, --mechanism NAME=... and the trace command.
const (
	ProbeDevFault   = "devfault"
	ProbeExec       = "exec"
	ProbeFreeze     = "freeze"
	ProbeIOCost     = "iocost"
	ProbeIOLimits   = "iolimits"
	ProbeOffCPU     = "offcpu"
	ProbeQueueEnter = "queueenter"
	ProbeService    = "service"
	ProbeSubmit     = "submit"
	ProbeSubmitFn   = "submitfn"
	ProbeSyscall    = "syscall"
	ProbeSysfs      = "sysfs"
	ProbeThrottle   = "throttle"
	ProbeUevent     = "uevent"
	ProbeWriteback  = "writeback"
)

// Mechanism names how a probe is attached.
type Mechanism string

// Mechanisms, best first where they measure the same thing.
const (
	MechFentry     Mechanism = "fentry"
	MechKprobe     Mechanism = "kprobe"
	MechTPBTF      Mechanism = "tp_btf"
	MechRawTP      Mechanism = "raw_tracepoint"
	MechTracepoint Mechanism = "tracepoint"
	MechNetlink    Mechanism = "netlink"
	// MechCgroupfs is a probe that reads cgroup files (no BPF).
	MechCgroupfs Mechanism = "cgroupfs"
)

// ProbeStatus says whether a probe ran, on which mechanism, and why not.
type ProbeStatus struct {
	Name      string    `json:"name"`
	Mechanism Mechanism `json:"mechanism,omitempty"`
	Status    string    `json:"status"` // "ok" or "unavailable"
	Reason    string    `json:"reason,omitempty"`
	// Skipped lists the better mechanisms that were tried or ruled out, with why.
	Skipped []Skip `json:"skipped,omitempty"`
	// InferredBy names the probe that does the work when this one runs on
	// a rung that measures nothing of its own (its events are inferred
	// from that probe's); "" when the probe measures itself.
	InferredBy string `json:"inferred_by,omitempty"`
}

// Skip is one mechanism a probe did not use, and why.
type Skip struct {
	Mechanism Mechanism `json:"mechanism"`
	Reason    string    `json:"reason"`
}

// Probe status values.
const (
	StatusOK          = "ok"
	StatusUnavailable = "unavailable"
)

// Loss counts events a probe could not deliver.
type Loss struct {
	Probe string `json:"probe"`
	What  string `json:"what"` // "ring buffer full", "map full", "netlink overrun", ...
	Count uint64 `json:"count"`
}

// Holder says that block device Upper is stacked on Lower (from
// /sys/block/<Upper>/slaves), as bcache, dm and md devices are.
type Holder struct {
	Upper string `json:"upper"`
	Lower string `json:"lower"`
}

// QueueEnter is one wait to enter a device's request queue, timed at the
// kernel function that waits (__bio_queue_enter, or blk_queue_enter on
// older kernels) by a direct probe (fentry/fexit or kprobe/kretprobe).
type QueueEnter struct {
	Start     Mono          `json:"start"`
	Duration  time.Duration `json:"duration"`
	Task      Task          `json:"task"`
	Dev       Device        `json:"dev"`
	Func      string        `json:"func" mem:"shared"`      // "__bio_queue_enter" or "blk_queue_enter"
	Mechanism Mechanism     `json:"mechanism" mem:"shared"` // "fentry" or "kprobe"
	// Ret is the function's result: 0, or a negative errno when the queue
	// was dying (-ENODEV) or the caller would not wait (-EAGAIN, -EBUSY).
	Ret int32 `json:"ret,omitempty"`
}

// When implements Event.
func (e QueueEnter) When() Mono { return e.Start }

// Freeze is one freeze of a request queue, from the outermost freeze start
// (blk_freeze_queue_start) to the unfreeze that let I/O in again, with the
// task that froze it and where: its kernel and user stacks at the freeze.
type Freeze struct {
	Start       Mono          `json:"start"`
	Duration    time.Duration `json:"duration"`
	Task        Task          `json:"task"`      // the freezer
	Unfreezer   Task          `json:"unfreezer"` // the task that unfroze it
	Dev         Device        `json:"dev"`
	Func        string        `json:"func" mem:"shared"` // the freeze function probed, e.g. "blk_freeze_queue_start"
	Mechanism   Mechanism     `json:"mechanism" mem:"shared"`
	KernelStack []Frame       `json:"kernel_stack,omitempty"`
	UserStack   []Frame       `json:"user_stack,omitempty"`
}

// When implements Event.
func (e Freeze) When() Mono { return e.Start }

// SubmitCall is one call of the bio submission function (submit_bio_noacct,
// generic_make_request before 5.9) that took longer than the threshold,
// timed from entry to return by a direct probe.
type SubmitCall struct {
	Start     Mono          `json:"start"`
	Latency   time.Duration `json:"latency"`
	Task      Task          `json:"task"`
	Dev       Device        `json:"dev"`
	Func      string        `json:"func" mem:"shared"`
	Mechanism Mechanism     `json:"mechanism" mem:"shared"`
}

// When implements Event.
func (e SubmitCall) When() Mono { return e.Start }

// DevAll is the device of a call that goes to every device: sync(2).
var DevAll = Device{Name: "all"}

// Syscall is one storage system call (read, write and their p/v variants,
// the syncs, aio) on a block device, or a file of a filesystem on one,
// that took at least the threshold (--min-latency), timed from entry to
// exit by the syscall probe.
type Syscall struct {
	Start    Mono          `json:"start"`
	Duration time.Duration `json:"duration"`
	Task     Task          `json:"task"`
	Call     string        `json:"call" mem:"shared"` // the system call: "pwrite64", "fdatasync", ...
	Dev      Device        `json:"dev"`               // the whole disk it went to; DevAll for sync(2)
	// Sleep is the time it slept inside the call, Runqueue the time it
	// was runnable but not running (after a wake-up, or preempted).
	Sleep    time.Duration `json:"sleep,omitempty"`
	Runqueue time.Duration `json:"runqueue,omitempty"`
	Ret      int64         `json:"ret,omitempty"` // the call's result: bytes, or -errno
	// FromArming marks a call that was in progress already when the
	// probe armed (armed mode): Start is the arming, Duration and Sleep
	// are lower bounds.
	FromArming bool `json:"from_arming,omitempty"`
}

// When implements Event.
func (e Syscall) When() Mono { return e.Start }

// SyscallStats is every storage call of one kind that one process made to
// one device during the run, as the syscall probe summed them in the
// kernel: their latency distribution and their time off CPU.
type SyscallStats struct {
	Time Mono   `json:"time"` // when the sums were read: the end of the run
	Pid  uint32 `json:"pid"`  // the process (thread group id)
	Comm string `json:"comm"`
	Call string `json:"call" mem:"shared"`
	Dev  Device `json:"dev"`
	// Latency is entry to exit, ns: the non-empty slots of the
	// distribution only (a process's calls fill a few of 328).
	Latency  hist.Sparse   `json:"latency"`
	Sleep    time.Duration `json:"sleep,omitempty"`    // asleep inside these calls
	Runqueue time.Duration `json:"runqueue,omitempty"` // runnable, not running, inside them
	// FromArming counts, of these calls, those that were in progress
	// already when the probe armed (armed mode): timed from the arming,
	// their latencies in Latency are lower bounds.
	FromArming uint64 `json:"from_arming,omitempty"`
}

// When implements Event.
func (e SyscallStats) When() Mono { return e.Time }

// BlockedStack is how long one process's storage calls of one kind on one
// device slept in one kernel stack (summed in the kernel over every
// sleep, however short).
type BlockedStack struct {
	Time  Mono          `json:"time"` // when the sums were read
	Pid   uint32        `json:"pid"`  // the process
	Comm  string        `json:"comm"`
	Call  string        `json:"call" mem:"shared"`
	Dev   Device        `json:"dev"`
	Total time.Duration `json:"total"`
	Count uint64        `json:"count"` // sleeps
	// KernelStack is where the threads slept, innermost first; empty when
	// the stack could not be taken, or was not walked.
	KernelStack []Frame `json:"kernel_stack,omitempty" mem:"shared"`
	// Unwalked marks the sleeps whose stacks were not walked, to bound the
	// cost of the walks (they came too soon after another walk on their
	// CPU): their time is shared out like that of the walked sleeps of the
	// same process, device and call.
	Unwalked bool `json:"unwalked,omitempty"`
}

// When implements Event.
func (e BlockedStack) When() Mono { return e.Time }

// UnfinishedCall is a storage call still in the kernel when the syscall
// probe's sums were read (at a checkpoint, or at the end of the run), in
// it for at least --min-latency and blocked at least once: a call that is
// counted at its exit only would not be seen at all. Its earlier sleeps
// are in the BlockedStack sums of its process, device and call already;
// its latest sleep, which may last still, is here (Asleep, KernelStack).
type UnfinishedCall struct {
	Time  Mono   `json:"time"`  // when it was read
	Start Mono   `json:"start"` // the call's entry
	Task  Task   `json:"task"`
	Call  string `json:"call" mem:"shared"`
	Dev   Device `json:"dev"`
	// InCall is the time in the call so far (Time - Start).
	InCall time.Duration `json:"in_call"`
	// Sleep and Runqueue are its time asleep and in the run queue before
	// its latest sleep; Asleep is the time since that sleep began (up to
	// Time). With task storage Asleep is 0 once the thread has woken from
	// it (that sleep is in the BlockedStack sums then); without, the
	// thread may have woken since, and not yet returned.
	Sleep    time.Duration `json:"sleep,omitempty"`
	Runqueue time.Duration `json:"runqueue,omitempty"`
	Asleep   time.Duration `json:"asleep"`
	// KernelStack is where its latest sleep began, innermost first; empty
	// when it could not be taken or was not walked (Unwalked).
	KernelStack []Frame `json:"kernel_stack,omitempty" mem:"shared"`
	Unwalked    bool    `json:"unwalked,omitempty"`
	// Before marks a call that was in the kernel already when the probe
	// started (found asleep in it, in /proc), or when it last armed
	// (armed mode: from /proc, or seeded from the thread's registers):
	// Start is the probe's start or the arming, InCall and Asleep are at
	// least that long (lower bounds).
	Before bool `json:"before,omitempty"`
}

// When implements Event.
func (e UnfinishedCall) When() Mono { return e.Time }

// The kinds of memory stall (MemStall.Kind).
const (
	MemDirectReclaim = "direct_reclaim" // the page allocator reclaiming for itself (global memory short)
	MemCgroupReclaim = "memcg_reclaim"  // a charge over its memory cgroup's limit reclaiming
	MemCompaction    = "compaction"     // direct compaction for a higher-order allocation
)

// MemStall is how long one process's storage calls of one kind on one
// device spent in one kind of memory stall (direct reclaim, its cgroup's
// reclaim, direct compaction), on or off CPU: timed begin to end by the
// vmscan and compaction tracepoints inside the calls, summed in the kernel.
type MemStall struct {
	Time  Mono          `json:"time"` // when the sums were read
	Pid   uint32        `json:"pid"`  // the process
	Comm  string        `json:"comm"`
	Call  string        `json:"call" mem:"shared"`
	Dev   Device        `json:"dev"`
	Kind  string        `json:"kind" mem:"shared"` // MemDirectReclaim, MemCgroupReclaim, MemCompaction
	Total time.Duration `json:"total"`
	Count uint64        `json:"count"` // stalls
	Max   time.Duration `json:"max"`   // the longest
}

// When implements Event.
func (e MemStall) When() Mono { return e.Time }

// Process is a process whose storage calls the syscall probe traced, seen
// at its first one: the names of its control groups, which name the limits
// its I/O is under.
type Process struct {
	Time     Mono   `json:"time"`
	Pid      uint32 `json:"pid"`
	Comm     string `json:"comm"`
	CgroupID uint64 `json:"cgroup_id,omitempty"` // cgroup v2 id (the thread's)
	// Cgroup is its cgroup v2 path ("/system.slice/db.service"), Blkio its
	// cgroup v1 blkio path where that hierarchy is mounted; "" when
	// unknown (the process was gone before they were read).
	Cgroup string `json:"cgroup,omitempty"`
	Blkio  string `json:"blkio,omitempty"`
}

// When implements Event.
func (e Process) When() Mono { return e.Time }

// The kinds of DeviceFault.
const (
	FaultError   = "error"   // a request completed with an error
	FaultTimeout = "timeout" // a request was given back after its deadline, to be issued again
	// FaultSCSITimeout is a SCSI command that timed out (the tracepoint
	// scsi:scsi_dispatch_cmd_timeout); Op names its opcode ("READ_10").
	FaultSCSITimeout = "scsi_timeout"
	// FaultErrorHandler is a SCSI host's error handler woken to recover
	// its failed commands (scsi:scsi_eh_wakeup): it aborts them, then
	// resets the device, the target, the bus and the host as it escalates.
	// One per disk on the host (Dev named as the host, "host2", when it
	// has none).
	FaultErrorHandler = "error_handler"
)

// DeviceFault is one request that failed on a device (completed with an
// error) or timed out (given back after its deadline had passed, by the
// driver's timeout handling, to be issued again): probe devfault.
type DeviceFault struct {
	Time   Mono   `json:"time"`
	Dev    Device `json:"dev"`
	Kind   string `json:"kind" mem:"shared"` // FaultError, FaultTimeout, ...
	Op     string `json:"op" mem:"shared"`   // "read", "write", "flush", "discard", ...
	Sector uint64 `json:"sector"`
	Bytes  uint32 `json:"bytes,omitempty"`
	// Status names an error ("medium error", "I/O error", "timeout", ...)
	// and Errno is its -errno; both empty for a timeout.
	Status string `json:"status,omitempty" mem:"shared"`
	Errno  int32  `json:"errno,omitempty"`
	// InFlight is the time since the request was started (else since it
	// was allocated); 0 when the kernel did not stamp it.
	InFlight time.Duration `json:"in_flight,omitempty"`
	// TimedOut marks an error on a request whose deadline had passed.
	TimedOut bool `json:"timed_out,omitempty"`
	// Timeout is the device's request timeout (queue/io_timeout) when it
	// could be read.
	Timeout time.Duration `json:"timeout,omitempty"`
}

// When implements Event.
func (e DeviceFault) When() Mono { return e.Time }

// Requeues is how many requests a device's driver gave back to be issued
// again during the run (block_rq_requeue), and how many of them after
// their deadline (timeouts), counted in the kernel.
type Requeues struct {
	Time     Mono   `json:"time"` // when the counts were read
	Dev      Device `json:"dev"`
	Count    uint64 `json:"count"`
	TimedOut uint64 `json:"timed_out,omitempty"`
}

// When implements Event.
func (e Requeues) When() Mono { return e.Time }

// IOLimit is one I/O limit of a cgroup on a device, as the iolimits probe
// read it from cgroupfs at the start of the run: cgroup v1's
// blkio.throttle.{read,write}_{bps,iops}_device, or v2's io.max. Both are
// enforced by blk-throttle, which holds a cgroup's bios before the device
// sees them.
type IOLimit struct {
	Time Mono `json:"time"`
	// Cgroup is the cgroup's path in its hierarchy ("/backup"); V1 says the
	// hierarchy is cgroup v1's blkio one, else it is the unified (v2) one.
	Cgroup string `json:"cgroup"`
	V1     bool   `json:"v1,omitempty"`
	Dev    Device `json:"dev"`
	// Limit is "rbps", "wbps", "riops" or "wiops" (io.max's keys), Value
	// its bytes or I/Os a second.
	Limit string `json:"limit" mem:"shared"`
	Value uint64 `json:"value"`
}

// When implements Event.
func (e IOLimit) When() Mono { return e.Time }

// CgroupIO is the I/O a limited cgroup has done on a device so far, as the
// iolimits probe read it from cgroupfs (v1 blkio.throttle.io_serviced and
// io_service_bytes, v2 io.stat), at the start and at the end of the run:
// the difference is its rate during the run.
type CgroupIO struct {
	Time       Mono   `json:"time"`
	Cgroup     string `json:"cgroup"`
	V1         bool   `json:"v1,omitempty"`
	Dev        Device `json:"dev"`
	Reads      uint64 `json:"reads"`
	Writes     uint64 `json:"writes"`
	ReadBytes  uint64 `json:"read_bytes"`
	WriteBytes uint64 `json:"write_bytes"`
}

// When implements Event.
func (e CgroupIO) When() Mono { return e.Time }

// ThrottleWait is one bio that blk-throttle held over its cgroup's limit,
// from the moment it was parked (the throttle function returned true) to
// its dispatch (block_bio_queue), at least the threshold (--min-latency),
// timed by a direct probe; Task is the task that submitted it. A bio still
// held when the probe stopped is Unfinished: its Duration is its wait up to
// then, a lower bound.
type ThrottleWait struct {
	Start      Mono          `json:"start"`
	Duration   time.Duration `json:"duration"`
	Task       Task          `json:"task"`
	Dev        Device        `json:"dev"`
	Func       string        `json:"func" mem:"shared"`      // "__blk_throtl_bio" or "blk_throtl_bio"
	Mechanism  Mechanism     `json:"mechanism" mem:"shared"` // "fentry" or "kprobe"
	Unfinished bool          `json:"unfinished,omitempty"`   // still held when the probe stopped
}

// When implements Event.
func (e ThrottleWait) When() Mono { return e.Start }

// CgroupMember is a process seen in a limited cgroup (or in one below it)
// by the iolimits probe, which reads their cgroup.procs at the start, every
// PollInterval and at the end of the run: one event per process and limited
// cgroup, when first seen there.
type CgroupMember struct {
	Time   Mono   `json:"time"`
	Cgroup string `json:"cgroup"` // the limited cgroup
	V1     bool   `json:"v1,omitempty"`
	Pid    uint32 `json:"pid"`
	Comm   string `json:"comm"`
}

// When implements Event.
func (e CgroupMember) When() Mono { return e.Time }

// IOCost is the configuration of the iocost controller on a device where
// it is enabled, read from the cgroup v2 root's io.cost.qos and
// io.cost.model (the line of the device, as the kernel prints it, without
// its MAJ:MIN).
type IOCost struct {
	Time  Mono   `json:"time"`
	Dev   Device `json:"dev"`
	QoS   string `json:"qos"`
	Model string `json:"model"`
}

// When implements Event.
func (e IOCost) When() Mono { return e.Time }

// IOCostVrate is the iocost controller's vrate on a device at the end of
// a period in which iocost was busy or changed it (the tracepoint
// iocost:iocost_ioc_vrate_adj). The vrate is the rate, in percent of the
// device's cost model (io.cost.model), at which iocost pays the cgroups'
// budgets out; io.cost.qos min and max bound it.
type IOCostVrate struct {
	Time Mono   `json:"time"`
	Dev  Device `json:"dev"`
	// Pct is the vrate set for the next period, OldPct the one in force
	// in the period that ended (with its error correction).
	Pct    float64 `json:"pct"`
	OldPct float64 `json:"old_pct"`
	// Busy is the busy level: above 0 the device missed its QoS targets
	// and iocost lowers the vrate, below 0 it had room.
	Busy int32 `json:"busy"`
	// ReadMissedPPM and WriteMissedPPM are the I/Os of the period, in
	// parts per million, that missed the QoS latency targets; RqWaitPct
	// the part of it spent waiting for a request (tag).
	ReadMissedPPM  uint32 `json:"read_missed_ppm"`
	WriteMissedPPM uint32 `json:"write_missed_ppm"`
	RqWaitPct      uint32 `json:"rq_wait_pct"`
	// Lagging and Shortages count the cgroups with I/O still in flight
	// from past periods, and those short of budget.
	Lagging   int32 `json:"lagging"`
	Shortages int32 `json:"shortages"`
}

// When implements Event.
func (e IOCostVrate) When() Mono { return e.Time }

// IOCostCgroup kinds.
const (
	IOCostActivate = "activate" // iocost_iocg_activate: it started issuing I/O after a pause
	IOCostIdle     = "idle"     // iocost_iocg_idle (6.1+): it went idle
	IOCostShortage = "shortage" // iocost_inuse_shortage: it needed more than its share
	IOCostForgive  = "forgive"  // iocost_iocg_forgive_debt: its debt was forgiven
)

// IOCostCgroup is something the iocost controller did to one cgroup's I/O
// on a device (the tracepoints iocost:iocost_iocg_activate,
// iocost_iocg_idle, iocost_inuse_shortage, iocost_iocg_forgive_debt).
type IOCostCgroup struct {
	Time   Mono   `json:"time"`
	Dev    Device `json:"dev"`
	Cgroup string `json:"cgroup" mem:"shared"` // path in the cgroup2 hierarchy
	Kind   string `json:"kind" mem:"shared"`   // IOCostActivate, ...
	// VratePct is the device's vrate (activate, idle), % of the model.
	VratePct float64 `json:"vrate_pct,omitempty"`
	// Weight is its io.weight (activate, idle).
	Weight uint32 `json:"weight,omitempty"`
	// SharePct is its hierarchical share of the device's budget in use
	// (hweight_inuse), in percent (activate, idle; shortage: after it).
	SharePct float64 `json:"share_pct,omitempty"`
	// Debt is the I/O it had issued over budget (forgive), as device time
	// at a vrate of 100%, and Delay the delay iocost imposed on its
	// processes to pay it back; DebtAfter and DelayAfter what was left;
	// UsagePct the device's usage then.
	Debt       time.Duration `json:"debt,omitempty"`
	DebtAfter  time.Duration `json:"debt_after,omitempty"`
	Delay      time.Duration `json:"delay,omitempty"`
	DelayAfter time.Duration `json:"delay_after,omitempty"`
	UsagePct   uint32        `json:"usage_pct,omitempty"`
}

// When implements Event.
func (e IOCostCgroup) When() Mono { return e.Time }

// WbtStep is writeback throttling (rq-qos wbt) scaling a device's queue
// depth: the tracepoint wbt:wbt_step, fired at the end of a monitoring
// window in which reads (or synchronous writes) missed the latency target.
type WbtStep struct {
	Time Mono   `json:"time"`
	Dev  Device `json:"dev"`
	// Step is the scale step after it: above 0 wbt allows less depth
	// than the default, below 0 more.
	Step   int32         `json:"step"`
	Msg    string        `json:"msg" mem:"shared"` // the kernel's reason: "scale down", "scale up", ...
	Window time.Duration `json:"window"`           // the monitoring window
	// Bg, Normal and Max are the depth limits after the step: background
	// writeback, other buffered writeback, and the most of any writes.
	Bg     uint32 `json:"bg"`
	Normal uint32 `json:"normal"`
	Max    uint32 `json:"max"`
}

// When implements Event.
func (e WbtStep) When() Mono { return e.Time }

// WbtLat is a device's wbt latency target (queue/wbt_lat_usec) read from
// sysfs at the start of the run (From "sysfs"; zero: wbt is off on the
// device), or, from the tracepoint wbt_lat (From "wbt_lat"), the latency of
// a synchronous I/O that exceeded wbt's monitoring window, which made it
// scale the writes down: the kernel's latency, not a new target.
type WbtLat struct {
	Time Mono          `json:"time"`
	Dev  Device        `json:"dev"`
	Lat  time.Duration `json:"lat"`
	From string        `json:"from" mem:"shared"`
}

// When implements Event.
func (e WbtLat) When() Mono { return e.Time }

// WbtWindow is one of writeback throttling's monitoring windows on a
// device whose completion latencies wbt traced (the tracepoint
// wbt:wbt_stat): one in which the reads' least latency missed the target
// (queue/wbt_lat_usec; wbt_lat reports that latency, see WbtLat), or one
// that ended while wbt had scaled the depth.
type WbtWindow struct {
	Time Mono   `json:"time"`
	Dev  Device `json:"dev"`
	// The window's completion latencies, of reads and of writes: mean,
	// least, most, and how many completed.
	ReadMean  time.Duration `json:"read_mean,omitempty"`
	ReadMin   time.Duration `json:"read_min,omitempty"`
	ReadMax   time.Duration `json:"read_max,omitempty"`
	Reads     int64         `json:"reads,omitempty"`
	WriteMean time.Duration `json:"write_mean,omitempty"`
	WriteMin  time.Duration `json:"write_min,omitempty"`
	WriteMax  time.Duration `json:"write_max,omitempty"`
	Writes    int64         `json:"writes,omitempty"`
}

// When implements Event.
func (e WbtWindow) When() Mono { return e.Time }

// DirtyPause is a writer paused in balance_dirty_pages (the tracepoint
// writeback:balance_dirty_pages, when it paused): it had dirtied pages
// faster than the device they go to writes them back. Limits are in
// pages, rates in KiB/s.
type DirtyPause struct {
	Time Mono   `json:"time"`
	Task Task   `json:"task"`
	Dev  Device `json:"dev"` // the device its dirty pages are written back to
	// Pause is the sleep that follows; Period the time the kernel meant
	// between pauses; Paused the time already paused in this call.
	Pause  time.Duration `json:"pause"`
	Period time.Duration `json:"period"`
	Paused time.Duration `json:"paused,omitempty"`
	// Limit is the dirty limit in force (vm.dirty_bytes or _ratio), Dirty
	// the dirty (and written back) pages then, Setpoint the middle of the
	// throttling range; WbSetpoint and WbDirty the device's share of them.
	Limit      uint64 `json:"limit"`
	Setpoint   uint64 `json:"setpoint"`
	Dirty      uint64 `json:"dirty"`
	WbSetpoint uint64 `json:"wb_setpoint"`
	WbDirty    uint64 `json:"wb_dirty"`
	// DirtyRatelimit is the rate the device's writers may dirty at,
	// TaskRatelimit this writer's.
	DirtyRatelimit uint64 `json:"dirty_ratelimit"`
	TaskRatelimit  uint64 `json:"task_ratelimit"`
	CgroupIno      uint64 `json:"cgroup_ino,omitempty"` // its writeback cgroup (cgroup v2), 0 or 1 for the root
	// Cgroup is CgroupIno's path in the cgroup v2 hierarchy, "" for the
	// root or when it was not found; MemoryMax and MemoryHigh are its
	// memory.max and memory.high in bytes, 0 when "max" (or unknown):
	// what its own dirty limit is a share of.
	Cgroup     string `json:"cgroup,omitempty"`
	MemoryMax  uint64 `json:"memory_max,omitempty"`
	MemoryHigh uint64 `json:"memory_high,omitempty"`
}

// When implements Event.
func (e DirtyPause) When() Mono { return e.Time }

// DirtyLimits are the dirty-page sysctls at the start of the run
// (/proc/sys/vm/dirty_*): the byte values take precedence when not 0.
type DirtyLimits struct {
	Time            Mono   `json:"time"`
	Bytes           uint64 `json:"bytes"`
	Ratio           uint64 `json:"ratio"`
	BackgroundBytes uint64 `json:"background_bytes"`
	BackgroundRatio uint64 `json:"background_ratio"`
	PageSize        uint64 `json:"page_size"`
	// Thresh is the system's dirty threshold then, in pages
	// (/proc/vmstat nr_dirty_threshold), and Dirtyable the memory it is a
	// share of (/proc/meminfo MemFree + Active(file) + Inactive(file)), in
	// pages; 0 when unknown.
	Thresh    uint64 `json:"thresh,omitempty"`
	Dirtyable uint64 `json:"dirtyable,omitempty"`
}

// When implements Event.
func (e DirtyLimits) When() Mono { return e.Time }

// JournalCommit is one jbd2 journal commit (ext4), timed from its
// tracepoints: jbd2_start_commit, then the phases locking (waiting for
// the transaction's handles), flushing (submitting its ordered data),
// logging (writing the journal, and waiting for the ordered data), until
// jbd2_end_commit.
type JournalCommit struct {
	Start    Mono          `json:"start"`
	Duration time.Duration `json:"duration"`
	Dev      Device        `json:"dev"`            // the whole disk of the filesystem
	FsDev    string        `json:"fs_dev"`         // the filesystem's own device (a partition's name)
	Tid      uint32        `json:"tid"`            // the transaction
	Sync     bool          `json:"sync,omitempty"` // someone waited for it (fsync)
	Locking  time.Duration `json:"locking"`
	Flushing time.Duration `json:"flushing"`
	Logging  time.Duration `json:"logging"`
	// From jbd2_run_stats: the handles of the transaction and its blocks.
	Handles      uint32 `json:"handles,omitempty"`
	Blocks       uint32 `json:"blocks,omitempty"`
	BlocksLogged uint32 `json:"blocks_logged,omitempty"`
}

// When implements Event.
func (e JournalCommit) When() Mono { return e.Start }

// OrderedData is a journal commit writing an inode's data before it can
// commit (ext4's data=ordered: jbd2_submit_inode_data), with the process
// that last dirtied that inode (writeback_dirty_folio); Dirtier is zero
// when the probe did not see it dirtied.
type OrderedData struct {
	Time    Mono   `json:"time"`
	Dev     Device `json:"dev"`
	FsDev   string `json:"fs_dev"`
	Tid     uint32 `json:"tid"`
	Ino     uint64 `json:"ino"`
	Dirtier Task   `json:"dirtier"`
}

// When implements Event.
func (e OrderedData) When() Mono { return e.Time }

// LogForce is a force of an xfs log (xfs:xfs_log_force): the log's
// changes made durable up to a checkpoint (Lsn, its sequence) or whole
// (Lsn 0), by fsync, sync, the log worker or the AIL. Task is the thread
// that forced it; Caller the function that called the force, "" when its
// address could not be named.
type LogForce struct {
	Time   Mono   `json:"time"`
	Dev    Device `json:"dev"`    // the whole disk of the filesystem
	FsDev  string `json:"fs_dev"` // the filesystem's own device
	Task   Task   `json:"task"`
	Lsn    int64  `json:"lsn,omitempty"`
	Caller string `json:"caller,omitempty"`
}

// When implements Event.
func (e LogForce) When() Mono { return e.Time }

// LogWrite is one write of an xfs log buffer (an iclog), from its
// submission (xfs:xlog_iclog_sync) to its completion
// (xlog_iclog_sync_done); kernels before 6.1 have no such events.
type LogWrite struct {
	Start    Mono          `json:"start"`
	Duration time.Duration `json:"duration"`
	Dev      Device        `json:"dev"`
	FsDev    string        `json:"fs_dev"`
	Lsn      uint64        `json:"lsn"`
	Bytes    uint32        `json:"bytes,omitempty"` // written into the buffer
	// Flush and FUA: the write flushed the device's cache first, and was
	// written through it.
	Flush bool `json:"flush,omitempty"`
	FUA   bool `json:"fua,omitempty"`
}

// When implements Event.
func (e LogWrite) When() Mono { return e.Start }

// Mount is a filesystem mounted on a block device at the start of the run
// (/proc/self/mountinfo).
type Mount struct {
	Time   Mono   `json:"time"`
	Dev    Device `json:"dev"`    // the whole disk
	FsDev  string `json:"fs_dev"` // its own device (a partition's name)
	FSType string `json:"fstype" mem:"shared"`
	Point  string `json:"point"`
}

// When implements Event.
func (e Mount) When() Mono { return e.Time }
