package probes

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"

	"github.com/whyslow/whyslow/internal/event"
)

// The per-process I/O accounting of the submit probe (bpf/submit.bpf.c,
// io_use): a per-CPU table of each submitter's completed bios per device,
// cgroup and kind, swapped for a fresh one every ioUseSwapEvery and added
// up here (ioUseSums), read at each checkpoint and when the probe stops.

// Flags of a bio: enum io_flag of submit.bpf.c (bpf2go emits its twin).
const (
	ioSync     = uint8(submitIoFlagIO_SYNC)
	ioFUA      = uint8(submitIoFlagIO_FUA)
	ioPreflush = uint8(submitIoFlagIO_PREFLUSH)
	ioEmpty    = uint8(submitIoFlagIO_EMPTY)
)

// ioUseBudget bounds the memory of the io_use table: it is preallocated
// on every CPU, so hosts with many CPUs get fewer entries per CPU (each
// CPU's table only holds the submitters whose bios completed there).
const ioUseBudget = 8 << 20

// ioUseBits is log2 of the io_use entries per CPU for a host with cpus
// CPUs and entries of size bytes: within ioUseBudget, between 2^8 and 2^12.
func ioUseBits(size uint32, cpus int) uint32 {
	n := uint64(ioUseBudget) / (uint64(max(size, 1)) * uint64(max(cpus, 1)))
	bits := uint32(8)
	for bits < 12 && uint64(1)<<(bits+1) <= n {
		bits++
	}
	return bits
}

// ioUseBitsFixed, when not 0, sizes the io_use table instead of the
// host's CPUs (tests: a small table whatever the host).
var ioUseBitsFixed uint32

// sizeIOUse fits the io_use table of a spec (the inner map of io_use) to
// this machine's CPUs and returns log2 of its entries, for io_use_bits.
func sizeIOUse(spec *ebpf.CollectionSpec) uint32 {
	outer, ok := spec.Maps["io_use"]
	if !ok || outer.InnerMap == nil {
		return 0
	}
	m := outer.InnerMap
	cpus, err := ebpf.PossibleCPU()
	if err != nil || cpus < 1 {
		cpus = runtime.NumCPU()
	}
	bits := ioUseBits(m.ValueSize, cpus)
	if ioUseBitsFixed != 0 {
		bits = ioUseBitsFixed
	}
	m.MaxEntries = 1 << bits
	return bits
}

// ioUseKey is what the entries of io_use are added up by.
type ioUseKey struct {
	tgid, dev uint32
	cgroup    uint64
	op, flags uint8
}

// ioUseSwapEvery is how often the io_use table in use is swapped for a
// fresh one and added up (ioUseSums.swap): the table holds the submitters
// of one such interval only.
var ioUseSwapEvery = time.Second

// ioUseMaxKeys bounds the keys (process x device x cgroup x kind) the
// sums hold: those of the running processes, and of the exited ones until
// a checkpoint delivered them and Prune removed them (serve; a one-shot
// run keeps every key until it stops). The bios of a key beyond are
// counted lost. Some 180 bytes each.
const ioUseMaxKeys = 1 << 16

// ioUseSums is the I/O accounting of the submit probe in user space: the
// table in use (the only entry of the io_use map of maps), and the sums
// of the tables swapped out of it, whole since the probe started.
type ioUseSums struct {
	mu    sync.Mutex // serializes swaps, reads and prunes
	outer *ebpf.Map
	spec  *ebpf.MapSpec // of a table
	cur   *ebpf.Map     // the table in use
	// spare is the table swapped out last, read and zeroed: the next one
	// put in use (nil when it could not be zeroed: a new one is made).
	spare *ebpf.Map
	rd    ioUseReader
	sums  map[ioUseKey]*submitIoUse
	// read are the sums as the last checkpoint delivered them: what Prune
	// may remove.
	read map[ioUseKey]submitIoUse
	// over counts the bios of keys not kept (ioUseMaxKeys).
	over uint64
}

// newIOUseSums creates a table of spec and puts it in outer, which close
// closes (the caller's, on error).
func newIOUseSums(outer *ebpf.Map, spec *ebpf.MapSpec) (*ioUseSums, error) {
	u := &ioUseSums{outer: outer, spec: spec, sums: map[ioUseKey]*submitIoUse{}}
	cur, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, fmt.Errorf("creating the I/O accounting table: %w", err)
	}
	if err := outer.Put(uint32(0), cur); err != nil {
		cur.Close()
		return nil, fmt.Errorf("putting the I/O accounting table in use: %w", err)
	}
	u.cur = cur
	return u, nil
}

// swap puts a fresh table in use and adds the old one to the sums. Put
// returns once no program can still write the old table (the kernel waits
// for the running programs when an entry of a map of maps changes), so the
// old one is read whole. The old one, zeroed, is the next fresh one: two
// tables serve the whole run. When no fresh table can be had, the one in
// use stays (and fills, its misses counted).
func (u *ioUseSums) swap() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.swapLocked()
}

func (u *ioUseSums) swapLocked() error {
	fresh := u.spare
	u.spare = nil
	if fresh == nil {
		var err error
		if fresh, err = ebpf.NewMap(u.spec); err != nil {
			return fmt.Errorf("creating an I/O accounting table: %w", err)
		}
	}
	if err := u.outer.Put(uint32(0), fresh); err != nil {
		fresh.Close()
		return fmt.Errorf("swapping the I/O accounting table: %w", err)
	}
	old := u.cur
	u.cur = fresh
	if err := u.rd.read(old, u.add); err != nil {
		old.Close()
		return err
	}
	if u.rd.zero(old) == nil {
		u.spare = old
	} else {
		old.Close()
	}
	return nil
}

// add adds one CPU's entry of a table to the sums.
func (u *ioUseSums) add(e *submitIoUse) {
	key := ioUseKey{e.Tgid, e.Dev, e.Cgroup, e.Op, e.Flags}
	sum := u.sums[key]
	if sum == nil {
		if len(u.sums) >= ioUseMaxKeys {
			u.over += e.Ios
			return
		}
		c := *e
		u.sums[key] = &c
		return
	}
	sum.Ios += e.Ios
	sum.Requests += e.Requests
	sum.Bytes += e.Bytes
	sum.InflightNs += e.InflightNs
	if sum.Comm[0] == 0 {
		sum.Comm = e.Comm
	}
}

// snapshot swaps the table, and returns a copy of the sums, noted as
// read (for Prune), and the bios lost to the bound so far.
func (u *ioUseSums) snapshot() (map[ioUseKey]*submitIoUse, uint64, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	err := u.swapLocked()
	out := make(map[ioUseKey]*submitIoUse, len(u.sums))
	u.read = make(map[ioUseKey]submitIoUse, len(u.sums))
	for k, v := range u.sums {
		c := *v
		out[k] = &c
		u.read[k] = c
	}
	return out, u.over, err
}

// prune removes the sums of the processes gone (gone) that have not
// changed since the last snapshot delivered them, and returns the
// processes whose every sum it removed. A late completion of a process
// gone, after it, is counted anew.
func (u *ioUseSums) prune(gone func(tgid uint32) bool) []uint32 {
	u.mu.Lock()
	defer u.mu.Unlock()
	kept := map[uint32]bool{}
	removed := map[uint32]bool{}
	for k, v := range u.read {
		if !gone(k.tgid) {
			continue
		}
		if now, ok := u.sums[k]; ok && *now != v {
			kept[k.tgid] = true // a late completion since: delivered next time
			continue
		}
		delete(u.sums, k)
		removed[k.tgid] = true
	}
	u.read = nil
	// A key of a removed process read after the snapshot: not all its sums went.
	for k := range u.sums {
		if removed[k.tgid] {
			kept[k.tgid] = true
		}
	}
	var out []uint32
	for tgid := range removed {
		if !kept[tgid] {
			out = append(out, tgid)
		}
	}
	slices.Sort(out)
	return out
}

// close frees the tables and closes outer.
func (u *ioUseSums) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, m := range []**ebpf.Map{&u.cur, &u.spare, &u.outer} {
		if *m != nil {
			(*m).Close()
			*m = nil
		}
	}
}

// ioUseBatch is how many entries of a table one batch lookup reads.
const ioUseBatch = 256

// ioUseReader reads io_use tables; its buffers serve every read.
type ioUseReader struct {
	keys []uint32
	vals []submitIoUse
	// used are the indexes of the entries the last read found used on
	// some CPU: what zero clears.
	used []uint32
	none []submitIoUse // a zero entry on every CPU
}

// read calls add with every CPU's used entry of table m, in batches where
// the kernel can (5.6+), else one entry at a time.
func (rd *ioUseReader) read(m *ebpf.Map, add func(*submitIoUse)) error {
	n := int(m.MaxEntries())
	rd.used = rd.used[:0]
	cpus, err := ebpf.PossibleCPU()
	if err == nil && n > 0 {
		if rd.keys == nil {
			rd.keys = make([]uint32, min(n, ioUseBatch))
			rd.vals = make([]submitIoUse, len(rd.keys)*cpus)
		}
		var cursor ebpf.MapBatchCursor
		total := 0
		for {
			got, err := m.BatchLookup(&cursor, rd.keys, rd.vals, nil)
			if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				if total == 0 {
					break // no batches here: one at a time
				}
				return fmt.Errorf("reading the I/O accounting: %w", err)
			}
			rd.addUsed(rd.keys[:got], rd.vals[:got*cpus], cpus, add)
			total += got
			if err != nil || got == 0 {
				if total == n {
					return nil
				}
				return fmt.Errorf("reading the I/O accounting: %d of %d entries", total, n)
			}
		}
	}
	var (
		k    uint32
		vals []submitIoUse
	)
	it := m.Iterate()
	for it.Next(&k, &vals) {
		rd.addUsed([]uint32{k}, vals, len(vals), add)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading the I/O accounting: %w", err)
	}
	return nil
}

// addUsed adds the used entries of vals (cpus per key) and notes their keys.
func (rd *ioUseReader) addUsed(keys []uint32, vals []submitIoUse, cpus int, add func(*submitIoUse)) {
	for i, k := range keys {
		used := false
		for c := range cpus {
			if v := &vals[i*cpus+c]; v.Used != 0 {
				used = true
				if v.Ios != 0 {
					add(v)
				}
			}
		}
		if used {
			rd.used = append(rd.used, k)
		}
	}
}

// zero clears the entries of m the last read found used, on every CPU.
func (rd *ioUseReader) zero(m *ebpf.Map) error {
	if len(rd.used) == 0 {
		return nil
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	if len(rd.none) != cpus {
		rd.none = make([]submitIoUse, cpus)
	}
	for _, k := range rd.used {
		if err := m.Update(k, rd.none, ebpf.UpdateExist); err != nil {
			return fmt.Errorf("zeroing the I/O accounting table: %w", err)
		}
	}
	return nil
}

// ioUsageEvents turns the table into events, in a stable order: by
// device, process, cgroup, op, then the rest of the key. Cgroups are named
// from the cgroup hierarchy under procfs's mounts, kernel threads from
// /proc/PID/stat, devices from names or sysfs.
func ioUsageEvents(use map[ioUseKey]*submitIoUse, ops *opDecoder, names map[uint32]string, procfs, sysfs string, at event.Mono) []event.IOUsage {
	cgroups := map[uint64]bool{}
	tgids := map[uint32]bool{}
	for k := range use {
		cgroups[k.cgroup] = true
		tgids[k.tgid] = true
	}
	paths := cgroupPaths(procfs, cgroups)
	kthreads := map[uint32]bool{}
	for tgid := range tgids {
		kthreads[tgid] = isKthread(procfs, tgid)
	}
	devNames := map[uint32]string{}
	keys := make([]ioUseKey, 0, len(use))
	for k := range use {
		keys = append(keys, k)
		if _, ok := devNames[k.dev]; !ok {
			name := names[k.dev]
			if name == "" {
				major, minor := kernelDev(k.dev)
				name = blockDevName(sysfs, major, minor)
			}
			devNames[k.dev] = name
		}
	}
	type kind struct {
		tgid, dev uint32
		cgroup    uint64
		op        string
		sync      bool
	}
	byKind := map[kind]int{}
	out := make([]event.IOUsage, 0, len(keys))
	for _, k := range keys {
		u := use[k]
		major, minor := kernelDev(k.dev)
		op, sync := ops.ioKind(k.op, k.flags)
		inflight := time.Duration(min(u.InflightNs, 1<<63-1))
		// Keys that differ only in flags that name the same kind add up.
		if i, ok := byKind[kind{k.tgid, k.dev, k.cgroup, op, sync}]; ok {
			e := &out[i]
			e.IOs += u.Ios
			e.Requests += u.Requests
			e.Bytes += u.Bytes
			e.InFlight = min(e.InFlight+inflight, 1<<63-1)
			if e.Task.Comm == "" {
				e.Task.Comm = cString(u.Comm[:])
			}
			continue
		}
		byKind[kind{k.tgid, k.dev, k.cgroup, op, sync}] = len(out)
		out = append(out, event.IOUsage{
			Time:     at,
			Task:     event.Task{Pid: k.tgid, Tgid: k.tgid, Comm: cString(u.Comm[:])},
			Kthread:  kthreads[k.tgid],
			Cgroup:   paths[k.cgroup],
			CgroupID: k.cgroup,
			Dev:      event.Device{Major: major, Minor: minor, Name: devNames[k.dev]},
			Op:       op,
			Sync:     sync,
			IOs:      u.Ios,
			Requests: u.Requests,
			Bytes:    u.Bytes,
			InFlight: inflight,
		})
	}
	for i := range out {
		out[i].Task.Comm = commOf(out[i].Task.Pid, out[i].Task.Comm)
	}
	slices.SortFunc(out, func(a, b event.IOUsage) int {
		return cmp.Or(cmp.Compare(a.Dev.Major, b.Dev.Major), cmp.Compare(a.Dev.Minor, b.Dev.Minor),
			cmp.Compare(a.Task.Tgid, b.Task.Tgid), cmp.Compare(a.CgroupID, b.CgroupID),
			cmp.Compare(a.Op, b.Op), cmp.Compare(boolInt(a.Sync), boolInt(b.Sync)))
	})
	return out
}

// ioKind names a bio's kind from its operation and io_flag bits: what the
// kernel's op_is_sync and op_is_flush say.
func (d *opDecoder) ioKind(op, flags uint8) (kind string, sync bool) {
	switch d.ops[uint32(op)] {
	case "R":
		return "read", true
	case "W":
		sync = flags&(ioSync|ioFUA|ioPreflush) != 0
		if flags&ioPreflush != 0 && flags&ioEmpty != 0 {
			return "flush", sync
		}
		return "write", sync
	case "F":
		return "flush", true
	case "D", "DE":
		return "discard", flags&ioSync != 0
	}
	return "other", flags&ioSync != 0
}

// reqFlagMasks are the bi_opf bits submit.bpf.c reads (req_sync, req_fua,
// req_preflush), from the kernel's BTF.
func (d *opDecoder) reqFlagMasks() map[string]any {
	return map[string]any{"req_sync": d.syn, "req_fua": d.fua, "req_preflush": d.preflush}
}

// cgroupPaths names the cgroups of ids (kernfs ids, the inode numbers of
// their directories) by their path in the hierarchy of the block I/O
// controller: cgroup v1's blkio when it is mounted (the controller is
// bound there), else the unified (v2) hierarchy. "/" is the root; ids not
// found (the cgroup is gone) are left out.
func cgroupPaths(procfs string, ids map[uint64]bool) map[uint64]string {
	out := map[uint64]string{}
	if len(ids) == 0 {
		return out
	}
	root := ioCgroupRoot(procfs)
	if root == "" {
		return out
	}
	left := 0
	for id := range ids {
		if id != 0 {
			left++
		}
	}
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok || !ids[st.Ino] {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return nil
		}
		if _, seen := out[st.Ino]; !seen {
			out[st.Ino] = filepath.Clean("/" + rel)
			if left--; left == 0 {
				return filepath.SkipAll
			}
		}
		return nil
	})
	return out
}

// ioCgroupRoot is the mount point of the cgroup hierarchy of the block
// I/O controller, from procfs's self/mountinfo: a cgroup v1 mount with the
// blkio option, else a cgroup2 mount; "" when there is neither.
func ioCgroupRoot(procfs string) string {
	if procfs == "" {
		procfs = "/proc"
	}
	v1, v2, _ := ioHierarchies(filepath.Join(procfs, "self", "mountinfo"))
	if v1 != "" {
		return v1
	}
	return v2
}

// pfKthread is PF_KTHREAD of task_struct.flags.
const pfKthread = 0x00200000

// isKthread reports whether process pid is a kernel thread, from the
// flags of procfs/PID/stat; false when it is gone.
func isKthread(procfs string, pid uint32) bool {
	if procfs == "" {
		procfs = "/proc"
	}
	_, f, ok := readStat(filepath.Join(procfs, strconv.FormatUint(uint64(pid), 10), "stat"))
	// After "(comm)": state ppid pgrp session tty_nr tpgid flags.
	if !ok || len(f) < 7 {
		return false
	}
	flags, err := strconv.ParseUint(f[6], 10, 64)
	return err == nil && flags&pfKthread != 0
}
