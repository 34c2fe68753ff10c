package probes

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/symbolize"
)

// syscallProbe times the storage system calls of every process (see
// bpf/syscall.bpf.c): per process x device x call a latency histogram and
// the time off CPU, split into sleeps by kernel stack and the wait in the
// run queue; every call above MinLatency is streamed. Calls on anything
// but a block device or a file of a filesystem on one are let go at entry.
//
// Mechanisms (the syscall hooks; the scheduler side is tp_btf on both),
// chosen by their measured cost (BenchmarkSyscallProbe; docs/syscall-probe.md):
//   - tp_btf: sys_enter/sys_exit, whose programs run on every system call
//     and let the others go on their number (some 50 ns each way). A
//     storage call costs about 100 ns less than on the tracepoints, and
//     attaching takes milliseconds.
//   - tracepoint: the syscalls:sys_enter_<call>/sys_exit_<call> events of
//     the storage calls only: the kernel's syscall event handler fills a
//     record for each before the program runs; other calls pay only its
//     bitmap test. Attaching its 38 events took 2.7 s here.
type syscallProbe struct{}

func init() { register(syscallProbe{}) }

// syscallNames names the calls the program traces, by x86-64 number.
var syscallNames = map[uint32]string{
	uint32(syscallStorageNrNR_READ):            "read",
	uint32(syscallStorageNrNR_WRITE):           "write",
	uint32(syscallStorageNrNR_PREAD64):         "pread64",
	uint32(syscallStorageNrNR_PWRITE64):        "pwrite64",
	uint32(syscallStorageNrNR_READV):           "readv",
	uint32(syscallStorageNrNR_WRITEV):          "writev",
	uint32(syscallStorageNrNR_MSYNC):           "msync",
	uint32(syscallStorageNrNR_FSYNC):           "fsync",
	uint32(syscallStorageNrNR_FDATASYNC):       "fdatasync",
	uint32(syscallStorageNrNR_SYNC):            "sync",
	uint32(syscallStorageNrNR_IO_GETEVENTS):    "io_getevents",
	uint32(syscallStorageNrNR_IO_SUBMIT):       "io_submit",
	uint32(syscallStorageNrNR_SYNC_FILE_RANGE): "sync_file_range",
	uint32(syscallStorageNrNR_PREADV):          "preadv",
	uint32(syscallStorageNrNR_PWRITEV):         "pwritev",
	uint32(syscallStorageNrNR_SYNCFS):          "syncfs",
	uint32(syscallStorageNrNR_PREADV2):         "preadv2",
	uint32(syscallStorageNrNR_PWRITEV2):        "pwritev2",
	uint32(syscallStorageNrNR_IO_PGETEVENTS):   "io_pgetevents",
	uint32(syscallStorageNrNR_IO_URING_ENTER):  "io_uring_enter",
}

// syscallName names call nr ("" for none the program traces).
func syscallName(nr uint32) string { return syscallNames[nr] }

// syscallSelf is the process whose calls the program leaves out: whyslow
// itself (its trace file, its reports). Tests that make storage calls of
// their own set it to 0.
var syscallSelf = uint32(os.Getpid())

// syscallWalkGap is how far apart a CPU's stack walks of uninterruptible
// sleeps are at least (walk_gap_ns). A sleep that comes sooner after the
// last walk on its CPU is not walked (event.BlockedStack Unwalked) and its
// time is shared out like the walked sleeps of its process x device x call,
// so the gap samples stacks, it loses no time: only under many short
// sleeps, as a long sleep leaves the gap behind it. A walk costs about
// 1.3-2 µs (BenchmarkSyscallProbe; BENCHMARKS.md), so 1 ms bounds them to
// 1000 a second per CPU, 0.2% of a CPU at worst (50 µs allowed 20 000,
// 2.6-4%). fio libaio 32x2 on a loop device sleeps in D for a tag ~13 000
// times a second and at 50 µs nearly every sleep was walked; at 1 ms the
// syscall probe's sc_switch cost ~90 ns per I/O against ~130 at 50 µs
// (BENCHMARKS.md, issue 16, wt-f29), and the scenario tests keep their
// findings.
const syscallWalkGap = 1 * time.Millisecond

// syscallWalkGapS is the gap before walking an interruptible sleep (S
// state, walk_gap_s_ns): the waits for aio and io_uring completions, which
// come at the I/O rate under a fast asynchronous load and whose stacks
// repeat. Under fio's 140k IOPS on this project's VM these walks cost some
// 230 ns per I/O at 50 µs (BENCHMARKS.md); now the same as syscallWalkGap.
const syscallWalkGapS = 1 * time.Millisecond

// syscallHistBudget bounds the memory of the per-CPU call histograms
// (call_hists: ~2.7 KB per process x device x call on every CPU, allocated
// as they appear): hosts with many CPUs get room for fewer, and the others
// go to the shared call_hists_spill, slower but complete.
const syscallHistBudget = 16 << 20

// syscallSlotBudget is the kernel memory the histogram slots (hist_arr, a
// per-CPU array: allocated whole at load) may take: room for at most
// MAX_HIST_SLOTS process x device x call histograms on the exit's fast
// path, fewer on hosts with many CPUs (at least 8); the others go to
// call_hists.
const syscallSlotBudget = 4 << 20

// syscallHistSlotsFixed, when not 0, is how many histogram slots there
// are (tests: fewer than the processes that make calls).
var syscallHistSlotsFixed uint32

// sizeHistSlots fits the histogram slots' maps to the CPUs of this machine
// and syscallSlotBudget, and returns how many slots there are.
func sizeHistSlots(spec *ebpf.CollectionSpec) uint32 {
	arr := spec.Maps["hist_arr"]
	cpus, err := ebpf.PossibleCPU()
	if err != nil || cpus < 1 {
		cpus = runtime.NumCPU()
	}
	n := perCPUEntries(arr.MaxEntries, arr.ValueSize, cpus, syscallSlotBudget)
	if syscallHistSlotsFixed > 0 {
		n = syscallHistSlotsFixed
	}
	for _, name := range []string{"hist_arr", "hist_owner", "hist_slot_of", "hist_free"} {
		spec.Maps[name].MaxEntries = n
	}
	return n
}

// fillHistFree puts every histogram slot in the queue of free ones.
func fillHistFree(m *ebpf.Map, slots uint32) error {
	for i := range slots {
		if err := m.Update(nil, i, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("filling the free histogram slots: %w", err)
		}
	}
	return nil
}

// syscallSeedStack0 is the stack id of the first of seed_stacks'
// slots (SC_SEED_STACK0: slot i is syscallSeedStack0 - i).
var syscallSeedStack0 = func() int32 { v := syscallScSeedLayoutSC_SEED_STACK0; return int32(v) }()

// syscallNotWalked is the stack id of the sleeps not walked
// (SC_NOT_WALKED, which bpf2go types unsigned).
var syscallNotWalked = func() int32 { v := syscallScStackidSC_NOT_WALKED; return int32(v) }()

// How each counter of the `sc_losses` array is reported, at its value of
// enum sc_stack_loss.
var syscallLossWhat = [syscallScStackLossSC_LOSS_KINDS]string{
	syscallScStackLossSC_LOSS_STACK:    "kernel stack of a sleep lost (its time counts as stage other)",
	syscallScStackLossSC_LOSS_BLOCKED:  "blocked-time map full: sleep time lost",
	syscallScStackLossSC_LOSS_HIST:     "call histogram map full: call latencies lost",
	syscallScStackLossSC_LOSS_MEM:      "memory-stall map full: time in reclaim or compaction lost",
	syscallScStackLossSC_LOSS_INFLIGHT: "map of calls in progress full: a call still in the kernel at a checkpoint or the end is not seen",
	syscallScStackLossSC_LOSS_SEED:     "storage calls seeded as the probe armed (armed mode) whose exit was not seen (they ended before the seed was written): not timed",
}

// syscallMemStalls are the memory stalls the program times inside storage
// calls: the kind each is reported as (event.MemStall), its programs and
// their tracepoints, at its value of enum sc_mem_kind.
var syscallMemStalls = [syscallScMemKindSC_MEM_KINDS]struct {
	kind, begin, end, beginTP, endTP string
}{
	syscallScMemKindSC_MEM_DIRECT: {event.MemDirectReclaim, "sc_direct_begin", "sc_direct_end",
		"mm_vmscan_direct_reclaim_begin", "mm_vmscan_direct_reclaim_end"},
	syscallScMemKindSC_MEM_MEMCG: {event.MemCgroupReclaim, "sc_memcg_begin", "sc_memcg_end",
		"mm_vmscan_memcg_reclaim_begin", "mm_vmscan_memcg_reclaim_end"},
	syscallScMemKindSC_MEM_COMPACT: {event.MemCompaction, "sc_compact_begin", "sc_compact_end",
		"mm_compaction_begin", "mm_compaction_end"},
}

// Decl implements Probe.
func (syscallProbe) Decl() Decl {
	return Decl{
		Name:       event.ProbeSyscall,
		Mechanisms: []Rung{{Mech: event.MechTPBTF}, {Mech: event.MechTracepoint}},
		Forceable:  true,
		Describe:   "latency of storage system calls per process, device and call, and where their time off CPU went (kernel stacks, run queue)",
		Attach:     "tp_btf `sys_enter`/`sys_exit` (else the tracepoints `syscalls:sys_enter_<call>`/`sys_exit_<call>` of the storage calls); tp_btf `sched_switch` + `sched_waking`, `io_uring_file_get`; tp_btf `mm_vmscan_direct_reclaim_*`, `mm_vmscan_memcg_reclaim_*`, `mm_compaction_begin`/`_end`",
		Records:    "per process x device x call: a latency histogram, the time asleep per kernel stack and the time in the run queue, the time in direct reclaim and compaction; every call above `--min-latency`; each process's cgroups. Calls on pipes, sockets, character devices, tmpfs, proc or sysfs are let go at entry",
	}
}

// seats implements chainMember: its programs lead the chains on
// sched_waking, sched_switch and (tp_btf rung) sys_exit and sys_enter.
func (syscallProbe) seats() []*seat {
	return []*seat{chainSchedWaking.coming.expect(0), chainSchedSwitch.coming.expect(0),
		chainSysExit.coming.expect(rankSyscall), chainSysEnter.coming.expect(rankSyscall)}
}

func (p syscallProbe) Start(cfg Config, sink Sink) (Running, event.ProbeStatus) {
	return startLadder(p, cfg, sink)
}

func (p syscallProbe) rungs(cfg Config, kernel *btf.Spec, sink Sink) []ladderRung {
	var out []ladderRung
	for _, m := range p.Decl().Mechs() {
		out = append(out, ladderRung{mech: m, start: func([]string) (Running, error) {
			return startSyscall(cfg, kernel, sink, m)
		}})
	}
	return out
}

type syscallRunning struct {
	cfg   Config
	sink  Sink
	coll  *ebpf.Collection
	links []link.Link
	// hot are the links of its programs on sys_enter, sys_exit,
	// sched_switch and sched_waking (the syscall tracepoints on the
	// tracepoint rung): what armed mode detaches (arm.go). mech,
	// enterProg, exitProg, findVMA and ringErr are how they were chosen.
	hot                 []link.Link
	mech                event.Mechanism
	enterProg, exitProg string
	findVMA             bool
	ringErr             error
	// armst is its armed-mode state (arm.go, syscall_armed.go); armed its
	// counts, under sums.
	armst armState
	armed syscallArmed
	// unleads end the chains its programs lead on the hooks it shares
	// with the off-CPU probe (hookchain.go), before they are detached.
	unleads []func() error
	ring
	note   string // the status Reason: what it runs on and what it misses
	procfs string
	// began is when the probe started: a call it found in the kernel at a
	// checkpoint without having seen its entry has been in it since then
	// at least.
	began event.Mono
	// preexisting are the threads (to their process) in a storage call at
	// the first read of the unfinished calls (a checkpoint, or Stop before
	// the programs are detached), a call the probe may not have seen
	// begin (hungSince; under sums); nil before that read.
	preexisting map[uint32]int
	// stopAt is when Stop began, before the programs were detached, and
	// hungAtStop the calls hungSince found then (under sums): the last
	// read of the unfinished calls is as of that time.
	stopAt     event.Mono
	hungAtStop []event.UnfinishedCall
	ksyms      *symbolize.Kernel
	// ksymsReady is closed once kallsyms is read (or failed).
	ksymsReady chan struct{}

	// sums serializes the reads of the maps' sums (Checkpoint, Stop);
	// kstacks, under it, caches their stacks' symbols.
	// running, with task storage, is the iterator (sc_running) that
	// lists the calls in progress from the threads' states; nil: they
	// are in the `inflight` map.
	running *link.Iter
	// seeder, where the kernel lets it (task storage, tp_btf, 5.15+),
	// is the iterator (sc_seed) that seeds the calls in progress as the
	// probe arms (syscall_armed.go); nil: /proc counts them.
	seeder  *link.Iter
	sums    sync.Mutex
	kstacks *stackCache
	// read are the entries the last read of the sums saw, as it saw them
	// (under sums): what Prune may remove.
	read syscallRead
	// unread are the processes named, gone and in none of the sums at the
	// last Prune (under sums): at the next, their names go.
	unread map[uint32]bool
	// drained are the final sums of exited processes, moved out of the
	// kernel's maps by drain (under sums): a key's sum is its entry in
	// the map plus its drained sum, until Prune removes both.
	drained syscallDrained
	// drainedGone are the processes named (procs) found gone by a drain
	// (under sums): a later drain looks for others.
	drainedGone map[uint32]bool
	// drainStop ends the drain loop (drainDone then).
	drainStop, drainDone chan struct{}

	mu    sync.Mutex
	procs map[uint32]*event.Process // by pid
	devs  map[uint32]event.Device   // by kernel dev_t (a partition's too)
	comms map[uint32]string         // process names, as last read
	seen  map[uint32]seenAs         // the last name and cgroup a record showed, by pid

	stopOnce sync.Once
	stopErr  error
}

// syscallRead are the entries of the sums' maps one read saw, by key (a
// histogram by what any call or sleep added to it changes).
type syscallRead struct {
	hists   map[syscallScHistKey]histMark
	blocked map[syscallScBlockedKey]syscallScBlocked
	mem     map[syscallScMemKey]syscallScMemStall
}

// syscallDrained are the sums drain moved out of the kernel's maps, by
// key.
type syscallDrained struct {
	hists   map[syscallScHistKey]*drainedHist
	blocked map[syscallScBlockedKey]*syscallScBlocked
	mem     map[syscallScMemKey]*syscallScMemStall
}

// drainedHist is a call histogram drained, its non-empty slots only (an
// exited process's calls fill a few of the 328: some 100 bytes, where the
// map's entry takes 2.7 KB).
type drainedHist struct {
	sumNs, maxNs, sleepNs, runqNs, seeded uint64
	slots                                 []uint16
	counts                                []uint64
}

// absorbHist adds a map entry to a drained histogram.
func absorbHist(d *drainedHist, v *syscallScHist) {
	var full syscallScHist
	addDrainedHist(&full, d)
	addHist(&full, v)
	*d = drainedHist{sumNs: full.SumNs, maxNs: full.MaxNs, sleepNs: full.SleepNs, runqNs: full.RunqNs, seeded: full.Seeded}
	n := 0
	for _, c := range full.Slots {
		if c > 0 {
			n++
		}
	}
	if n > 0 {
		d.slots, d.counts = make([]uint16, 0, n), make([]uint64, 0, n)
	}
	for i, n := range full.Slots {
		if n > 0 {
			d.slots = append(d.slots, uint16(i))
			d.counts = append(d.counts, n)
		}
	}
}

// addDrainedHist adds a drained histogram to a map entry.
func addDrainedHist(v *syscallScHist, d *drainedHist) {
	v.SumNs += d.sumNs
	v.MaxNs = max(v.MaxNs, d.maxNs)
	v.SleepNs += d.sleepNs
	v.RunqNs += d.runqNs
	v.Seeded += d.seeded
	for i, s := range d.slots {
		v.Slots[s] += d.counts[i]
	}
}

// syscallDrainEvery is how often the sums of exited processes are moved
// out of the kernel's maps (drain): the maps hold the processes of one
// such interval that exited, besides the running ones.
var syscallDrainEvery = time.Second

// How many keys the drained sums hold at most, per map: beyond, the sums
// of exited processes stay in the kernel's maps (and when those fill, the
// new ones are counted lost). Some 1 MB, 2 MB and 0.5 MB. Prune empties
// them at each checkpoint serve keeps; a one-shot run keeps them to its
// end. A checkpoint delivers each key as an event, whose histogram takes
// 2.7 KB: the 10240 histograms of a checkpoint with both full take 27 MB.
const (
	syscallDrainedHists   = 8192
	syscallDrainedBlocked = 4 * 16384
	syscallDrainedMem     = 4 * 4096
)

func addBlocked(a, b *syscallScBlocked) {
	a.Ns += b.Ns
	a.Count += b.Count
}

func addMemStall(a, b *syscallScMemStall) {
	a.Ns += b.Ns
	a.Count += b.Count
	a.MaxNs = max(a.MaxNs, b.MaxNs)
}

// readSums calls fn with each entry of kernel map m plus its key's drained
// sum (addTo), then with each drained sum whose key m does not hold.
func readSums[K comparable, V, D any](m sumMap[K, V], drained map[K]*D, addTo func(v *V, d *D), fn func(k K, v *V)) error {
	var seen map[K]bool
	if len(drained) > 0 {
		seen = make(map[K]bool, len(drained))
	}
	err := m.iterate(func(k K, v *V) {
		if d := drained[k]; d != nil {
			addTo(v, d)
			seen[k] = true
		}
		fn(k, v)
	})
	if err != nil {
		return err
	}
	var c, zero V // one buffer: a V may be a histogram of 2.7 KB
	for k, d := range drained {
		if !seen[k] {
			c = zero
			addTo(&c, d)
			fn(k, &c)
		}
	}
	return nil
}

// drainSums moves the entries of kernel map m whose process is gone into
// drained (absorb; at most room keys), and returns how many it moved.
// Each entry is read again right before it is deleted: an entry of a
// process gone changes no more (only a new process given the same pid in
// between could add to it).
func drainSums[K comparable, V, D any](m sumMap[K, V], drained map[K]*D, room int, tgidOf func(*K) uint32, gone func(uint32) bool, absorb func(d *D, v *V)) (int, error) {
	var keys []K
	err := m.iterate(func(k K, _ *V) {
		if gone(tgidOf(&k)) {
			keys = append(keys, k)
		}
	})
	if err != nil {
		return 0, err
	}
	moved := 0
	var errs []error
	var v V
	for _, k := range keys {
		d := drained[k]
		if d == nil && len(drained) >= room {
			break
		}
		if err := m.lookup(k, &v); err != nil {
			if !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		if err := m.remove(k); err != nil {
			if !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		if d == nil {
			d = new(D)
			drained[k] = d
		}
		absorb(d, &v)
		moved++
	}
	return moved, errors.Join(errs...)
}

// drainLoop drains every syscallDrainEvery until drainStop closes.
func (r *syscallRunning) drainLoop() {
	defer close(r.drainDone)
	t := time.NewTicker(syscallDrainEvery)
	defer t.Stop()
	for {
		select {
		case <-r.drainStop:
			return
		case <-t.C:
			_ = r.drain()
		}
	}
}

// drain moves the final sums of the processes that have exited out of
// the kernel's maps (into r.drained), so that the maps hold the running
// processes' and few more, however many processes come and go between two
// checkpoints; a checkpoint reads each key as its entry plus its drained
// sum, so the sums stay whole. It looks at the maps only when a process
// named by a record has exited since the last drain.
func (r *syscallRunning) drain() error {
	r.sums.Lock()
	defer r.sums.Unlock()
	r.mu.Lock()
	var named []uint32
	for tgid := range r.procs {
		if !r.drainedGone[tgid] {
			named = append(named, tgid)
		}
	}
	r.mu.Unlock()
	memo := map[uint32]bool{}
	gone := func(tgid uint32) bool {
		g, ok := memo[tgid]
		if !ok {
			g = procGone(r.procfs, tgid)
			memo[tgid] = g
		}
		return g
	}
	exited := false
	for _, tgid := range named {
		if gone(tgid) {
			exited = true
			r.drainedGone[tgid] = true
		}
	}
	if !exited {
		return nil
	}
	_, e1 := drainSums[syscallScHistKey, syscallScHist](histSums{r}, r.drained.hists, syscallDrainedHists,
		func(k *syscallScHistKey) uint32 { return k.Tgid }, gone, absorbHist)
	_, e2 := drainSums(sumMap[syscallScBlockedKey, syscallScBlocked](plainSums[syscallScBlockedKey, syscallScBlocked]{r.coll.Maps["blocked"]}), r.drained.blocked, syscallDrainedBlocked,
		func(k *syscallScBlockedKey) uint32 { return k.Tgid }, gone, addBlocked)
	_, e3 := drainSums(sumMap[syscallScMemKey, syscallScMemStall](plainSums[syscallScMemKey, syscallScMemStall]{r.coll.Maps["mem_stalls"]}), r.drained.mem, syscallDrainedMem,
		func(k *syscallScMemKey) uint32 { return k.Tgid }, gone, addMemStall)
	if err := errors.Join(e1, e2, e3); err != nil {
		return fmt.Errorf("draining the sums of exited processes: %w", err)
	}
	return nil
}

// histMark is what any call or sleep counted in a call histogram changes.
type histMark struct{ calls, sumNs, sleepNs, runqNs uint64 }

func markOf(v *syscallScHist) histMark {
	m := histMark{sumNs: v.SumNs, sleepNs: v.SleepNs, runqNs: v.RunqNs}
	for _, n := range v.Slots {
		m.calls += n
	}
	return m
}

// syscallCalls are the calls the tracepoint rung attaches to, by name.
func syscallCalls() []string {
	var out []string
	for _, n := range syscallNames {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func startSyscall(cfg Config, kernel *btf.Spec, sink Sink, mech event.Mechanism) (_ *syscallRunning, err error) {
	n, err := tpParamCount(kernel, "sched_switch")
	if err != nil {
		return nil, loadErr(err)
	}
	// The helpers the syscall programs may call: cilium/ebpf cannot probe
	// tp_btf programs, whose helpers are those of raw_tp programs and more.
	progType := ebpf.RawTracepoint
	if mech == event.MechTracepoint {
		progType = ebpf.TracePoint
	}
	helper := func(fn asm.BuiltinFunc) bool { return features.HaveProgramHelper(progType, fn) == nil }
	// Task storage (5.11+) where the syscall programs can reach it too
	// (tp_btf: always; tracepoint programs: 6.x), else the LRU hash by tid.
	taskStorage := haveTaskStorage(kernel) &&
		(mech == event.MechTPBTF || helper(asm.FnTaskStorageGet) && helper(asm.FnGetCurrentTaskBtf))
	btfTask := helper(asm.FnGetCurrentTaskBtf)
	// Armed mode's seeding of the calls in progress as it arms (sc_seed,
	// syscall_armed.go): task storage, the tp_btf rung (whose exit
	// program has the arguments that check a seeded call is still the
	// one), the registers of other tasks (bpf_task_pt_regs, 5.15+).
	seed := taskStorage && mech == event.MechTPBTF && btfTask && haveHelper(kernel, "task_pt_regs")
	findVMA := helper(asm.FnFindVma) && btfTask
	consts := spanConsts(cfg)
	consts["use_task_storage"] = uint32(boolInt(taskStorage))
	consts["self_tgid"] = syscallSelf
	consts["switch_has_state"] = uint8(boolInt(n >= 4))
	consts["use_btf_task"] = uint8(boolInt(btfTask))
	consts["use_task_regs"] = uint8(boolInt(seed))
	consts["walk_gap_ns"] = uint64(syscallWalkGap)
	consts["walk_gap_s_ns"] = uint64(syscallWalkGapS)
	// The file's fields as plain loads (bpf_rdonly_cast, 6.2+) on the
	// tp_btf rung; else one bpf_probe_read_kernel each.
	consts["use_cast"] = uint8(boolInt(mech == event.MechTPBTF && haveKfunc(kernel, "bpf_rdonly_cast")))
	// io_uring_enter's device comes from the files of its ring's requests
	// (tracepoint io_uring_file_get, whose fd is its last argument).
	ringArgs, ringErr := tpParamCount(kernel, "io_uring_file_get")
	if ringErr == nil && (ringArgs == 2 || ringArgs == 4) {
		consts["file_get_fd_arg"] = uint32(ringArgs - 1)
	} else if ringErr == nil {
		ringErr = fmt.Errorf("io_uring_file_get has %d arguments", ringArgs)
	}
	spec, err := loadSpec(loadSyscall, consts)
	if err != nil {
		return nil, loadErr(err)
	}
	sizePerCPUHash(spec, "call_hists", syscallHistBudget)
	slots := sizeHistSlots(spec)
	if !taskStorage {
		ms := spec.Maps["state_task"]
		ms.Type, ms.Flags, ms.MaxEntries = ebpf.Hash, 0, 1
	} else {
		// The calls in progress are read from the threads' states
		// (sc_running), not from `inflight`.
		spec.Maps["inflight"].MaxEntries = 1
	}
	enter, exit := "sc_btf_enter", "sc_btf_exit"
	if mech == event.MechTracepoint {
		enter, exit = "sc_tp_enter", "sc_tp_exit"
	}
	if findVMA {
		enter += "_vma"
	}
	keep := []string{enter, exit, "sc_switch", "sc_waking"}
	if taskStorage {
		keep = append(keep, "sc_running")
	}
	if seed {
		keep = append(keep, "sc_seed")
	}
	// The memory stalls whose tracepoints the kernel has (memcg reclaim
	// needs CONFIG_MEMCG, compaction CONFIG_COMPACTION).
	var memKinds, memMissing []int
	for i, m := range syscallMemStalls {
		_, errB := tpParamCount(kernel, m.beginTP)
		_, errE := tpParamCount(kernel, m.endTP)
		if errB != nil || errE != nil {
			memMissing = append(memMissing, i)
			continue
		}
		memKinds = append(memKinds, i)
		keep = append(keep, m.begin, m.end)
	}
	if ringErr == nil {
		keep = append(keep, "sc_ring_file")
	}
	if mech == event.MechTracepoint {
		keep = append(keep, "sc_tp_enter0", "sc_tp_enter1")
	}
	for name := range spec.Programs {
		if !slices.Contains(keep, name) {
			delete(spec.Programs, name)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, *collectionOptions(kernel))
	var seedErr error
	if err != nil && seed {
		// A kernel that refuses the seeding program keeps the rest: the
		// calls in progress at an arming are counted from /proc then.
		seedErr = err
		seed = false
		delete(spec.Programs, "sc_seed")
		coll, err = ebpf.NewCollectionWithOptions(spec, *collectionOptions(kernel))
	}
	if err != nil {
		return nil, loadErr(fmt.Errorf("loading objects: %w", err))
	}
	if err := fillHistFree(coll.Maps["hist_free"], slots); err != nil {
		coll.Close()
		return nil, loadErr(err)
	}
	procfs := cmpOr(cfg.ProcFS, "/proc")
	began, err := event.Now()
	if err != nil {
		return nil, err
	}
	r := &syscallRunning{cfg: cfg, sink: sink, coll: coll, procfs: procfs, began: began,
		procs: map[uint32]*event.Process{}, devs: map[uint32]event.Device{}, comms: map[uint32]string{}, seen: map[uint32]seenAs{},
		drained: syscallDrained{hists: map[syscallScHistKey]*drainedHist{}, blocked: map[syscallScBlockedKey]*syscallScBlocked{},
			mem: map[syscallScMemKey]*syscallScMemStall{}},
		drainedGone: map[uint32]bool{}, drainStop: make(chan struct{}), drainDone: make(chan struct{})}
	defer func() {
		if err != nil {
			closeAll(r.links)
			closeAll(r.hot)
			if r.running != nil {
				r.running.Close()
			}
			if r.seeder != nil {
				r.seeder.Close()
			}
			if r.rd != nil {
				r.rd.Close()
			}
			coll.Close()
		}
	}()
	if err = r.openRing(coll.Maps["events"]); err != nil {
		return nil, loadErr(fmt.Errorf("opening ring buffer: %w", err))
	}
	r.mech, r.enterProg, r.exitProg, r.findVMA, r.ringErr = mech, enter, exit, findVMA, ringErr
	if taskStorage {
		if r.running, err = link.AttachIter(link.IterOptions{Program: coll.Programs["sc_running"]}); err != nil {
			return nil, attachErr(fmt.Errorf("iterator of the calls in progress: %w", err))
		}
	}
	if seed {
		if r.seeder, err = link.AttachIter(link.IterOptions{Program: coll.Programs["sc_seed"]}); err != nil {
			return nil, attachErr(fmt.Errorf("iterator seeding the calls in progress as the probe arms: %w", err))
		}
	}
	var missing []string
	// Memory stalls: the ends first. A kernel that will not attach them
	// loses that split only.
	for _, i := range memKinds {
		m := syscallMemStalls[i]
		ls, err := attachTPBTF(coll.Programs[m.end], coll.Programs[m.begin])
		if err != nil {
			missing = append(missing, m.kind+" ("+err.Error()+")")
			continue
		}
		r.links = append(r.links, ls...)
	}
	for _, i := range memMissing {
		m := syscallMemStalls[i]
		missing = append(missing, m.kind+" (no tracepoint "+m.beginTP+")")
	}
	if ringErr == nil {
		ls, err := attachTPBTF(coll.Programs["sc_ring_file"])
		if err != nil {
			return nil, attachErr(err)
		}
		r.links = append(r.links, ls...)
	} else {
		missing = append(missing, "io_uring_enter (no tracepoint io_uring_file_get: "+ringErr.Error()+")")
	}
	// The programs on the four hot hooks (sys_enter, sys_exit,
	// sched_switch, sched_waking), which armed mode detaches (arm.go).
	hotMissing, err := r.attachHot()
	if err != nil {
		return nil, err
	}
	missing = append(missing, hotMissing...)
	if err = r.leadChains(); err != nil {
		closeAll(r.hot)
		r.hot = nil
		return nil, err
	}
	r.note = "sys_enter/sys_exit of every system call, the others let go on their number: a storage call costs ~100 ns less than on the syscall tracepoints"
	if mech == event.MechTracepoint {
		r.note = "the syscall tracepoints of the storage calls only"
	}
	if taskStorage {
		r.note += "; per-thread state in task storage"
	} else {
		r.note += "; per-thread state in a hash by thread (no task storage)"
	}
	if !findVMA {
		missing = append(missing, "msync (needs bpf_find_vma, 5.17+)")
	}
	if seedErr != nil {
		r.note += "; armed mode counts the calls in progress at an arming from /proc (the seeding program was refused: " + firstLine(seedErr.Error()) + ")"
	}
	if len(missing) > 0 {
		r.note += "; not traced: " + strings.Join(missing, ", ")
	}
	if err := symbolize.KernelAddressesVisible(procfs); err != nil {
		r.note += "; kernel stacks not symbolized: " + err.Error()
	}
	// kallsyms, for the stacks only, once every probe has started.
	r.ksymsReady = make(chan struct{})
	cfg.afterStart(func() {
		defer close(r.ksymsReady)
		r.ksyms, _ = symbolize.LoadKernel(procfs)
	})
	r.readAll(r.sink, event.ProbeSyscall, r.handle)
	go r.drainLoop()
	return r, nil
}

// attachHot attaches the programs on sys_enter, sys_exit, sched_switch
// and sched_waking (r.hot): the scheduler's side first, then the exits,
// then the entries, so that no call starts that cannot end. It returns
// the calls whose syscall tracepoints the kernel lacks (tracepoint rung).
func (r *syscallRunning) attachHot() (missing []string, err error) {
	coll := r.coll
	hot, err := attachTPBTF(coll.Programs["sc_waking"], coll.Programs["sc_switch"])
	if err != nil {
		return nil, attachErr(err)
	}
	defer func() {
		if err != nil {
			closeAll(hot)
		} else {
			r.hot = hot
		}
	}()
	if r.mech == event.MechTracepoint {
		calls := syscallCalls()
		for _, exitSide := range []bool{true, false} {
			for _, c := range calls {
				if c == "msync" && !r.findVMA || c == "io_uring_enter" && r.ringErr != nil {
					continue
				}
				tp, prog := "sys_exit_"+c, r.exitProg
				if !exitSide {
					tp, prog = "sys_enter_"+c, syscallEnterProg(c, r.enterProg)
				}
				l, err := link.Tracepoint("syscalls", tp, coll.Programs[prog], nil)
				if err != nil {
					if errors.Is(err, os.ErrNotExist) {
						if !exitSide {
							missing = append(missing, c)
						}
						continue
					}
					return nil, attachErr(fmt.Errorf("tracepoint syscalls:%s: %w", tp, err))
				}
				hot = append(hot, l)
			}
		}
		if len(missing) >= len(calls) {
			return nil, attachErr(fmt.Errorf("no syscalls:sys_enter_* tracepoint: %w", os.ErrNotExist))
		}
		return missing, nil
	}
	ls, err := attachTPBTF(coll.Programs[r.exitProg], coll.Programs[r.enterProg])
	if err != nil {
		return nil, attachErr(err)
	}
	hot = append(hot, ls...)
	return nil, nil
}

// leadChains makes its programs lead the chains of the hooks it shares
// (r.unleads undo it): on sched_switch and sched_waking (both rungs) the
// off-CPU probe's programs run from their slots, and on sys_exit and
// sys_enter (tp_btf rung) the off-CPU, sysfs and exec probes'
// (rqchain.go): no syscall tracepoint of theirs then, one program per
// system call.
func (r *syscallRunning) leadChains() error {
	coll := r.coll
	r.unleads = append(r.unleads[:0],
		chainSchedWaking.lead(coll.Programs["sc_waking"], coll.Maps["sched_waking_next"]),
		chainSchedSwitch.lead(coll.Programs["sc_switch"], coll.Maps["sched_switch_next"]))
	if r.mech == event.MechTracepoint {
		return nil
	}
	for _, h := range []struct {
		c    *rqChain
		prog string
		next string
	}{{chainSysExit, r.exitProg, "sys_exit_next"}, {chainSysEnter, r.enterProg, "sys_enter_next"}} {
		m, err := h.c.joinWith(rankSyscall, coll.Programs[h.prog], coll.Maps[h.next], true, nil, nil)
		if err != nil {
			r.unlead()
			return attachErr(fmt.Errorf("leading %s's chain: %w", h.c.hook, err))
		}
		c := h.c
		r.unleads = append(r.unleads, func() error { return c.leave(m) })
	}
	return nil
}

// unlead ends the chains its programs lead, before they are detached.
func (r *syscallRunning) unlead() error {
	var err error
	for _, u := range r.unleads {
		err = errors.Join(err, u())
	}
	r.unleads = nil
	return err
}

// syscallEnterProg is the tracepoint rung's entry program for call c: one
// that reads no more arguments than the call's event records.
func syscallEnterProg(c, threeArgs string) string {
	switch c {
	case "sync":
		return "sc_tp_enter0"
	case "fsync", "fdatasync", "syncfs":
		return "sc_tp_enter1"
	}
	return threeArgs
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// statusNote is the status Reason (see climb): why this mechanism, and
// what the kernel let it do.
func (r *syscallRunning) statusNote() string { return r.note }

// handle delivers one ring record (reader goroutine).
func (r *syscallRunning) handle(raw []byte) {
	if len(raw) < 4 {
		r.decode++
		return
	}
	switch syscallScKind(binary.NativeEndian.Uint32(raw)) {
	case syscallScKindSC_NEW:
		var e syscallScNew
		if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
			r.decode++
			return
		}
		r.process(event.Mono(e.TimeNs), e.Tgid, cString(e.Comm[:]), e.CgroupId)
		r.device(e.Dev)
	case syscallScKindSC_SLOW:
		var e syscallScSlow
		if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
			r.decode++
			return
		}
		r.sink.Event(event.Syscall{
			Start:      event.Mono(e.StartNs),
			Duration:   time.Duration(e.DurationNs),
			Task:       event.Task{Pid: e.Pid, Tgid: e.Tgid, Comm: cString(e.Comm[:])},
			Call:       syscallName(e.Nr),
			Dev:        r.device(e.Dev),
			Sleep:      time.Duration(e.SleepNs),
			Runqueue:   time.Duration(e.RunqNs),
			Ret:        e.Ret,
			FromArming: e.Seeded != 0,
		})
	default:
		r.decode++
	}
}

// process delivers, the first time a process is seen, its names: read now,
// while it most likely still runs. When a later record of it shows another
// thread name or cgroup (it exec'd, or a wrapper moved itself into a cgroup
// and exec'd the job: "sh -c 'echo $$ > cgroup.procs; exec job'"), they
// are read again, and delivered again if they changed: the last record of
// a pid is its names.
func (r *syscallRunning) process(at event.Mono, tgid uint32, threadComm string, cgroupID uint64) {
	as := seenAs{threadComm, cgroupID}
	r.mu.Lock()
	old, seen := r.procs[tgid]
	last := r.seen[tgid]
	r.mu.Unlock()
	if seen && (threadComm == "" || as == last) {
		return
	}
	p := &event.Process{Time: at, Pid: tgid, Comm: threadComm, CgroupID: cgroupID}
	if b, err := os.ReadFile(filepath.Join(r.procfs, strconv.Itoa(int(tgid)), "comm")); err == nil {
		if c := strings.TrimSpace(string(b)); c != "" {
			p.Comm = c
		}
	}
	p.Cgroup, p.Blkio = procCgroups(filepath.Join(r.procfs, strconv.Itoa(int(tgid)), "cgroup"))
	r.mu.Lock()
	defer r.mu.Unlock()
	if threadComm != "" {
		r.seen[tgid] = as
	}
	if cur, ok := r.procs[tgid]; ok && (cur != old || !renamed(cur, p)) {
		return // another record named it meanwhile, or nothing changed
	}
	if seen && p.Cgroup == "" && p.Blkio == "" {
		return // gone: its first names stand
	}
	r.procs[tgid] = p
	r.comms[tgid] = p.Comm
	r.sink.Event(*p)
}

// seenAs is how a process's record showed it: its thread's name and cgroup
// v2 id.
type seenAs struct {
	comm     string
	cgroupID uint64
}

// renamed reports whether p names the process otherwise than cur.
func renamed(cur, p *event.Process) bool {
	return cur.Comm != p.Comm || cur.Cgroup != p.Cgroup || cur.Blkio != p.Blkio || cur.CgroupID != p.CgroupID
}

// procCgroups reads a /proc/PID/cgroup file: the cgroup v2 path ("0::")
// and the v1 blkio path, "" for those it does not list.
func procCgroups(path string) (v2, blkio string) {
	f, err := os.Open(path)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		id, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		ctrls, p, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		switch {
		case id == "0" && ctrls == "":
			v2 = p
		case slices.Contains(strings.Split(ctrls, ","), "blkio"):
			blkio = p
		}
	}
	return v2, blkio
}

// device names a kernel dev_t: its whole disk (a partition's is its
// disk's), read from sysfs once.
func (r *syscallRunning) device(dev uint32) event.Device {
	if dev == uint32(syscallScDevDEV_ALL) {
		return event.DevAll
	}
	if dev == uint32(syscallScDevDEV_PENDING) {
		return event.Device{} // sums of a ring whose device was not known yet: skipped
	}
	r.mu.Lock()
	d, ok := r.devs[dev]
	r.mu.Unlock()
	if ok {
		return d
	}
	major, minor := kernelDev(dev)
	d = wholeDisk(cmpOr(r.cfg.SysFS, "/sys"), major, minor)
	r.mu.Lock()
	r.devs[dev] = d
	r.mu.Unlock()
	return d
}

// wholeDisk returns the whole disk of block device major:minor (itself
// when it is no partition), named from sysfs.
func wholeDisk(sysfs string, major, minor uint32) event.Device {
	dir := filepath.Join(sysfs, "dev", "block", fmt.Sprintf("%d:%d", major, minor))
	if _, err := os.Stat(filepath.Join(dir, "partition")); err == nil {
		if b, err := os.ReadFile(filepath.Join(dir, "..", "dev")); err == nil {
			var M, m uint32
			if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &M, &m); err == nil {
				major, minor = M, m
			}
		}
	}
	return event.Device{Major: major, Minor: minor, Name: blockDevName(sysfs, major, minor)}
}

// Stop detaches, delivers the slow calls still buffered, then the sums:
// one event.SyscallStats per process x device x call and one
// event.BlockedStack per process x device x call x kernel stack, and the
// losses.
func (r *syscallRunning) Stop() error {
	r.stopOnce.Do(func() {
		// The calls in progress that began before the probe are looked
		// for while its programs still run: a thread that enters a new
		// call and sleeps once they are detached would look, in /proc,
		// like one asleep in its call since the start (hungSince).
		r.sums.Lock()
		if now, err := event.Now(); err == nil {
			r.stopAt = now
			r.hungAtStop = r.hungSince(now, r.inflightTids())
		}
		r.sums.Unlock()
		r.armst.mu.Lock()
		r.armst.stopped = true
		unleadErr := r.unlead()
		closeAll(r.hot)
		r.hot = nil
		r.armst.mu.Unlock()
		closeAll(r.links)
		// The ring's records, read to the last (ring.drain: its drain
		// method is shadowed by the sums' drain below, and the ring was
		// never flushed at the stop; unseen while each record was read as
		// it came, lost once records were read in batches).
		r.ring.drain()
		close(r.drainStop)
		<-r.drainDone
		r.drain()
		r.stopErr = errors.Join(r.deliverSums(r.sink), unleadErr)
		r.undecodable(r.sink, event.ProbeSyscall)
		if r.running != nil {
			r.running.Close()
		}
		if r.seeder != nil {
			r.seeder.Close()
		}
		r.coll.Close()
	})
	return r.stopErr
}

// Checkpoint implements Checkpointer: the sums so far (event.SyscallStats
// and event.BlockedStack, whole: timeline.Sums streams) and the losses.
func (r *syscallRunning) Checkpoint(sink Sink) error {
	return r.deliverSums(sink)
}

// deliverSums sends the sums of the maps and the loss counts to sink.
func (r *syscallRunning) deliverSums(sink Sink) error {
	r.sums.Lock()
	defer r.sums.Unlock()
	r.read = syscallRead{hists: map[syscallScHistKey]histMark{}, blocked: map[syscallScBlockedKey]syscallScBlocked{},
		mem: map[syscallScMemKey]syscallScMemStall{}}
	now, err := event.Now()
	if err == nil {
		err = r.deliverStats(sink, now)
	}
	if err == nil {
		err = r.deliverBlocked(sink, now)
	}
	if err == nil {
		err = r.deliverMemStalls(sink, now)
	}
	if err == nil {
		err = r.deliverUnfinished(sink, now)
	}
	deliverLosses(sink, event.ProbeSyscall, r.coll.Maps["losses"], r.coll)
	r.deliverScLosses(sink)
	r.deliverArmed(sink)
	return err
}

// comm names process tgid as it was first seen ("" when it was not).
func (r *syscallRunning) comm(tgid uint32) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.comms[tgid]
}

// addHist adds the counts of src to dst (the CPUs of one histogram, or
// its per-CPU and spilled parts).
func addHist(dst, src *syscallScHist) {
	dst.SumNs += src.SumNs
	dst.MaxNs = max(dst.MaxNs, src.MaxNs)
	dst.SleepNs += src.SleepNs
	dst.RunqNs += src.RunqNs
	dst.Seeded += src.Seeded
	for i, n := range src.Slots {
		dst.Slots[i] += n
	}
}

// sumMap is a kernel map of sums as the reads, the drain and Prune see
// it: a plain hash map, or the call histograms (per-CPU and spilled).
type sumMap[K comparable, V any] interface {
	// iterate calls fn with each entry.
	iterate(fn func(k K, v *V)) error
	// lookup reads k's entry: ebpf.ErrKeyNotExist when there is none.
	lookup(k K, v *V) error
	// remove deletes k's entry (wherever it is held).
	remove(k K) error
}

// plainSums is a hash map of sums.
type plainSums[K comparable, V any] struct{ m *ebpf.Map }

func (p plainSums[K, V]) iterate(fn func(k K, v *V)) error {
	var (
		k K
		v V
	)
	it := p.m.Iterate()
	for it.Next(&k, &v) {
		fn(k, &v)
	}
	return it.Err()
}

func (p plainSums[K, V]) lookup(k K, v *V) error { return p.m.Lookup(&k, v) }
func (p plainSums[K, V]) remove(k K) error       { return p.m.Delete(&k) }

// histSums are the call histograms: call_hists summed over the CPUs, and
// call_hists_spill.
type histSums struct{ r *syscallRunning }

// iterate sums each histogram over the CPUs and the spill map before it
// calls fn (with one buffer: fn keeps no v). The sums are kept sparse
// until then (drainedHist: the non-empty slots), not as a whole 2.7 KB
// histogram for each key of the maps at once.
func (h histSums) iterate(fn func(k syscallScHistKey, v *syscallScHist)) error {
	out := map[syscallScHistKey]*drainedHist{}
	var (
		k    syscallScHistKey
		cpus []syscallScHist
		v    syscallScHist
	)
	add := func(k syscallScHistKey, v *syscallScHist) {
		d := out[k]
		if d == nil {
			d = new(drainedHist)
			out[k] = d
		}
		absorbHist(d, v)
	}
	it := h.r.coll.Maps["call_hists"].Iterate()
	for it.Next(&k, &cpus) {
		v = syscallScHist{}
		for i := range cpus {
			addHist(&v, &cpus[i])
		}
		add(k, &v)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading call histograms: %w", err)
	}
	it = h.r.coll.Maps["call_hists_spill"].Iterate()
	for it.Next(&k, &v) {
		add(k, &v)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading spilled call histograms: %w", err)
	}
	var slot uint32
	it = h.r.coll.Maps["hist_slot_of"].Iterate()
	for it.Next(&k, &slot) {
		v = syscallScHist{}
		if err := h.addSlot(&v, slot, &cpus); err != nil {
			return err
		}
		add(k, &v)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading the histogram slots: %w", err)
	}
	for k, d := range out {
		v = syscallScHist{}
		addDrainedHist(&v, d)
		fn(k, &v)
	}
	return nil
}

// addSlot adds the histogram of slot (hist_arr), summed over the CPUs,
// to dst; cpus is a buffer.
func (h histSums) addSlot(dst *syscallScHist, slot uint32, cpus *[]syscallScHist) error {
	if err := h.r.coll.Maps["hist_arr"].Lookup(slot, cpus); err != nil {
		return fmt.Errorf("reading histogram slot %d: %w", slot, err)
	}
	for i := range *cpus {
		addHist(dst, &(*cpus)[i])
	}
	return nil
}

// lookup reads the histogram of one process x device x call, summed over
// the CPUs, its slot and the spill map; ebpf.ErrKeyNotExist when none
// holds it.
func (h histSums) lookup(k syscallScHistKey, v *syscallScHist) error {
	var (
		cpus  []syscallScHist
		spill syscallScHist
		slot  uint32
	)
	*v = syscallScHist{}
	found := false
	err := h.r.coll.Maps["hist_slot_of"].Lookup(k, &slot)
	if err == nil {
		found = true
		if err := h.addSlot(v, slot, &cpus); err != nil {
			return err
		}
	} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	err = h.r.coll.Maps["call_hists"].Lookup(k, &cpus)
	if err == nil {
		found = true
		for i := range cpus {
			addHist(v, &cpus[i])
		}
	} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	err = h.r.coll.Maps["call_hists_spill"].Lookup(k, &spill)
	if err == nil {
		found = true
		addHist(v, &spill)
	} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	if !found {
		return ebpf.ErrKeyNotExist
	}
	return nil
}

// remove deletes the histogram of k wherever it is held; its slot is
// emptied and goes back to the free ones (the programs give it to another
// key when they find it free: hist_owner cleared first, so that no thread
// that remembers it adds to it meanwhile).
func (h histSums) remove(k syscallScHistKey) error {
	var errs []error
	var slot uint32
	slotOf := h.r.coll.Maps["hist_slot_of"]
	if err := slotOf.Lookup(k, &slot); err == nil {
		if err := h.freeSlot(k, slot); err != nil {
			errs = append(errs, err)
		}
	} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, err)
	}
	for _, m := range []*ebpf.Map{h.r.coll.Maps["call_hists"], h.r.coll.Maps["call_hists_spill"]} {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// freeSlot empties histogram slot, which key k holds, and puts it back
// in the queue of free ones.
func (h histSums) freeSlot(k syscallScHistKey, slot uint32) error {
	m := h.r.coll.Maps
	if err := m["hist_slot_of"].Delete(k); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil // freed already
		}
		return err
	}
	if err := m["hist_owner"].Update(slot, syscallScHistKey{}, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("freeing histogram slot %d: %w", slot, err)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	if err := m["hist_arr"].Update(slot, make([]syscallScHist, cpus), ebpf.UpdateExist); err != nil {
		return fmt.Errorf("emptying histogram slot %d: %w", slot, err)
	}
	if err := m["hist_free"].Update(nil, slot, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("freeing histogram slot %d: %w", slot, err)
	}
	return nil
}

func (r *syscallRunning) deliverStats(sink Sink, now event.Mono) error {
	err := readSums[syscallScHistKey, syscallScHist](histSums{r}, r.drained.hists, addDrainedHist, func(k syscallScHistKey, v *syscallScHist) {
		r.read.hists[k] = markOf(v)
		name := syscallName(k.Nr)
		if name == "" || k.Dev == uint32(syscallScDevDEV_PENDING) {
			return
		}
		// A process whose first record was lost is named now, if it
		// still runs.
		r.process(now, k.Tgid, "", 0)
		// The non-empty slots only: a process's calls fill a few.
		h := hist.CompactSlots(v.Slots[:], v.SumNs, v.MaxNs)
		if h.Count == 0 {
			return
		}
		sink.Event(event.SyscallStats{
			Time: now, Pid: k.Tgid, Comm: r.comm(k.Tgid), Call: name, Dev: r.device(k.Dev),
			Latency: h, Sleep: time.Duration(v.SleepNs), Runqueue: time.Duration(v.RunqNs),
			FromArming: v.Seeded,
		})
	})
	if err != nil {
		return fmt.Errorf("reading call histograms: %w", err)
	}
	return nil
}

// frames symbolizes the stack id of the `stacks` map (under sums); nil
// for none.
func (r *syscallRunning) frames(id int32) []event.Frame {
	seed0 := syscallSeedStack0
	if id < 0 && id > seed0 {
		return nil
	}
	<-r.ksymsReady
	if r.kstacks == nil {
		r.kstacks = newStackCache(offcpuMaxCachedStacks)
	}
	var ips [syscallScLayoutSTACK_DEPTH]uint64
	if id <= seed0 {
		// A sleep in progress as the probe armed: its stack as sc_seed
		// took it.
		var s syscallScSeedStack
		if err := r.coll.Maps["seed_stacks"].Lookup(uint32(seed0-id), &s); err != nil {
			return nil
		}
		ips = s.Ips
	} else if err := r.coll.Maps["stacks"].Lookup(uint32(id), &ips); err != nil {
		return nil
	}
	n := 0
	for n < len(ips) && ips[n] != 0 {
		n++
	}
	return r.kstacks.kernel(r.ksyms, ips[:n])
}

func (r *syscallRunning) deliverBlocked(sink Sink, now event.Mono) error {
	err := readSums(sumMap[syscallScBlockedKey, syscallScBlocked](plainSums[syscallScBlockedKey, syscallScBlocked]{r.coll.Maps["blocked"]}), r.drained.blocked, addBlocked, func(k syscallScBlockedKey, v *syscallScBlocked) {
		r.read.blocked[k] = *v
		name := syscallName(k.Nr)
		if name == "" || v.Ns == 0 || k.Dev == uint32(syscallScDevDEV_PENDING) {
			return
		}
		sink.Event(event.BlockedStack{
			Time: now, Pid: k.Tgid, Comm: r.comm(k.Tgid), Call: name, Dev: r.device(k.Dev),
			Total: time.Duration(v.Ns), Count: v.Count, KernelStack: r.frames(k.Stackid),
			Unwalked: k.Stackid == syscallNotWalked,
		})
	})
	if err != nil {
		return fmt.Errorf("reading blocked time: %w", err)
	}
	return nil
}

// deliverUnfinished sends the storage calls still in the kernel (the
// `inflight` map: calls that blocked at least once and have not returned;
// and, from /proc, those that began before the probe did: hungSince) that
// have been in it for at least MinLatency, the earliest first. The
// entry of a thread that died inside its call (no exit was seen) is
// removed.
func (r *syscallRunning) deliverUnfinished(sink Sink, now event.Mono) error {
	if r.stopAt != 0 {
		now = r.stopAt // the last read: as of when the programs last ran
	}
	calls, err := r.inProgress()
	if err != nil {
		return fmt.Errorf("reading the calls in progress: %w", err)
	}
	var (
		out  []event.UnfinishedCall
		gone []uint32
	)
	// The threads in a call the probe saw begin: the scan of the others
	// (hungSince) leaves them out.
	seen := map[uint32]bool{}
	for _, c := range calls {
		seen[c.tid] = true
	}
	for _, c := range calls {
		tid, v := c.tid, c.call
		if v.StartNs == 0 || v.Dev == uint32(syscallScDevDEV_PENDING) || uint64(now) <= v.StartNs {
			continue
		}
		if _, err := os.Stat(filepath.Join(r.procfs, strconv.Itoa(int(v.Tgid)), "task", strconv.Itoa(int(tid)))); errors.Is(err, fs.ErrNotExist) {
			gone = append(gone, tid)
			continue
		}
		in := time.Duration(uint64(now) - v.StartNs)
		name := syscallName(v.Nr)
		if name == "" || in < r.cfg.MinLatency {
			continue
		}
		var asleep time.Duration
		if v.OffNs != 0 && uint64(now) > v.OffNs {
			asleep = time.Duration(uint64(now) - v.OffNs)
		}
		out = append(out, event.UnfinishedCall{
			Time: now, Start: event.Mono(v.StartNs),
			Task: event.Task{Pid: tid, Tgid: v.Tgid, Comm: cString(v.Comm[:])},
			Call: name, Dev: r.device(v.Dev), InCall: in,
			Sleep: time.Duration(v.SleepNs), Runqueue: time.Duration(v.RunqNs), Asleep: asleep,
			KernelStack: r.frames(v.Stackid), Unwalked: v.Stackid == syscallNotWalked,
			Before: c.seeded,
		})
	}
	if r.running == nil {
		for _, t := range gone {
			_ = r.coll.Maps["inflight"].Delete(t) // gone meanwhile too: nothing to tell
		}
	}
	if r.stopAt != 0 {
		out = append(out, r.hungAtStop...)
	} else {
		out = append(out, r.hungSince(now, seen)...)
	}
	slices.SortFunc(out, func(a, b event.UnfinishedCall) int {
		if c := cmp.Compare(a.Start, b.Start); c != 0 {
			return c
		}
		return cmp.Compare(a.Task.Pid, b.Task.Pid)
	})
	for _, u := range out {
		// Named now if its first record was lost, and again if it
		// exec'd since (the name of the thread in the call is its own).
		r.process(now, u.Task.Tgid, u.Task.Comm, 0)
		sink.Event(u)
	}
	return nil
}

// inflightTids are the threads in a storage call that has slept (none
// when they cannot be read).
func (r *syscallRunning) inflightTids() map[uint32]bool {
	seen := map[uint32]bool{}
	calls, _ := r.inProgress()
	for _, c := range calls {
		seen[c.tid] = true
	}
	return seen
}

// runningCall is a thread's storage call in progress: its `inflight`
// entry, or its sc_running record.
type runningCall struct {
	tid  uint32
	call syscallScInflight
	// seeded: in progress as the probe armed (sc_seed), its start the
	// arming.
	seeded bool
}

// inProgress lists the storage calls in progress that have slept at
// least once: from the threads' states by the sc_running iterator (task
// storage), else from the `inflight` map.
func (r *syscallRunning) inProgress() ([]runningCall, error) {
	var out []runningCall
	if r.running == nil {
		var c runningCall
		it := r.coll.Maps["inflight"].Iterate()
		for it.Next(&c.tid, &c.call) {
			out = append(out, c)
		}
		return out, it.Err()
	}
	rd, err := r.running.Open()
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	b, err := io.ReadAll(rd)
	if err != nil {
		return nil, err
	}
	var rec syscallScRunning
	size := binary.Size(rec)
	if len(b)%size != 0 {
		return nil, fmt.Errorf("%d bytes from the iterator, not a whole number of %d-byte records", len(b), size)
	}
	for ; len(b) > 0; b = b[size:] {
		if _, err := binary.Decode(b[:size], binary.NativeEndian, &rec); err != nil {
			return nil, err
		}
		out = append(out, runningCall{tid: rec.Tid, call: syscallScInflight(rec.Call), seeded: rec.Seeded != 0})
	}
	return out, nil
}

func (r *syscallRunning) deliverMemStalls(sink Sink, now event.Mono) error {
	err := readSums(sumMap[syscallScMemKey, syscallScMemStall](plainSums[syscallScMemKey, syscallScMemStall]{r.coll.Maps["mem_stalls"]}), r.drained.mem, addMemStall, func(k syscallScMemKey, v *syscallScMemStall) {
		r.read.mem[k] = *v
		name := syscallName(k.Nr)
		if name == "" || v.Ns == 0 || k.Dev == uint32(syscallScDevDEV_PENDING) || k.Kind >= uint32(len(syscallMemStalls)) {
			return
		}
		sink.Event(event.MemStall{
			Time: now, Pid: k.Tgid, Comm: r.comm(k.Tgid), Call: name, Dev: r.device(k.Dev),
			Kind: syscallMemStalls[k.Kind].kind, Total: time.Duration(v.Ns), Count: v.Count,
			Max: time.Duration(v.MaxNs),
		})
	})
	if err != nil {
		return fmt.Errorf("reading memory stalls: %w", err)
	}
	return nil
}

// Prune implements Pruner: it deletes the entries of the sums' maps whose
// process has exited (its /proc entry is gone) and that have not changed
// since the last read delivered them (a process gone cannot add to them:
// they were final), and forgets the names of those processes.
func (r *syscallRunning) Prune() ([]uint32, error) {
	r.sums.Lock()
	defer r.sums.Unlock()
	goneMemo := map[uint32]bool{}
	gone := func(tgid uint32) bool {
		g, ok := goneMemo[tgid]
		if !ok {
			g = procGone(r.procfs, tgid)
			goneMemo[tgid] = g
		}
		return g
	}
	kept := map[uint32]bool{} // processes gone with an entry left
	var errs []error
	hists := histSums{r}
	blocked := plainSums[syscallScBlockedKey, syscallScBlocked]{r.coll.Maps["blocked"]}
	mem := plainSums[syscallScMemKey, syscallScMemStall]{r.coll.Maps["mem_stalls"]}
	for k, v := range r.read.hists {
		if gone(k.Tgid) {
			err := pruneSum(hists, k, r.drained.hists, addDrainedHist, func(now *syscallScHist) bool { return markOf(now) == v })
			keep(kept, &errs, k.Tgid, err)
		}
	}
	for k, v := range r.read.blocked {
		if gone(k.Tgid) {
			err := pruneSum(blocked, k, r.drained.blocked, addBlocked, func(now *syscallScBlocked) bool { return *now == v })
			keep(kept, &errs, k.Tgid, err)
		}
	}
	for k, v := range r.read.mem {
		if gone(k.Tgid) {
			err := pruneSum(mem, k, r.drained.mem, addMemStall, func(now *syscallScMemStall) bool { return *now == v })
			keep(kept, &errs, k.Tgid, err)
		}
	}
	r.read = syscallRead{}
	r.mu.Lock()
	forget := func(tgid uint32) {
		delete(r.procs, tgid)
		delete(r.comms, tgid)
		delete(r.seen, tgid)
		delete(r.drainedGone, tgid)
	}
	var removed []uint32
	for tgid, g := range goneMemo {
		if g && !kept[tgid] {
			forget(tgid)
			removed = append(removed, tgid)
		}
	}
	// A process named by a record but in no sum read (its entries came
	// after the read, or were lost): its names go at the next Prune,
	// after a read that held whatever entries it left.
	var others []uint32
	for tgid := range r.procs {
		if _, read := goneMemo[tgid]; !read {
			others = append(others, tgid)
		}
	}
	r.mu.Unlock()
	unread := map[uint32]bool{}
	for _, tgid := range others {
		if gone(tgid) {
			unread[tgid] = true
		}
	}
	r.mu.Lock()
	for tgid := range unread {
		if r.unread[tgid] {
			forget(tgid)
			delete(unread, tgid)
		}
	}
	r.mu.Unlock()
	r.unread = unread
	slices.Sort(removed)
	if len(errs) > 0 {
		return removed, fmt.Errorf("removing the sums of exited processes: %w", errors.Join(errs...))
	}
	return removed, nil
}

// errKept says a sum was not removed: it changed since it was read.
var errKept = errors.New("changed since read")

// keep notes in kept that tgid keeps a sum when err says so, and in errs
// the errors other than that.
func keep(kept map[uint32]bool, errs *[]error, tgid uint32, err error) {
	if err == nil {
		return
	}
	kept[tgid] = true
	if !errors.Is(err, errKept) {
		*errs = append(*errs, err)
	}
}

// pruneSum removes key k's sum, its entry in kernel map m and its drained
// sum, when the two together are as last read (same): final. It returns
// errKept when they are not.
func pruneSum[K comparable, V, D any](m sumMap[K, V], k K, drained map[K]*D, addTo func(v *V, d *D), same func(*V) bool) error {
	var now V
	err := m.lookup(k, &now)
	inMap := err == nil
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	d := drained[k]
	if d != nil {
		addTo(&now, d)
	}
	if !inMap && d == nil {
		return nil // removed already
	}
	if !same(&now) {
		return errKept
	}
	if inMap {
		if err := m.remove(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	delete(drained, k)
	return nil
}

// procGone reports whether process tgid has exited and been reaped: its
// procfs entry is gone.
func procGone(procfs string, tgid uint32) bool {
	_, err := os.Stat(filepath.Join(procfs, strconv.Itoa(int(tgid))))
	return errors.Is(err, os.ErrNotExist)
}

// deliverScLosses sends the non-zero counts of the per-CPU `sc_losses`
// array.
func (r *syscallRunning) deliverScLosses(sink Sink) {
	deliverLossArray(sink, event.ProbeSyscall, r.coll.Maps["sc_losses"], syscallLossWhat[:])
}
