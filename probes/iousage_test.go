package probes

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/scenario"
)

// ioHelperEnv makes the test binary, run again, an I/O helper process
// instead of the tests (see runIOHelper): the accounting test needs other
// processes, in a cgroup of their own, under names of their own.
const ioHelperEnv = "WHYSLOW_PROBES_IO_HELPER"

func init() {
	if spec := os.Getenv(ioHelperEnv); spec != "" {
		if err := runIOHelper(spec); err != nil {
			fmt.Fprintln(os.Stderr, "io helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// runIOHelper does what spec says, "write PATH N" (N 4 KiB O_DIRECT writes
// at the start of PATH, then one fdatasync) or "read PATH N" (N 64 KiB
// O_DIRECT reads).
func runIOHelper(spec string) error {
	f := strings.Fields(spec)
	if len(f) != 3 {
		return fmt.Errorf("bad spec %q", spec)
	}
	n, err := strconv.Atoi(f[2])
	if err != nil {
		return err
	}
	flags, size := unix.O_RDONLY, 64<<10
	if f[0] == "write" {
		flags, size = unix.O_WRONLY, 4096
	}
	d, err := openDirect(f[1], flags, size)
	if err != nil {
		return err
	}
	defer d.Close()
	for i := 0; i < n; i++ {
		off := int64(i) * int64(size)
		if f[0] == "write" {
			_, err = unix.Pwrite(d.fd, d.buf, off)
		} else {
			_, err = unix.Pread(d.fd, d.buf, off)
		}
		if err != nil {
			return err
		}
	}
	if f[0] == "write" {
		return unix.Fdatasync(d.fd)
	}
	return nil
}

// runHelper runs the test binary as an I/O helper named name (a link to
// it), in cgroup cg when not nil, and returns its pid once it is done.
func runHelper(t *testing.T, name string, cg *scenario.Cgroup, spec string) int {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), name)
	if err := os.Symlink(self, link); err != nil {
		t.Fatal(err)
	}
	argv := []string{link}
	if cg != nil {
		argv = cg.Command(argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), ioHelperEnv+"="+spec)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s (%s): %v\n%s", name, spec, err, out)
	}
	return cmd.Process.Pid
}

// Each process's bios on a device are counted for it, under its name and
// its cgroup: a writer in a cgroup of its own and a reader in the test's.
func TestSubmitIOUsage(t *testing.T) {
	blkNeedRoot(t)
	const size = 64 << 20
	loop := newBlkLoop(t, size)
	cg := scenario.IOCgroup(t, "acct")
	sink, r := startSubmitProbe(t, time.Hour)

	const writes, reads = 300, 50
	wpid := runHelper(t, "acct-writer", cg, fmt.Sprintf("write %s %d", loop.path, writes))
	rpid := runHelper(t, "acct-reader", nil, fmt.Sprintf("read %s %d", loop.path, reads))
	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	for _, l := range sink.losses {
		t.Logf("loss: %+v", l)
	}

	byKind := map[string]event.IOUsage{}
	for _, e := range sink.events {
		u, ok := e.(event.IOUsage)
		if !ok {
			continue
		}
		t.Logf("%+v", u)
		if u.Dev.Name != loop.name {
			continue
		}
		if u.Dev.Major != loop.major || u.Dev.Minor != loop.minor {
			t.Errorf("device %s, want %d:%d", u.Dev.ID(), loop.major, loop.minor)
		}
		if u.Task.Tgid == uint32(wpid) || u.Task.Tgid == uint32(rpid) {
			byKind[u.Task.Comm+" "+u.Op] = u
		}
	}
	w, ok := byKind["acct-writer write"]
	if !ok {
		t.Fatalf("no writes counted for acct-writer (pid %d) on %s: %v", wpid, loop.name, byKind)
	}
	if w.IOs != writes || w.Bytes != writes*4096 || !w.Sync {
		t.Errorf("writer: %d sync=%v writes of %d bytes, want %d sync writes of %d", w.IOs, w.Sync, w.Bytes, writes, writes*4096)
	}
	if w.Requests == 0 || w.Requests > w.IOs {
		t.Errorf("writer: %d requests for %d bios", w.Requests, w.IOs)
	}
	if w.InFlight <= 0 || w.InFlight > time.Duration(w.IOs)*time.Second {
		t.Errorf("writer: time in flight %v for %d writes", w.InFlight, w.IOs)
	}
	if w.Cgroup != cg.Path || w.CgroupID == 0 {
		t.Errorf("writer: cgroup %q (id %d), want %q", w.Cgroup, w.CgroupID, cg.Path)
	}
	if w.Kthread {
		t.Error("writer counted as a kernel thread")
	}
	if fl, ok := byKind["acct-writer flush"]; !ok || fl.IOs == 0 || fl.Bytes != 0 {
		t.Errorf("writer: its fdatasync's flush not counted as one: %+v (found %v)", fl, ok)
	}
	rd, ok := byKind["acct-reader read"]
	if !ok {
		t.Fatalf("no reads counted for acct-reader (pid %d) on %s: %v", rpid, loop.name, byKind)
	}
	if rd.IOs < reads || rd.Bytes != reads*64<<10 || !rd.Sync {
		t.Errorf("reader: %d reads of %d bytes (sync %v), want >= %d reads of %d", rd.IOs, rd.Bytes, rd.Sync, reads, reads*64<<10)
	}
	if rd.Cgroup == cg.Path || rd.Cgroup == "" {
		t.Errorf("reader: cgroup %q, want the test's own", rd.Cgroup)
	}
	assertProgsUnloaded(t, submitProgNames...)
}

func TestIOKind(t *testing.T) {
	d := newOpDecoder(nil) // 6.x numbering: READ 0, WRITE 1, FLUSH 2, DISCARD 3
	tests := []struct {
		op, flags uint8
		kind      string
		sync      bool
	}{
		{0, 0, "read", true},
		{1, 0, "write", false},
		{1, ioSync, "write", true},
		{1, ioFUA, "write", true},
		{1, ioPreflush, "write", true},
		{1, ioPreflush | ioEmpty | ioSync, "flush", true},
		{1, ioEmpty, "write", false},
		{2, 0, "flush", true},
		{3, 0, "discard", false},
		{9, 0, "other", false},
	}
	for _, tt := range tests {
		if kind, sync := d.ioKind(tt.op, tt.flags); kind != tt.kind || sync != tt.sync {
			t.Errorf("ioKind(%d, %#x) = %s, %v; want %s, %v", tt.op, tt.flags, kind, sync, tt.kind, tt.sync)
		}
	}
}

func TestIOUseBits(t *testing.T) {
	for _, tt := range []struct {
		cpus int
		want uint32
	}{{1, 12}, {2, 12}, {16, 12}, {64, 10}, {256, 8}, {4096, 8}} {
		if got := ioUseBits(72, tt.cpus); got != tt.want {
			t.Errorf("ioUseBits(72, %d) = %d, want %d", tt.cpus, got, tt.want)
		}
	}
}

// cgroupPaths names cgroups by the inode of their directory in the
// hierarchy mountinfo says holds the block I/O controller.
func TestCgroupPaths(t *testing.T) {
	proc := t.TempDir()
	v1, v2 := t.TempDir(), t.TempDir()
	for _, d := range []string{"a/b", "c"} {
		for _, root := range []string{v1, v2} {
			if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	ino := func(p string) uint64 {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	mountinfo := func(lines ...string) {
		if err := os.MkdirAll(filepath.Join(proc, "self"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(proc, "self", "mountinfo"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	v2line := "35 25 0:30 / " + v2 + " rw,relatime shared:9 - cgroup2 cgroup2 rw"
	v1line := "36 25 0:31 / " + v1 + " rw,relatime shared:10 - cgroup cgroup rw,blkio"
	other := "37 25 0:32 / /x rw - cgroup cgroup rw,memory"

	mountinfo(v2line, other)
	ids := map[uint64]bool{ino(filepath.Join(v2, "a/b")): true, ino(v2): true, 12345678: true}
	got := cgroupPaths(proc, ids)
	if got[ino(filepath.Join(v2, "a/b"))] != "/a/b" || got[ino(v2)] != "/" || len(got) != 2 {
		t.Errorf("v2: %v", got)
	}

	mountinfo(v2line, other, v1line)
	got = cgroupPaths(proc, map[uint64]bool{ino(filepath.Join(v1, "c")): true})
	if got[ino(filepath.Join(v1, "c"))] != "/c" {
		t.Errorf("v1 blkio: %v", got)
	}

	mountinfo(other)
	if got := cgroupPaths(proc, map[uint64]bool{1: true}); len(got) != 0 {
		t.Errorf("no hierarchy: %v", got)
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/plain`: "/plain", `/x\134y`: `/x\y`, `/bad\09`: `/bad\09`} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestIsKthread(t *testing.T) {
	proc := t.TempDir()
	write := func(pid, stat string) {
		if err := os.MkdirAll(filepath.Join(proc, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(proc, pid, "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("7", "7 (kworker/u4:1-events) I 2 0 0 0 -1 69238880 0 0")
	write("8", "8 (my (odd) name) S 1 8 8 0 -1 4194560 0 0")
	if !isKthread(proc, 7) {
		t.Error("kworker not a kernel thread")
	}
	if isKthread(proc, 8) || isKthread(proc, 9) {
		t.Error("a process, or a gone one, taken for a kernel thread")
	}
	if !isKthread("/proc", 2) {
		t.Error("kthreadd (pid 2) is not a kernel thread in /proc")
	}
}

// The table swapped out is read in batches, then only its used entries are
// zeroed, so that it can be put in use again: a second read finds nothing,
// and the sums are those written, on every CPU.
func TestIOUseReaderReadsAndZeroes(t *testing.T) {
	if testing.Short() {
		scenario.Skip(t, "skipped with -short: creates a BPF map")
	}
	scenario.RequireRoot(t)
	spec, err := loadSubmit()
	if err != nil {
		t.Fatal(err)
	}
	ms := spec.Maps["io_use"].InnerMap.Copy()
	ms.MaxEntries = 3*ioUseBatch + 5 // several batches, the last one short
	m, err := ebpf.NewMap(ms)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	keys := []uint32{0, 7, ioUseBatch, 3*ioUseBatch + 4}
	for i, k := range keys {
		vals := make([]submitIoUse, cpus)
		c := i % cpus
		vals[c] = submitIoUse{Tgid: 100 + uint32(i), Used: 1, Ios: uint64(i + 1), Bytes: 4096}
		if err := m.Put(k, vals); err != nil {
			t.Fatal(err)
		}
	}
	var rd ioUseReader
	var got []submitIoUse
	if err := rd.read(m, func(e *submitIoUse) { got = append(got, *e) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(keys) {
		t.Fatalf("read %d used entries, want %d: %+v", len(got), len(keys), got)
	}
	for i, e := range got {
		if e.Tgid != 100+uint32(i) || e.Ios != uint64(i+1) {
			t.Errorf("entry %d: tgid %d, %d ios; want tgid %d, %d ios", i, e.Tgid, e.Ios, 100+i, i+1)
		}
	}
	if err := rd.zero(m); err != nil {
		t.Fatal(err)
	}
	got = nil
	if err := rd.read(m, func(e *submitIoUse) { got = append(got, *e) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 || len(rd.used) != 0 {
		t.Errorf("after zero: read %d entries, %d keys used; want none", len(got), len(rd.used))
	}
}

// Bios merged in front of a request's first bio (block_bio_frontmerge
// makes each the request's first) and requests merged into another
// (block_rq_merge: freed without a completion of their own) are counted
// like the others: every bio of the writer, none lost. One io_submit of
// three 4 KiB O_DIRECT writes (io_submit plugs more than two), at offsets
// chosen for the merge: descending (each bio merges in front of the one
// before), or 0, 8k, 4k under mq-deadline (the third bio joins one
// request, which the other then joins when the plug is flushed into the
// scheduler, on kernels whose plug merges into its first request; into
// the last one before 6.13, a front merge). The accounting used to count
// only a request's first bio at its completion: these lost one bio each.
func TestSubmitIOUsageMerges(t *testing.T) {
	blkNeedRoot(t)
	for _, tt := range []struct {
		name    string
		sched   string
		offsets []int64 // in 4 KiB blocks
	}{
		{"front merges", "none", []int64{2, 1, 0}},
		{"request merge", "mq-deadline", []int64{0, 2, 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			loop := newBlkLoop(t, 16<<20)
			schedPath := "/sys/block/" + loop.name + "/queue/scheduler"
			if err := os.WriteFile(schedPath, []byte(tt.sched), 0); err != nil {
				t.Fatalf("setting the scheduler of %s to %s: %v", loop.name, tt.sched, err)
			}
			t.Cleanup(func() { os.WriteFile(schedPath, []byte("none"), 0) })
			// A loop device without direct I/O to its file forbids merges
			// before 6.x (loop sets QUEUE_FLAG_NOMERGES: 5.10's guests,
			// whose tmpfs has no O_DIRECT); the kernel allows them again
			// through queue/nomerges.
			nomergesPath := "/sys/block/" + loop.name + "/queue/nomerges"
			if old, err := os.ReadFile(nomergesPath); err == nil && strings.TrimSpace(string(old)) != "0" {
				if err := os.WriteFile(nomergesPath, []byte("0"), 0); err != nil {
					t.Fatalf("allowing merges on %s: %v", loop.name, err)
				}
				t.Cleanup(func() { os.WriteFile(nomergesPath, old, 0) })
			}
			mergesBefore := writeMerges(t, loop.name)
			sink, r := startSubmitProbe(t, time.Hour)

			d, err := openDirect(loop.path, unix.O_WRONLY, 4096)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			ctx := aioSetup(t)
			const rounds = 20
			for round := 0; round < rounds; round++ {
				cbs := make([]aioIocb, len(tt.offsets))
				ptrs := make([]*aioIocb, len(cbs))
				for i, off := range tt.offsets {
					cbs[i] = aioIocb{Opcode: 1 /* IOCB_CMD_PWRITE */, Fildes: uint32(d.fd), Buf: uint64(uintptr(unsafe.Pointer(&d.buf[0]))),
						Nbytes: 4096, Offset: (int64(round)*8 + off) * 4096}
					ptrs[i] = &cbs[i]
				}
				if n, _, e := unix.Syscall(unix.SYS_IO_SUBMIT, uintptr(ctx), uintptr(len(ptrs)), uintptr(unsafe.Pointer(&ptrs[0]))); e != 0 || int(n) != len(ptrs) {
					t.Fatalf("io_submit: %d, %v", n, e)
				}
				runtime.KeepAlive(ptrs)
				for range ptrs {
					aioWait(t, ctx)
				}
			}
			merges := writeMerges(t, loop.name) - mergesBefore
			if err := r.Stop(); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			var ios, requests uint64
			for _, u := range sinkEvents[event.IOUsage](sink) {
				if u.Dev.Name == loop.name && u.Task.Tgid == uint32(os.Getpid()) {
					ios += u.IOs
					requests += u.Requests
				}
			}
			for _, l := range sink.losses {
				t.Errorf("loss: %+v", l)
			}
			want := uint64(rounds * len(tt.offsets))
			t.Logf("%s: %d bios counted (%d with a request of their own), %d write merges on %s", tt.name, ios, requests, merges, loop.name)
			if merges == 0 {
				t.Errorf("the kernel merged none of the writes on %s: the test proves nothing", loop.name)
			}
			if ios != want {
				t.Errorf("%d bios counted for the writer on %s, want %d", ios, loop.name, want)
			}
		})
	}
}

// writeMerges returns the write merges (bios merged into a request)
// of a disk, from its stat file.
func writeMerges(t *testing.T, disk string) uint64 {
	t.Helper()
	b, err := os.ReadFile("/sys/block/" + disk + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) < 6 {
		t.Fatalf("/sys/block/%s/stat: %q", disk, b)
	}
	n, err := strconv.ParseUint(f[5], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
