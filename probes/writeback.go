package probes

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/symbolize"
)

// writebackProbe sees the kernel's write-back throttles and journal
// commits from their tracepoints (bpf/writeback.bpf.c): writeback
// throttling scaling a device's depth (wbt), writers paused for dirty
// pages (balance_dirty_pages), each jbd2 commit with its phases and
// the inodes whose ordered data it wrote, named by the process that
// dirtied them, and each force and log buffer write of an xfs log. At the start it reads what those depend on: the dirty
// sysctls, each device's wbt_lat_usec, and the filesystems mounted on
// block devices.
type writebackProbe struct{}

func init() { register(writebackProbe{}) }

// Decl implements Probe.
func (writebackProbe) Decl() Decl {
	return Decl{
		Name:       event.ProbeWriteback,
		Mechanisms: []Rung{{Mech: event.MechTracepoint}},
		Describe:   "write-back throttles and journal commits: wbt scaling, writers paused for dirty pages, jbd2 commits and whose data they wrote, xfs log forces and log writes",
		Attach:     "tracepoints `wbt:wbt_step`, `wbt_lat`, `wbt_stat`, `writeback:balance_dirty_pages`, `writeback_dirty_folio` (5.10: `writeback_dirty_page`), `jbd2:jbd2_start_commit` .. `jbd2_end_commit`, `jbd2_run_stats`, `jbd2_submit_inode_data`, `xfs:xfs_log_force`, `xlog_iclog_sync`, `xlog_iclog_sync_done` (6.1+); /proc/sys/vm/dirty_*, /proc/vmstat's nr_dirty_threshold, /proc/meminfo, queue/wbt_lat_usec, /proc/self/mountinfo, the paused writers' cgroup v2 memory.max and memory.high",
		Records:    "wbt steps, latency targets, the latencies that exceeded them and the latencies of its windows while scaled, per device; each dirty-throttle pause with the limits in force and its memory cgroup's; each journal commit with its phases, and the inodes whose data it wrote with their dirtier; each xfs log force with who forced it and from where, and each xfs log buffer write timed; the dirty sysctls; mounts",
	}
}

// writebackGroups are the tracepoints, by group: a group whose events the
// kernel lacks (no wbt, jbd2 not loaded) is skipped and said so.
var writebackGroups = []struct {
	what   string
	points [][3]string // program, category, event
}{
	{"wbt", [][3]string{
		{"wb_wbt_step", "wbt", "wbt_step"},
		{"wb_wbt_lat", "wbt", "wbt_lat"},
		{"wb_wbt_stat", "wbt", "wbt_stat"},
	}},
	{"dirty throttling", [][3]string{
		{"wb_dirty", "writeback", "balance_dirty_pages"},
	}},
	{"jbd2 commits", [][3]string{
		// the end first, so that no commit started misses its end
		{"wb_commit_end", "jbd2", "jbd2_end_commit"},
		{"wb_commit_stats", "jbd2", "jbd2_run_stats"},
		{"wb_commit_logging", "jbd2", "jbd2_commit_logging"},
		{"wb_commit_flushing", "jbd2", "jbd2_commit_flushing"},
		{"wb_commit_locking", "jbd2", "jbd2_commit_locking"},
		{"wb_commit_start", "jbd2", "jbd2_start_commit"},
		{"wb_ordered", "jbd2", "jbd2_submit_inode_data"},
	}},
	{"xfs log forces", [][3]string{
		{"wb_log_force", "xfs", "xfs_log_force"},
	}},
	// 6.1+
	{"xfs log writes", [][3]string{
		{"wb_iclog_done", "xfs", "xlog_iclog_sync_done"},
		{"wb_iclog_sync", "xfs", "xlog_iclog_sync"},
	}},
}

type writebackRunning struct {
	cfg   Config
	sink  Sink
	coll  *ebpf.Collection
	links []link.Link
	ring

	mu   sync.Mutex
	devs map[string]event.Device // by "MAJ:MIN"

	memcgs map[uint64]memcgLimits // by cgroup inode; read by the ring's reader only

	// ksyms names the callers of log forces, read at the first one (by
	// the ring's reader only); ksymsRead says it was tried.
	ksyms     *symbolize.Kernel
	ksymsRead bool

	stopOnce sync.Once
	stopErr  error
}

func (p writebackProbe) Start(cfg Config, sink Sink) (Running, event.ProbeStatus) {
	r, note, err := startWriteback(cfg, sink)
	if err != nil {
		return nil, unavailableStatus(p.Decl().Name, err)
	}
	st := p.Decl().started()
	st.Reason = note
	return r, st
}

func startWriteback(cfg Config, sink Sink) (_ *writebackRunning, note string, err error) {
	if _, err := ensureTracefs(); err != nil {
		return nil, "", err
	}
	spec, err := loadSpec(loadWriteback, nil)
	if err != nil {
		return nil, "", err
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, *collectionOptions(nil))
	if err != nil {
		return nil, "", fmt.Errorf("loading objects: %w", err)
	}
	r := &writebackRunning{cfg: cfg, sink: sink, coll: coll, devs: map[string]event.Device{},
		memcgs: map[uint64]memcgLimits{}}
	defer func() {
		if err != nil {
			closeAtOnce(r.links)
			if r.rd != nil {
				r.rd.Close()
			}
			coll.Close()
		}
	}()
	if err = r.openRing(coll.Maps["events"]); err != nil {
		return nil, "", fmt.Errorf("opening ring buffer: %w", err)
	}
	var skipped []string
	for _, g := range writebackGroups {
		var ls []link.Link
		var gerr error
		for _, pt := range g.points {
			l, err := link.Tracepoint(pt[1], pt[2], coll.Programs[pt[0]], nil)
			if err != nil {
				gerr = fmt.Errorf("%s:%s: %w", pt[1], pt[2], err)
				break
			}
			ls = append(ls, l)
		}
		if gerr != nil {
			closeAll(ls)
			skipped = append(skipped, g.what+" ("+errReason(gerr)+")")
			continue
		}
		r.links = append(r.links, ls...)
	}
	if len(r.links) == 0 {
		return nil, "", fmt.Errorf("no tracepoint could be attached: %s", strings.Join(skipped, "; "))
	}
	// Who dirtied an inode: the folio event, or the page one before folios.
	dirtied := coll.Programs["wb_dirtied"]
	if l, err := link.Tracepoint("writeback", "writeback_dirty_folio", dirtied, nil); err == nil {
		r.links = append(r.links, l)
	} else if l, err2 := link.Tracepoint("writeback", "writeback_dirty_page", dirtied, nil); err2 == nil {
		r.links = append(r.links, l)
	} else {
		skipped = append(skipped, "the processes that dirtied ordered data ("+errReason(err)+")")
	}
	if len(skipped) > 0 {
		note = "not seen: " + strings.Join(skipped, "; ")
	}
	r.snapshot()
	r.readAll(r.sink, event.ProbeWriteback, r.handle)
	return r, note, nil
}

// snapshot delivers what the throttles depend on, read at the start: the
// dirty sysctls, each device's wbt latency target, the mounts.
func (r *writebackRunning) snapshot() {
	now, err := event.Now()
	if err != nil {
		return
	}
	proc, sys := cmpOr(r.cfg.ProcFS, "/proc"), cmpOr(r.cfg.SysFS, "/sys")
	num := func(name string) uint64 {
		b, err := os.ReadFile(filepath.Join(proc, "sys", "vm", name))
		if err != nil {
			return 0
		}
		v, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		return v
	}
	thresh, dirtyable := dirtyThreshold(proc)
	r.sink.Event(event.DirtyLimits{Time: now, Bytes: num("dirty_bytes"), Ratio: num("dirty_ratio"),
		BackgroundBytes: num("dirty_background_bytes"), BackgroundRatio: num("dirty_background_ratio"),
		PageSize: uint64(os.Getpagesize()), Thresh: thresh, Dirtyable: dirtyable})
	paths, _ := filepath.Glob(filepath.Join(sys, "block", "*", "queue", "wbt_lat_usec"))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		us, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil || us < 0 {
			continue
		}
		devb, err := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(p)), "dev"))
		if err != nil {
			continue
		}
		r.sink.Event(event.WbtLat{Time: now, Dev: r.device(strings.TrimSpace(string(devb))),
			Lat: time.Duration(us) * time.Microsecond, From: "sysfs"})
	}
	fsdisk := r.coll.Maps["fsdisk"]
	for _, m := range readMounts(filepath.Join(proc, "self", "mountinfo")) {
		fs := r.fsDevice(m[0])
		if fs.Name == "" {
			continue
		}
		disk := r.device(m[0])
		r.sink.Event(event.Mount{Time: now, Dev: disk, FsDev: fs.Name, FSType: m[1], Point: m[2]})
		if disk.Major != fs.Major || disk.Minor != fs.Minor {
			// a partition: its commits' ordered data is dirtied on its disk
			_ = fsdisk.Put(fs.Major<<20|fs.Minor, disk.Major<<20|disk.Minor)
		}
	}
}

// readMounts returns the mounts of block devices: MAJ:MIN, type, point,
// each (device, point) once: a device mounted at two points (a bind mount)
// gives both.
func readMounts(path string) [][3]string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out [][3]string
	seen := map[[2]string]bool{}
	sc := bufio.NewScanner(f)
	// a mount's options can be long (overlay's lowerdir): a line is not
	// allowed to end the scan early
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+1 >= len(fields) {
			continue
		}
		dev, point := fields[2], unescapeMount(fields[4])
		if strings.HasPrefix(dev, "0:") || seen[[2]string{dev, point}] {
			continue
		}
		seen[[2]string{dev, point}] = true
		out = append(out, [3]string{dev, fields[sep+1], point})
	}
	return out
}

// device names "MAJ:MIN": its whole disk, read from sysfs once.
func (r *writebackRunning) device(mm string) event.Device {
	r.mu.Lock()
	d, ok := r.devs[mm]
	r.mu.Unlock()
	if ok {
		return d
	}
	var major, minor uint32
	if _, err := fmt.Sscanf(mm, "%d:%d", &major, &minor); err != nil {
		return event.Device{Name: mm}
	}
	d = wholeDisk(cmpOr(r.cfg.SysFS, "/sys"), major, minor)
	if d.Name == "" {
		d.Name = mm
	}
	r.mu.Lock()
	r.devs[mm] = d
	r.mu.Unlock()
	return d
}

// fsDevice names "MAJ:MIN" itself (a partition stays one).
func (r *writebackRunning) fsDevice(mm string) event.Device {
	var major, minor uint32
	if _, err := fmt.Sscanf(mm, "%d:%d", &major, &minor); err != nil {
		return event.Device{}
	}
	return event.Device{Major: major, Minor: minor, Name: blockDevName(cmpOr(r.cfg.SysFS, "/sys"), major, minor)}
}

// writebackSelf is whyslow's process.
var writebackSelf = uint32(os.Getpid())

// kdev formats a kernel dev_t as "MAJ:MIN".
func kdev(dev uint32) string {
	major, minor := kernelDev(dev)
	return fmt.Sprintf("%d:%d", major, minor)
}

func (r *writebackRunning) handle(raw []byte) {
	if len(raw) < 4 {
		r.decode++
		return
	}
	read := func(v any) bool {
		if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, v); err != nil {
			r.decode++
			return false
		}
		return true
	}
	switch writebackWbKind(binary.NativeEndian.Uint32(raw)) {
	case writebackWbKindWB_WBT_STEP:
		var e writebackWbtEvent
		if read(&e) {
			r.sink.Event(event.WbtStep{Time: event.Mono(e.TimeNs), Dev: r.device(cString(e.Bdi[:])),
				Step: e.Step, Msg: cString(e.Msg[:]), Window: time.Duration(e.WindowUs) * time.Microsecond,
				Bg: e.Bg, Normal: e.Normal, Max: e.Max})
		}
	case writebackWbKindWB_WBT_LAT:
		var e writebackWbtEvent
		if read(&e) {
			r.sink.Event(event.WbtLat{Time: event.Mono(e.TimeNs), Dev: r.device(cString(e.Bdi[:])),
				Lat: time.Duration(e.LatUs) * time.Microsecond, From: "wbt_lat"})
		}
	case writebackWbKindWB_WBT_STAT:
		var e writebackWbtStatEvent
		if read(&e) {
			ns := func(v int64) time.Duration { return time.Duration(max(v, 0)) }
			r.sink.Event(event.WbtWindow{Time: event.Mono(e.TimeNs), Dev: r.device(cString(e.Bdi[:])),
				ReadMean: ns(e.Rmean), ReadMin: ns(e.Rmin), ReadMax: ns(e.Rmax), Reads: e.Rsamples,
				WriteMean: ns(e.Wmean), WriteMin: ns(e.Wmin), WriteMax: ns(e.Wmax), Writes: e.Wsamples})
		}
	case writebackWbKindWB_DIRTY:
		var e writebackDirtyEvent
		// whyslow's own pauses (writing its trace) are left out, as the
		// syscall probe leaves out its calls
		if read(&e) && e.Tgid != writebackSelf {
			m := r.memcg(e.CgroupIno)
			r.sink.Event(event.DirtyPause{Time: event.Mono(e.TimeNs),
				Task:  event.Task{Pid: e.Pid, Tgid: e.Tgid, Comm: cString(e.Comm[:])},
				Dev:   r.device(cString(e.Bdi[:])),
				Pause: time.Duration(e.PauseMs) * time.Millisecond, Period: time.Duration(e.PeriodMs) * time.Millisecond,
				Paused: time.Duration(e.PausedMs) * time.Millisecond,
				Limit:  e.Limit, Setpoint: e.Setpoint, Dirty: e.Dirty, WbSetpoint: e.WbSetpoint, WbDirty: e.WbDirty,
				DirtyRatelimit: e.DirtyRatelimit, TaskRatelimit: e.TaskRatelimit, CgroupIno: e.CgroupIno,
				Cgroup: m.path, MemoryMax: m.max, MemoryHigh: m.high})
		}
	case writebackWbKindWB_COMMIT:
		var e writebackCommitEvent
		if !read(&e) {
			return
		}
		mm := kdev(e.Dev)
		start := e.StartNs
		if start == 0 { // started before the probe: from its first phase seen
			start = min(nz(e.LockingNs), nz(e.FlushingNs), nz(e.LoggingNs), e.EndNs)
		}
		span := func(from, to uint64) time.Duration {
			if from == 0 || to < from {
				return 0
			}
			return time.Duration(to - from)
		}
		next := func(ts ...uint64) uint64 { // the first phase seen after
			for _, t := range ts {
				if t != 0 {
					return t
				}
			}
			return 0
		}
		r.sink.Event(event.JournalCommit{Start: event.Mono(start), Duration: span(start, e.EndNs),
			Dev: r.device(mm), FsDev: r.fsDevice(mm).Name, Tid: e.Tid, Sync: e.SyncCommit != 0,
			Locking:  span(e.LockingNs, next(e.FlushingNs, e.LoggingNs, e.EndNs)),
			Flushing: span(e.FlushingNs, next(e.LoggingNs, e.EndNs)),
			Logging:  span(e.LoggingNs, e.EndNs),
			Handles:  e.HandleCount, Blocks: e.Blocks, BlocksLogged: e.BlocksLogged})
	case writebackWbKindWB_ORDERED:
		var e writebackOrderedEvent
		if !read(&e) {
			return
		}
		mm := kdev(e.Dev)
		var t event.Task
		if e.DirtierTgid != 0 {
			t = event.Task{Pid: e.DirtierTgid, Tgid: e.DirtierTgid, Comm: cString(e.Comm[:])}
		}
		r.sink.Event(event.OrderedData{Time: event.Mono(e.TimeNs), Dev: r.device(mm), FsDev: r.fsDevice(mm).Name,
			Tid: e.Tid, Ino: e.Ino, Dirtier: t})
	case writebackWbKindWB_LOG_FORCE:
		var e writebackLogForceEvent
		if !read(&e) {
			return
		}
		mm := kdev(e.Dev)
		r.sink.Event(event.LogForce{Time: event.Mono(e.TimeNs), Dev: r.device(mm), FsDev: r.fsDevice(mm).Name,
			Task: event.Task{Pid: e.Pid, Tgid: e.Tgid, Comm: cString(e.Comm[:])}, Lsn: e.Lsn, Caller: r.caller(e.Caller)})
	case writebackWbKindWB_LOG_WRITE:
		var e writebackLogWriteEvent
		if !read(&e) {
			return
		}
		mm := kdev(e.Dev)
		var d time.Duration
		if e.EndNs > e.StartNs {
			d = time.Duration(e.EndNs - e.StartNs)
		}
		r.sink.Event(event.LogWrite{Start: event.Mono(e.StartNs), Duration: d, Dev: r.device(mm), FsDev: r.fsDevice(mm).Name,
			Lsn: e.Lsn, Bytes: e.Size, Flush: e.Flags&1 != 0, FUA: e.Flags&2 != 0})
	default:
		r.decode++
	}
}

// caller names the function at a kernel address (a tracepoint's
// caller_ip), "" when kallsyms cannot be read or does not know it.
func (r *writebackRunning) caller(addr uint64) string {
	if !r.ksymsRead {
		r.ksymsRead = true
		r.ksyms, _ = symbolize.LoadKernel(cmpOr(r.cfg.ProcFS, "/proc"))
	}
	if r.ksyms == nil || addr == 0 {
		return ""
	}
	return r.ksyms.Frame(addr).Symbol
}

// nz is v, or the largest value when 0 (for min over the phases seen).
func nz(v uint64) uint64 {
	if v == 0 {
		return ^uint64(0)
	}
	return v
}

// Checkpoint implements Checkpointer.
func (r *writebackRunning) Checkpoint(sink Sink) error {
	deliverLosses(sink, event.ProbeWriteback, r.coll.Maps["losses"], r.coll)
	return nil
}

// Stop detaches, delivers the buffered events and the losses, and frees
// everything.
func (r *writebackRunning) Stop() error {
	r.stopOnce.Do(func() {
		closeAtOnce(r.links)
		r.drain()
		deliverLosses(r.sink, event.ProbeWriteback, r.coll.Maps["losses"], r.coll)
		r.undecodable(r.sink, event.ProbeWriteback)
		r.coll.Close()
	})
	return r.stopErr
}

// memcgLimits are a memory cgroup's path (cgroup v2) and memory limits.
type memcgLimits struct {
	path      string
	max, high uint64 // bytes; 0 for "max" or unknown
}

// memcg names the writeback cgroup of a pause (balance_dirty_pages'
// cgroup_ino: the inode of its directory in the cgroup v2 hierarchy, where
// cgroup writeback puts each memory cgroup's dirty pages in a domain of
// its own) and reads its memory.max and memory.high, once per cgroup: the
// memory its own dirty limit is a share of. The root (inode 0 or 1), and
// a cgroup not found, give none.
func (r *writebackRunning) memcg(ino uint64) memcgLimits {
	if ino <= 1 {
		return memcgLimits{}
	}
	if m, ok := r.memcgs[ino]; ok {
		return m
	}
	var m memcgLimits
	proc := cmpOr(r.cfg.ProcFS, "/proc")
	if _, v2, _ := ioHierarchies(filepath.Join(proc, "self", "mountinfo")); v2 != "" {
		if path := cgroupPathIn(v2, ino); path != "" && path != "/" {
			m.path = path
			m.max = memoryLimit(filepath.Join(v2, path, "memory.max"))
			m.high = memoryLimit(filepath.Join(v2, path, "memory.high"))
		}
	}
	r.memcgs[ino] = m
	return m
}

// cgroupPathIn is the path, under the cgroup hierarchy mounted at root,
// of the cgroup whose directory has inode ino; "" when none has.
func cgroupPathIn(root string, ino uint64) string {
	out := ""
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Ino == ino {
			if rel, err := filepath.Rel(root, path); err == nil {
				out = filepath.Clean("/" + rel)
			}
			return filepath.SkipAll
		}
		return nil
	})
	return out
}

// memoryLimit reads a memory.max or memory.high file: bytes, 0 for "max"
// or when it cannot be read.
func memoryLimit(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0
	}
	return v
}

// dirtyThreshold reads the system's dirty threshold (procfs/vmstat
// nr_dirty_threshold, pages) and the memory it is a share of (procfs/meminfo
// MemFree + Active(file) + Inactive(file), in pages); 0 for what is unknown.
func dirtyThreshold(procfs string) (thresh, dirtyable uint64) {
	if b, err := os.ReadFile(filepath.Join(procfs, "vmstat")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) == 2 && f[0] == "nr_dirty_threshold" {
				thresh, _ = strconv.ParseUint(f[1], 10, 64)
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join(procfs, "meminfo")); err == nil {
		var kib uint64
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) >= 2 && (f[0] == "MemFree:" || f[0] == "Active(file):" || f[0] == "Inactive(file):") {
				v, _ := strconv.ParseUint(f[1], 10, 64)
				kib += v
			}
		}
		dirtyable = kib * 1024 / uint64(os.Getpagesize())
	}
	return thresh, dirtyable
}
