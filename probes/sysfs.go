package probes

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
)

// sysfsProbe reports who opens block device attributes in sysfs for
// writing: writes of queue/scheduler, queue/nr_requests and friends freeze
// the request queue.
type sysfsProbe struct{}

func init() { register(sysfsProbe{}) }

// Decl implements Probe.
func (sysfsProbe) Decl() Decl {
	return Decl{
		Name:       event.ProbeSysfs,
		Mechanisms: []Rung{{Mech: event.MechTracepoint}, {Mech: event.MechTPBTF}},
		Describe:   "opens for writing of block device attributes in sysfs (queue/scheduler, queue/nr_requests, ...), with who made them",
		Attach:     "tracepoints `syscalls:sys_enter_openat{,2}`, `sys_enter_open` (mounts tracefs if needed); without tracefs, tp_btf `sys_enter` on every system call; while the syscall probe runs on tp_btf, its `sys_enter` program tail-calls this probe's instead of the tracepoints",
		Records:    "who opens block attributes such as `queue/scheduler` for writing",
	}
}

// tracefsDir is where the kernel documents tracefs to be mounted;
// debugTracefsDir where older systems have it (inside debugfs, or tracefs
// mounted there).
const (
	tracefsDir      = "/sys/kernel/tracing"
	debugTracefsDir = "/sys/kernel/debug/tracing"
)

// seats implements chainMember: the exec probe's program on sys_enter
// runs from its program's slot there while that runs on sys_enter.
func (sysfsProbe) seats() []*seat {
	return []*seat{chainSysEnter.coming.expect(rankSysfsOrOffCPU)}
}

func (p sysfsProbe) Start(cfg Config, sink Sink) (Running, event.ProbeStatus) {
	r, st := startSysfs(cfg, sink, true)
	st.Name = p.Decl().Name
	if r == nil {
		return nil, st
	}
	return r, st
}

type sysfsRunning struct {
	sink  Sink
	sysfs string
	objs  *ebpf.Collection
	links []link.Link
	// enter is sysfs_sys_enter on sys_enter's chain (rqchain.go), nil
	// without kernel BTF: behind the syscall probe's program while that
	// runs on tp_btf, else off the hook on the syscall tracepoints (own)
	// or, without tracefs, on a link of its own.
	enter *rqMember
	// ownClose detaches the tracepoints when there is no chain member.
	ownClose func() error
	// join puts sysfs_sys_enter on sys_enter's chain again, own its
	// tracepoints again (armed mode: sysfs_armed.go); armst its state.
	join  func() (*rqMember, error)
	own   func() (func() error, error)
	armst armState
	ring

	stopOnce sync.Once
	stopErr  error
}

// startSysfs attaches to the openat/openat2/open syscall tracepoints,
// mounting tracefs first when it is not mounted. When tracefs cannot be had,
// it falls back to the sys_enter raw tracepoint (tp_btf), which needs no
// tracefs but runs on every system call. Tests set tracepoints to false to
// exercise the fallback.
func startSysfs(cfg Config, sink Sink, tracepoints bool) (*sysfsRunning, event.ProbeStatus) {
	st := event.ProbeStatus{Status: event.StatusUnavailable}
	kernel, err := kernelSpec(cfg)
	if err != nil {
		// Syscall tracepoints do not need BTF: go on without it.
		kernel = nil
	}
	spec, err := loadSpec(loadSysfs, nil)
	if err != nil {
		st.Reason = errReason(err)
		return nil, st
	}
	r := &sysfsRunning{sink: sink, sysfs: cfg.SysFS}

	note, tfErr := "", errors.New("syscall tracepoints not tried")
	if tracepoints {
		note, tfErr = ensureTracefs()
	}
	if tfErr == nil {
		err = r.attachTracepoints(spec, kernel)
		if err == nil {
			st.Status, st.Mechanism, st.Reason = event.StatusOK, event.MechTracepoint, note
		} else {
			st.Skipped = append(st.Skipped, event.Skip{Mechanism: event.MechTracepoint, Reason: errReason(err)})
		}
	} else {
		st.Skipped = append(st.Skipped, event.Skip{Mechanism: event.MechTracepoint, Reason: tfErr.Error()})
	}
	if st.Status != event.StatusOK {
		if kernel == nil {
			st.Reason = "syscall tracepoints unusable and no kernel BTF for the tp_btf fallback"
			return nil, st
		}
		if err := r.attachSysEnter(spec, kernel); err != nil {
			st.Reason = fmt.Sprintf("%s; tp_btf sys_enter fallback: %s", st.Skipped[0].Reason, errReason(err))
			return nil, st
		}
		st.Status, st.Mechanism, st.Reason = event.StatusOK, event.MechTPBTF, "fallback on every system call: "+st.Skipped[0].Reason
	}

	if err = r.openRing(r.objs.Maps["events"]); err != nil {
		r.close()
		st.Status, st.Mechanism, st.Reason = event.StatusUnavailable, "", errReason(fmt.Errorf("opening ring buffer: %w", err))
		return nil, st
	}
	r.readAll(r.sink, event.ProbeSysfs, r.handle)
	return r, st
}

// keepPrograms returns a copy of spec with only the named programs.
func keepPrograms(spec *ebpf.CollectionSpec, names ...string) *ebpf.CollectionSpec {
	s := spec.Copy()
	for n := range s.Programs {
		keep := false
		for _, k := range names {
			keep = keep || n == k
		}
		if !keep {
			delete(s.Programs, n)
		}
	}
	return s
}

// chainedNote is the status note of a probe whose syscall tracepoints
// give way to a program tail-called on sys_enter/sys_exit while the
// syscall probe runs there (rqchain.go).
const chainedNote = "while the syscall probe runs on tp_btf, tail-called from its program on sys_enter/sys_exit instead of the syscall tracepoints"

func (r *sysfsRunning) attachTracepoints(spec *ebpf.CollectionSpec, kernel *btf.Spec) error {
	names := []string{"sysfs_openat", "sysfs_openat2", "sysfs_open_old"}
	var coll *ebpf.Collection
	var err error
	if kernel != nil {
		// With sysfs_sys_enter, for sys_enter's chain; a kernel that
		// will not load it keeps the tracepoints alone.
		coll, err = ebpf.NewCollectionWithOptions(keepPrograms(spec, append(names, "sysfs_sys_enter")...), *collectionOptions(kernel))
	}
	if coll == nil {
		coll, err = ebpf.NewCollectionWithOptions(keepPrograms(spec, names...), *collectionOptions(kernel))
	}
	if err != nil {
		return fmt.Errorf("loading objects: %w", err)
	}
	// own attaches the tracepoints (again, when the chain lets the
	// program go).
	tps := []syscallTP{
		{coll.Programs["sysfs_openat"], "sys_enter_openat", true},
		{coll.Programs["sysfs_openat2"], "sys_enter_openat2", false}, // 5.6+
		{coll.Programs["sysfs_open_old"], "sys_enter_open", false},   // not on arm64
	}
	own := attachSyscallTPs(tps...)
	if p := coll.Programs["sysfs_sys_enter"]; p != nil {
		// Behind the syscall probe's program on sys_enter while it
		// runs there, straight into its slot when it runs already (or
		// is starting: chainwait.go); the tracepoints otherwise.
		if err := requireSyscallTPs(tps...); err != nil {
			coll.Close()
			return err
		}
		next := coll.Maps["sys_enter_next"]
		r.join = func() (*rqMember, error) { return chainSysEnter.joinWith(rankSysfsOrOffCPU, p, next, false, own, nil) }
		if r.enter, err = r.join(); err != nil {
			coll.Close()
			return err
		}
		r.objs = coll
		return nil
	}
	cl, err := own()
	if err != nil {
		coll.Close()
		return err
	}
	r.objs = coll
	r.ownClose, r.own = cl, own
	return nil
}

// attachSysEnter runs sysfs_sys_enter on sys_enter: on its own, or behind
// the syscall probe's program there (rqchain.go).
func (r *sysfsRunning) attachSysEnter(spec *ebpf.CollectionSpec, kernel *btf.Spec) error {
	coll, err := ebpf.NewCollectionWithOptions(keepPrograms(spec, "sysfs_sys_enter"), *collectionOptions(kernel))
	if err != nil {
		return fmt.Errorf("loading objects: %w", err)
	}
	p, next := coll.Programs["sysfs_sys_enter"], coll.Maps["sys_enter_next"]
	r.join = func() (*rqMember, error) { return chainSysEnter.joinWith(rankSysfsOrOffCPU, p, next, false, nil, nil) }
	if r.enter, err = r.join(); err != nil {
		coll.Close()
		return err
	}
	r.objs = coll
	return nil
}

// ensureTracefs makes sure tracefs is mounted where cilium/ebpf looks for
// it, mounting it at /sys/kernel/tracing when it is not. The note says
// what was done, for the probe status.
func ensureTracefs() (note string, err error) {
	for _, p := range []struct {
		dir   string
		magic int64
	}{
		{tracefsDir, unix.TRACEFS_MAGIC},
		{debugTracefsDir, unix.TRACEFS_MAGIC},
		{debugTracefsDir, unix.DEBUGFS_MAGIC},
	} {
		var fs unix.Statfs_t
		if unix.Statfs(p.dir, &fs) == nil && int64(fs.Type) == p.magic {
			return "", nil
		}
	}
	if err := unix.Mount("tracefs", tracefsDir, "tracefs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return "", fmt.Errorf("tracefs is not mounted and mounting it at %s failed: %w", tracefsDir, err)
	}
	return "tracefs was not mounted: mounted it at " + tracefsDir, nil
}

func (r *sysfsRunning) handle(raw []byte) {
	var e sysfsSysfsEvent
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
		r.decode++
		return
	}
	p := cString(e.Path[:])
	dev, attr, ok := parseSysfsBlockPath(p)
	if !ok {
		return
	}
	dev, attr = resolveSysfsDevice(r.sysfs, dev, attr)
	if !isBlockAttr(attr) {
		return
	}
	r.sink.Event(event.SysfsWrite{
		Time:   event.Mono(e.Ns),
		Task:   event.Task{Pid: e.Pid, Tgid: e.Tgid, Comm: cString(e.Comm[:])},
		Path:   p,
		Device: dev,
		Attr:   attr,
	})
}

// Checkpoint implements Checkpointer.
func (r *sysfsRunning) Checkpoint(sink Sink) error {
	deliverLossesWith(sink, event.ProbeSysfs, r.objs.Maps["losses"], r.objs, r.skips())
	return nil
}

// skips are sysfs_sys_enter's skipped runs, its own and those of the
// program it ran behind on sys_enter's chain.
func (r *sysfsRunning) skips() map[*ebpf.Program]uint64 {
	r.armst.mu.Lock()
	defer r.armst.mu.Unlock()
	if r.enter == nil {
		return r.armst.withPast(nil)
	}
	return r.armst.withPast(map[*ebpf.Program]uint64{r.enter.prog: chainSysEnter.skips(r.enter)})
}

// Stop detaches the programs, delivers what is still buffered and the loss
// counts, and frees everything.
func (r *sysfsRunning) Stop() error {
	r.stopOnce.Do(func() {
		r.armst.mu.Lock()
		r.armst.stopped = true
		r.stopErr = chainSysEnter.leave(r.enter)
		r.closeOwn()
		r.armst.mu.Unlock()
		closeAll(r.links)
		r.links = nil
		r.drain()
		deliverLossesWith(r.sink, event.ProbeSysfs, r.objs.Maps["losses"], r.objs, r.skips())
		r.undecodable(r.sink, event.ProbeSysfs)
		r.close()
	})
	return r.stopErr
}

func (r *sysfsRunning) closeOwn() {
	if r.ownClose != nil {
		r.ownClose()
		r.ownClose = nil
	}
}

func (r *sysfsRunning) close() {
	chainSysEnter.leave(r.enter)
	r.closeOwn()
	closeAll(r.links)
	if r.objs != nil {
		r.objs.Close()
	}
}

// parseSysfsBlockPath finds the block device and the attribute below it in
// a sysfs path:
//
//	/sys/block/sda/queue/nr_requests                  -> sda, queue/nr_requests
//	/sys/devices/virtual/block/loop0/queue/scheduler  -> loop0, queue/scheduler
//	/sys/class/block/sda/queue/scheduler              -> sda, queue/scheduler
//	/sys/block/sda/sda1/uevent                        -> sda, sda1/uevent
//	/sys/dev/block/8:0/queue/scheduler                -> 8:0, queue/scheduler
//
// The device is the whole disk when the path shows it; a MAJ:MIN or a
// partition named directly (/sys/class/block/sda1) is left to
// resolveSysfsDevice. ok is false for paths outside block devices and for
// the device directory itself.
func parseSysfsBlockPath(p string) (dev, attr string, ok bool) {
	if !strings.HasPrefix(p, "/sys/") {
		return "", "", false
	}
	c := strings.Split(strings.TrimPrefix(path.Clean(p), "/sys/"), "/")
	var rest []string
	switch {
	case len(c) >= 2 && c[0] == "block":
		rest = c[1:]
	case len(c) >= 3 && (c[0] == "class" || c[0] == "dev") && c[1] == "block":
		rest = c[2:]
	case len(c) >= 2 && c[0] == "devices":
		for i := 1; i < len(c)-1; i++ {
			if c[i] == "block" {
				rest = c[i+1:]
				break
			}
		}
	}
	if len(rest) < 2 || rest[0] == "" {
		return "", "", false
	}
	return rest[0], strings.Join(rest[1:], "/"), true
}

// resolveSysfsDevice turns a MAJ:MIN or a partition name from
// parseSysfsBlockPath into the whole disk's name, looking in sysfs; a
// partition's attribute is then prefixed with the partition's directory,
// as in /sys/block/<disk>/<part>/<attr>. Unknown names are kept.
func resolveSysfsDevice(sysfs, dev, attr string) (string, string) {
	if sysfs == "" {
		sysfs = "/sys"
	}
	var real string
	var err error
	if strings.Contains(dev, ":") {
		real, err = filepath.EvalSymlinks(filepath.Join(sysfs, "dev", "block", dev))
	} else {
		real, err = filepath.EvalSymlinks(filepath.Join(sysfs, "class", "block", dev))
	}
	if err != nil {
		return dev, attr
	}
	name := filepath.Base(real)
	if _, err := os.Stat(filepath.Join(real, "partition")); err == nil {
		return filepath.Base(filepath.Dir(real)), name + "/" + attr
	}
	return name, attr
}

// blockAttrs are writable block device attributes outside queue/ whose
// writes matter: they reconfigure the device or trigger uevents.
var blockAttrs = map[string]bool{
	"uevent":             true,
	"events_poll_msecs":  true,
	"bdi/read_ahead_kb":  true,
	"bdi/min_ratio":      true,
	"bdi/max_ratio":      true,
	"bdi/min_bytes":      true,
	"bdi/max_bytes":      true,
	"bdi/strict_limit":   true,
	"device/queue_depth": true,
	"device/timeout":     true,
	"device/eh_timeout":  true,
	"device/rescan":      true,
	"device/delete":      true,
	"device/state":       true,
}

// blockAttrDirs are attribute directories that are all of interest.
var blockAttrDirs = []string{"queue/", "bcache/", "md/", "trace/"}

// isBlockAttr says whether attr (relative to a whole disk, possibly under a
// partition directory) is one whose write the probe reports.
func isBlockAttr(attr string) bool {
	for _, d := range blockAttrDirs {
		if strings.HasPrefix(attr, d) && len(attr) > len(d) {
			return true
		}
	}
	if blockAttrs[attr] {
		return true
	}
	// Below a partition directory: sda1/uevent.
	if _, a, ok := strings.Cut(attr, "/"); ok && (blockAttrs[a] || a == "uevent") {
		return true
	}
	return false
}

// armRank implements armable: it follows the syscall probe on sys_enter.
func (r *sysfsRunning) armRank() int { return rankSysfsOrOffCPU }

// disarm takes sysfs_sys_enter off sys_enter: in the syscall probe's slot
// it stays there (that probe, disarmed first, runs it no more); else it
// leaves the chain, or its syscall tracepoints (handlers on sys_enter
// too) are detached. Opens of sysfs files meanwhile are not seen.
func (r *sysfsRunning) disarm() error {
	r.armst.mu.Lock()
	defer r.armst.mu.Unlock()
	if r.armst.stopped || r.armst.disarmedNow() {
		return nil
	}
	r.armst.markDisarmed()
	if r.enter != nil && chainSysEnter.inSlot(r.enter) {
		return nil // run by the syscall probe's program, disarmed first
	}
	var err error
	if r.enter != nil {
		err = chainSysEnter.leave(r.enter)
		r.armst.keepSkips(r.enter.prog, r.enter.inherited)
		r.enter = nil
	}
	r.closeOwn()
	return err
}

// arm puts back what disarm took off.
func (r *sysfsRunning) arm() error {
	r.armst.mu.Lock()
	defer r.armst.mu.Unlock()
	if r.armst.stopped || !r.armst.disarmedNow() {
		return nil
	}
	switch {
	case r.enter != nil: // kept in its slot
	case r.join != nil:
		m, err := r.join()
		if err != nil {
			return err
		}
		r.enter = m
	case r.own != nil:
		cl, err := r.own()
		if err != nil {
			return err
		}
		r.ownClose = cl
	}
	r.armst.markArmed()
	return nil
}
