package probes

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/symbolize"
)

// hungSince finds, in /proc, the threads asleep uninterruptibly (state D)
// inside a storage call that the syscall probe did not see begin (not in
// seen): calls that were in the kernel when the probe started, and have
// not returned since. The probe counts a call from its entry, so without
// this a process hung in a read for the whole run would be seen nowhere.
// Their time in the call is counted from the probe's start (at least that
// much), their kernel stack read from /proc/PID/task/TID/stack. Every
// thread of the host is looked at once, at the first read (a line or two
// each): a call begun after the probe started is the BPF side's, so the
// threads in a storage call then are the only ones to look at again, until
// they leave it (under sums).
func (r *syscallRunning) hungSince(now event.Mono, seen map[uint32]bool) []event.UnfinishedCall {
	if r.preexisting == nil {
		r.preexisting = map[uint32]int{}
		procThreads(r.procfs, func(tdir string, tgid, tid int) {
			if nr, _, ok := taskSyscall(tdir); ok && syscallName(nr) != "" {
				r.preexisting[uint32(tid)] = tgid
			}
		})
	}
	if now <= r.began || time.Duration(now-r.began) < r.cfg.MinLatency {
		return nil
	}
	var out []event.UnfinishedCall
	for tid, tgid := range r.preexisting {
		if seen[tid] {
			delete(r.preexisting, tid) // in a call the probe saw begin: it left the one before
			continue
		}
		tdir := filepath.Join(r.procfs, strconv.Itoa(tgid), "task", strconv.FormatUint(uint64(tid), 10))
		nr, args, ok := taskSyscall(tdir)
		if !ok || syscallName(nr) == "" {
			delete(r.preexisting, tid) // gone, or out of its call
			continue
		}
		comm, state := taskState(tdir)
		if state != 'D' {
			continue
		}
		dev, ok := r.callDevFromProc(tgid, nr, args)
		if !ok {
			continue
		}
		var f syscallScInflight
		if r.coll.Maps["inflight"].Lookup(tid, &f) == nil {
			// A call the probe saw begin, whose first sleep came after
			// the map was read: not one from before the probe.
			continue
		}
		in := time.Duration(now - r.began)
		out = append(out, event.UnfinishedCall{
			Time: now, Start: r.began, Task: event.Task{Pid: tid, Tgid: uint32(tgid), Comm: comm},
			Call: syscallName(nr), Dev: dev, InCall: in, Asleep: in, KernelStack: procStack(tdir), Before: true,
		})
	}
	return out
}

// taskState reads a thread's name and state letter from its stat.
func taskState(tdir string) (comm string, state byte) {
	comm, f, ok := readStat(filepath.Join(tdir, "stat"))
	if !ok || len(f) == 0 || f[0] == "" {
		return "", 0
	}
	return comm, f[0][0]
}

// readStat reads a /proc stat file: the name between its parentheses and
// the fields after them, the state first.
func readStat(path string) (comm string, fields []string, ok bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", nil, false
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return "", nil, false
	}
	return s[open+1 : end], strings.Fields(s[end+1:]), true
}

// taskSyscall reads the system call a blocked thread is in, and its first
// three arguments, from /proc/PID/task/TID/syscall ("nr a0 a1 ... sp pc").
func taskSyscall(tdir string) (nr uint32, args [3]uint64, ok bool) {
	b, err := os.ReadFile(filepath.Join(tdir, "syscall"))
	if err != nil {
		return 0, args, false
	}
	f := strings.Fields(string(b))
	if len(f) < 4 {
		return 0, args, false // "running", or "-1 sp pc": not in a call
	}
	n, err := strconv.ParseUint(f[0], 10, 32)
	if err != nil {
		return 0, args, false
	}
	for i := range args {
		args[i], _ = strconv.ParseUint(strings.TrimPrefix(f[i+1], "0x"), 16, 64)
	}
	return uint32(n), args, true
}

// callDevFromProc is the device a storage call in progress goes to, found
// from its file descriptor in /proc (as call_dev finds it in the kernel):
// a block device file's, or its filesystem's; every device for sync. The
// calls whose device is not in a descriptor (msync, io_getevents on an
// aio context, io_uring_enter) are left out.
func (r *syscallRunning) callDevFromProc(tgid int, nr uint32, args [3]uint64) (event.Device, bool) {
	switch nr {
	case uint32(syscallStorageNrNR_SYNC):
		return event.DevAll, true
	case uint32(syscallStorageNrNR_MSYNC), uint32(syscallStorageNrNR_IO_GETEVENTS), uint32(syscallStorageNrNR_IO_PGETEVENTS),
		uint32(syscallStorageNrNR_IO_URING_ENTER), uint32(syscallStorageNrNR_IO_SUBMIT):
		return event.Device{}, false
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(r.procfs, strconv.Itoa(tgid), "fd", strconv.FormatUint(args[0], 10)), &st); err != nil {
		return event.Device{}, false
	}
	dev := st.Dev
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFBLK:
		dev = st.Rdev
	case syscall.S_IFREG, syscall.S_IFDIR:
	default:
		return event.Device{}, false
	}
	major, minor := unix.Major(dev), unix.Minor(dev)
	if major == 0 {
		return event.Device{}, false // no block device under it (tmpfs, proc, ...)
	}
	return r.device(major<<20 | minor), true
}

// procStack reads a thread's kernel stack from /proc (root only): the
// function names, innermost first; nil when unreadable.
func procStack(tdir string) []event.Frame {
	f, err := os.Open(filepath.Join(tdir, "stack"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []event.Frame
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "[<0>] blk_io_schedule+0x19/0x40"
		l := sc.Text()
		if i := strings.IndexByte(l, ']'); i >= 0 {
			l = l[i+1:]
		}
		l = strings.TrimSpace(l)
		if i := strings.IndexByte(l, '+'); i >= 0 {
			l = l[:i]
		}
		if l != "" {
			out = append(out, event.Frame{Symbol: l, Module: symbolize.KernelModule})
		}
	}
	return out
}
