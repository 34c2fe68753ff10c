// Package timeline holds everything one run observed, on one CLOCK_MONOTONIC
// time axis: typed event streams sorted by time, per-device latency
// histograms, probe status and loss counts. It is the only input of the
// analysis, so a live run and a recorded trace give the same report.
//
// This file is the registry of what goes on a timeline: one field per event
// stream or histogram, and Sources, which says for every probe, in the order
// probes start and are listed, which streams and histograms it fills. The
// collector, the trace file, the `whyslow probes` table and the docs all
// derive from it; nothing else names event types per kind.
package timeline

import (
	"fmt"
	"strconv"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/trouble"
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
	// Trouble is what the trouble watcher saw over a live run (shadow
	// armed mode, docs/report-schema.md "trouble"); nil for a timeline
	// read from a trace, which does not record it.
	Trouble *trouble.Summary
	// Coverage says when the programs on the hot hooks were attached, for
	// a run in an armed mode (--armed-mode); nil in the default mode,
	// where they are all the time (docs/report-schema.md "coverage").
	Coverage *trouble.Coverage

	// The event streams, one per event kind (see Sources).
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
	// IOUsage is each process's I/O per device (probe submit).
	IOUsage []event.IOUsage
	// The application's view (probe syscall): the processes, their slow
	// storage calls, and the in-kernel sums of all of them.
	Processes     []event.Process
	Syscalls      []event.Syscall
	SyscallStats  []event.SyscallStats
	BlockedStacks []event.BlockedStack
	// UnfinishedCalls are the storage calls still in the kernel when the
	// sums were last read (probe syscall).
	UnfinishedCalls []event.UnfinishedCall
	MemStalls       []event.MemStall
	// Failing devices (probe devfault): failed requests and timeouts,
	// and the requeues summed per device.
	DeviceFaults []event.DeviceFault
	Requeues     []event.Requeues
	// Cgroup I/O limits and iocost (probe iolimits): the limits and the
	// limited cgroups' I/O counters, from cgroupfs.
	IOLimits      []event.IOLimit
	CgroupIO      []event.CgroupIO
	CgroupMembers []event.CgroupMember
	IOCosts       []event.IOCost
	// What iocost did on each device and to each cgroup (probe iocost).
	IOCostVrates  []event.IOCostVrate
	IOCostCgroups []event.IOCostCgroup
	// ThrottleWaits are bios blk-throttle held, timed directly (probe
	// throttle).
	ThrottleWaits []event.ThrottleWait
	// Write-back throttles and journal commits (probe writeback).
	Mounts         []event.Mount
	WbtLats        []event.WbtLat
	WbtSteps       []event.WbtStep
	WbtWindows     []event.WbtWindow
	DirtyLimits    []event.DirtyLimits
	DirtyPauses    []event.DirtyPause
	JournalCommits []event.JournalCommit
	OrderedData    []event.OrderedData
	LogForces      []event.LogForce
	LogWrites      []event.LogWrite
}

// Histogram kinds: the per-device histograms a probe delivers.
const (
	HistSubmit     HistKind = "submit"      // block_bio_queue -> getrq/merge
	HistService    HistKind = "service"     // block_rq_issue -> block_rq_complete
	HistSubmitCall HistKind = "submit_call" // submit_bio_noacct entry -> return
)

// Sources lists every probe, in the order probes are started and listed,
// with the event streams and histograms it fills. A stream's Doc is its
// row in docs/trace-format.md (the record's fields; a test checks that it
// names every field of the event), generated from here.
var Sources = []Source{
	{Probe: event.ProbeDevFault, Streams: []Stream{
		Events("device_fault", func(t *Timeline) *[]event.DeviceFault { return &t.DeviceFaults },
			"`time`, `dev`, `kind` (`error`, `timeout`; `scsi_timeout`: a SCSI command timed out; `error_handler`: the error handler of the disk's SCSI host woken, on each of its disks), `op` (of a `scsi_timeout`, the SCSI command: `READ_10`), `sector`, `bytes`, `status` and `errno` (of an error), `in_flight` (since the request started), `timed_out` (an error after its deadline), `timeout` (queue/io_timeout): a failed or timed-out request, or SCSI's error handling"),
		Sums("requeues", func(t *Timeline) *[]event.Requeues { return &t.Requeues },
			"`time`, `dev`, `count`, `timed_out`: the requests a device's driver gave back to be issued again, counted in the kernel"),
	}},
	{Probe: event.ProbeExec, Streams: []Stream{
		Events("exec", func(t *Timeline) *[]event.Exec { return &t.Execs },
			"`time`, `forked`, `task`, `ppid`, `parent_comm`, `uid`, `filename`, `args`, `args_truncated`, `ret` (the error of a failed exec, omitted when 0: a diagnosis records successful execs only)"),
		Events("exit", func(t *Timeline) *[]event.Exit { return &t.Exits },
			"`time`, `pid`, `exit_code` (wait status)"),
	}},
	{Probe: event.ProbeFreeze, Streams: []Stream{
		Events("freeze", func(t *Timeline) *[]event.Freeze { return &t.Freezes },
			"`start`, `duration` (frozen until the unfreeze), `task` (freezer), `unfreezer`, `dev`, `func`, `mechanism`, `kernel_stack`, `user_stack`: a direct probe's queue freeze"),
	}},
	{Probe: event.ProbeIOCost, Streams: []Stream{
		Events("iocost_vrate", func(t *Timeline) *[]event.IOCostVrate { return &t.IOCostVrates },
			"`time`, `dev`, `pct` (the vrate set, % of the cost model), `old_pct` (the one in force), `busy` (busy level), `read_missed_ppm`, `write_missed_ppm`, `rq_wait_pct`, `lagging`, `shortages`: iocost's vrate at the end of a period it was busy or adjusted it in (`iocost_ioc_vrate_adj`)"),
		Events("iocost_cgroup", func(t *Timeline) *[]event.IOCostCgroup { return &t.IOCostCgroups },
			"`time`, `dev`, `cgroup`, `kind` (`activate`, `idle`, `shortage`, `forgive`), `vrate_pct`, `weight` (io.weight), `share_pct` (hweight in use, %), `debt` (ns of device time at 100%), `debt_after`, `delay` (ns), `delay_after`, `usage_pct`: iocost activating a cgroup on a device, idling it, finding it short of budget, or forgiving its debt (`iocost_iocg_activate`, `_idle`, `iocost_inuse_shortage`, `iocost_iocg_forgive_debt`)"),
	}},
	{Probe: event.ProbeIOLimits, Streams: []Stream{
		Describing("io_limit", func(t *Timeline) *[]event.IOLimit { return &t.IOLimits },
			func(e event.IOLimit) (string, uint32) {
				return fmt.Sprintf("%s\x00%t\x00%s\x00%s", e.Cgroup, e.V1, e.Dev.ID(), e.Limit), 0
			},
			"`time`, `cgroup` (path in its hierarchy), `v1` (the cgroup v1 blkio hierarchy), `dev`, `limit` (`rbps`/`wbps`/`riops`/`wiops`), `value` (bytes or I/Os a second): a blk-throttle limit (`io.max`, `blkio.throttle.*`) read at the start"),
		Events("cgroup_io", func(t *Timeline) *[]event.CgroupIO { return &t.CgroupIO },
			"`time`, `cgroup`, `v1`, `dev`, `reads`, `writes`, `read_bytes`, `write_bytes`: a limited cgroup's I/O counters on a device (`io.stat`, `blkio.throttle.io_serviced`/`io_service_bytes`), read at the start, every 500 ms when they changed (and then the reading before the change too, at its time, when it was not delivered), and at the end; a device of a v2 cgroup's `io.max` that its `io.stat` does not list yet (no I/O got through to it) reads as zeros"),
		Describing("cgroup_member", func(t *Timeline) *[]event.CgroupMember { return &t.CgroupMembers },
			func(e event.CgroupMember) (string, uint32) {
				return fmt.Sprintf("%s\x00%t\x00%d", e.Cgroup, e.V1, e.Pid), e.Pid
			},
			"`time`, `cgroup` (a limited cgroup), `v1`, `pid`, `comm`: a process seen in it or below it (`cgroup.procs`, read every 500 ms), when first seen"),
		Describing("io_cost", func(t *Timeline) *[]event.IOCost { return &t.IOCosts },
			func(e event.IOCost) (string, uint32) { return e.Dev.ID(), 0 },
			"`time`, `dev`, `qos`, `model`: the iocost configuration of a device where it is enabled (`io.cost.qos`, `io.cost.model`)"),
	}},
	{Probe: event.ProbeOffCPU, Streams: []Stream{
		Events("offcpu", func(t *Timeline) *[]event.OffCPU { return &t.OffCPU },
			"`start`, `duration`, `task`, `waker`, `kernel_stack`, `user_stack` (frames `{addr, symbol, offset, module}`, innermost first)"),
	}},
	{Probe: event.ProbeQueueEnter, Streams: []Stream{
		Events("queue_enter", func(t *Timeline) *[]event.QueueEnter { return &t.QueueEnters },
			"`start`, `duration`, `task`, `dev`, `func` (`__bio_queue_enter`/`blk_queue_enter`), `mechanism` (`fentry`/`kprobe`), `ret` (errno, omitted when 0): a direct probe's queue-enter wait"),
	}},
	{Probe: event.ProbeService, Hists: []Hist{
		{HistService, func(d *DeviceHistograms) *hist.Histogram { return &d.Service }},
	}},
	{Probe: event.ProbeSubmit, Streams: []Stream{
		Events("slow_submit", func(t *Timeline) *[]event.SlowSubmit { return &t.SlowSubmits },
			"`start`, `latency`, `task` (`{pid, tgid, comm}`), `dev`, `op` (rwbs), `end` (`getrq`/`backmerge`/`frontmerge`), `sector`, `bytes`"),
		Sums("io_usage", func(t *Timeline) *[]event.IOUsage { return &t.IOUsage },
			"`time` (when read: at the end of the run, and at each checkpoint), `task` (the process: `pid` = `tgid`), `kthread`, `cgroup` (path of the I/O's blkcg in the io/blkio hierarchy, `/` for the root, `\"\"` unknown), `cgroup_id`, `dev`, `op` (`read`/`write`/`flush`/`discard`/`other`), `sync`, `ios` (bios completed), `requests` (of which got a request of their own), `bytes`, `in_flight` (ns, block_bio_queue to completion, summed): one process's I/O on one device, counted in the kernel"),
	}, Hists: []Hist{
		{HistSubmit, func(d *DeviceHistograms) *hist.Histogram { return &d.Submit }},
	}},
	{Probe: event.ProbeSubmitFn, Streams: []Stream{
		Events("submit_call", func(t *Timeline) *[]event.SubmitCall { return &t.SubmitCalls },
			"`start`, `latency`, `task`, `dev`, `func` (`submit_bio_noacct`/`generic_make_request`), `mechanism`: a slow call of the submission function"),
	}, Hists: []Hist{
		{HistSubmitCall, func(d *DeviceHistograms) *hist.Histogram { return &d.SubmitCall }},
	}},
	{Probe: event.ProbeSyscall, Streams: []Stream{
		Describing("process", func(t *Timeline) *[]event.Process { return &t.Processes },
			func(e event.Process) (string, uint32) { return strconv.FormatUint(uint64(e.Pid), 10), e.Pid },
			"`time` (its first storage call), `pid`, `comm`, `cgroup_id`, `cgroup` (v2 path), `blkio` (v1 blkio path); again, later, when its names changed (it exec'd, or moved to another cgroup): the last record of a pid names it"),
		Events("syscall", func(t *Timeline) *[]event.Syscall { return &t.Syscalls },
			"`start`, `duration`, `task`, `call` (`pwrite64`, `fsync`, ...), `dev` (`{name: \"all\"}` for sync), `sleep`, `runqueue` (ns inside the call), `ret`, `from_arming` (present when true: the call was in progress already when an armed mode armed the probe; `start` is the arming, `duration` and `sleep` are lower bounds): a storage system call above `--min-latency`"),
		Sums("syscall_stats", func(t *Timeline) *[]event.SyscallStats { return &t.SyscallStats },
			"`time`, `pid`, `comm`, `call`, `dev`, `latency` (histogram of every call, ns), `sleep`, `runqueue`, `from_arming` (present when not 0: how many of the calls were in progress already when an armed mode armed the probe, timed from the arming: lower bounds): one process's calls of one kind on one device, summed in the kernel"),
		Sums("blocked_stack", func(t *Timeline) *[]event.BlockedStack { return &t.BlockedStacks },
			"`time`, `pid`, `comm`, `call`, `dev`, `total` (ns asleep), `count` (sleeps), `kernel_stack`, `unwalked` (sleeps whose stacks were not walked, to bound the walks' cost): where one process's calls of one kind on one device slept, summed in the kernel"),
		Sums("unfinished_call", func(t *Timeline) *[]event.UnfinishedCall { return &t.UnfinishedCalls },
			"`time` (when read), `start`, `task`, `call`, `dev`, `in_call` (ns in the call so far), `sleep`, `runqueue` (ns before its latest sleep), `asleep` (ns in its latest sleep, up to `time`), `kernel_stack` (of that sleep), `unwalked`, `before` (in the call already when the probe started, found asleep in /proc, or when an armed mode armed it: `start` is the probe's start or the arming, a lower bound): a storage call still in the kernel when the sums were read, in it for at least `--min-latency`; its earlier sleeps are in `blocked_stack`"),
		Sums("mem_stall", func(t *Timeline) *[]event.MemStall { return &t.MemStalls },
			"`time`, `pid`, `comm`, `call`, `dev`, `kind` (`direct_reclaim`, `memcg_reclaim`, `compaction`), `total` (ns, on or off CPU), `count`, `max`: one process's calls of one kind on one device in a memory stall, summed in the kernel"),
	}},
	{Probe: event.ProbeSysfs, Streams: []Stream{
		Events("sysfs_write", func(t *Timeline) *[]event.SysfsWrite { return &t.SysfsWrites },
			"`time`, `task`, `path`, `device`, `attr`"),
	}},
	{Probe: event.ProbeThrottle, Streams: []Stream{
		Events("throttle_wait", func(t *Timeline) *[]event.ThrottleWait { return &t.ThrottleWaits },
			"`start`, `duration`, `task` (the submitter), `dev`, `func` (`__blk_throtl_bio`/`blk_throtl_bio`), `mechanism` (`fentry`/`kprobe`), `unfinished` (true: still held when the probe stopped, `duration` its wait up to then, a lower bound; absent otherwise): a bio blk-throttle held, parked to dispatched (or to the end of the run), above `--min-latency`"),
	}},
	{Probe: event.ProbeUevent, Streams: []Stream{
		Events("uevent", func(t *Timeline) *[]event.Uevent { return &t.Uevents },
			"`time`, `action`, `devpath`, `subsystem`, `devname`, `devtype`, `seqnum`"),
	}},
	{Probe: event.ProbeWriteback, Streams: []Stream{
		Describing("mount", func(t *Timeline) *[]event.Mount { return &t.Mounts },
			func(e event.Mount) (string, uint32) {
				return fmt.Sprintf("%s\x00%s\x00%s", e.Dev.ID(), e.FsDev, e.Point), 0
			},
			"`time`, `dev` (whole disk), `fs_dev` (the filesystem's device), `fstype`, `point`: a filesystem on a block device at the start"),
		Describing("wbt_lat", func(t *Timeline) *[]event.WbtLat { return &t.WbtLats },
			func(e event.WbtLat) (string, uint32) { return e.Dev.ID(), 0 },
			"`time`, `dev`, `lat` (ns; 0: wbt off), `from` (`sysfs`: the device's wbt latency target at the start; `wbt_lat`: the tracepoint, the latency of a synchronous I/O that exceeded wbt's window)"),
		Events("wbt_step", func(t *Timeline) *[]event.WbtStep { return &t.WbtSteps },
			"`time`, `dev`, `step`, `msg`, `window` (ns; traces of earlier versions hold its µs as ns, and one under 1 ms is read so), `bg`, `normal`, `max` (depth limits): wbt scaled a device's queue depth"),
		Events("wbt_window", func(t *Timeline) *[]event.WbtWindow { return &t.WbtWindows },
			"`time`, `dev`, the window's completion latencies (ns) and counts: `read_mean`, `read_min`, `read_max`, `reads`, `write_mean`, `write_min`, `write_max`, `writes`: a wbt monitoring window whose reads missed the target or that ended while wbt was scaled (`wbt_stat`)"),
		Describing("dirty_limits", func(t *Timeline) *[]event.DirtyLimits { return &t.DirtyLimits },
			func(event.DirtyLimits) (string, uint32) { return "", 0 },
			"`time`, `bytes`, `ratio`, `background_bytes`, `background_ratio`, `page_size`, `thresh` (the system's dirty threshold, pages), `dirtyable` (the memory it is a share of, pages): the vm.dirty_* sysctls at the start"),
		Events("dirty_pause", func(t *Timeline) *[]event.DirtyPause { return &t.DirtyPauses },
			"`time`, `task`, `dev` (written back to), `pause`, `period`, `paused`, `limit`, `setpoint`, `dirty`, `wb_setpoint`, `wb_dirty` (pages), `dirty_ratelimit`, `task_ratelimit` (KiB/s), `cgroup_ino`, `cgroup` (its cgroup v2 path), `memory_max`, `memory_high` (its memory limits, bytes): a writer paused in balance_dirty_pages"),
		Events("journal_commit", func(t *Timeline) *[]event.JournalCommit { return &t.JournalCommits },
			"`start`, `duration`, `dev`, `fs_dev`, `tid`, `sync`, `locking`, `flushing`, `logging` (phases), `handles`, `blocks`, `blocks_logged`: a jbd2 commit"),
		Events("ordered_data", func(t *Timeline) *[]event.OrderedData { return &t.OrderedData },
			"`time`, `dev`, `fs_dev`, `tid`, `ino`, `dirtier` (the process that dirtied the inode; zero when unseen): a commit writing an inode's ordered data"),
		Events("log_force", func(t *Timeline) *[]event.LogForce { return &t.LogForces },
			"`time`, `dev`, `fs_dev`, `task` (the thread that forced it), `lsn` (the checkpoint sequence forced; omitted: the whole log), `caller` (the function that forced it: `xfs_file_fsync`, `xfs_log_worker`, ...): a force of an xfs log"),
		Events("log_write", func(t *Timeline) *[]event.LogWrite { return &t.LogWrites },
			"`start`, `duration`, `dev`, `fs_dev`, `lsn`, `bytes`, `flush`, `fua`: a write of an xfs log buffer, submitted to completed (6.1+)"),
	}},
}

// Duration is the length of the observation window.
func (t *Timeline) Duration() time.Duration { return t.End.Sub(t.Start) }
