package probes

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/scenario"
	"github.com/whyslow/whyslow/internal/timeline"
)

// blkSink records everything a block probe delivers.
type blkSink struct {
	mu     sync.Mutex
	events []event.Event
	losses []event.Loss
	hists  []blkHist
}

type blkHist struct {
	kind timeline.HistKind
	dev  event.Device
	h    hist.Histogram
}

func (s *blkSink) Event(e event.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, e)
}

func (s *blkSink) Loss(l event.Loss) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.losses = append(s.losses, l)
}

func (s *blkSink) Histogram(kind timeline.HistKind, dev event.Device, h *hist.Histogram) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hists = append(s.hists, blkHist{kind, dev, *h})
}

// hist returns the histogram of kind for the device named name.
func (s *blkSink) hist(kind timeline.HistKind, name string) (blkHist, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.hists {
		if h.kind == kind && h.dev.Name == name {
			return h, true
		}
	}
	return blkHist{}, false
}

// slowSubmits returns the SlowSubmit events for device name.
func (s *blkSink) slowSubmits(name string) []event.SlowSubmit {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []event.SlowSubmit
	for _, e := range s.events {
		if ss, ok := e.(event.SlowSubmit); ok && ss.Dev.Name == name {
			out = append(out, ss)
		}
	}
	return out
}

func (s *blkSink) sysfsWrites() []event.SysfsWrite {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []event.SysfsWrite
	for _, e := range s.events {
		if w, ok := e.(event.SysfsWrite); ok {
			out = append(out, w)
		}
	}
	return out
}

// blkNeedRoot skips a test that loads BPF or sets up loop devices when not root.
func blkNeedRoot(t *testing.T) {
	t.Helper()
	if testing.Short() {
		scenario.Skip(t, "skipped with -short: loads BPF programs and sets up a loop device")
	}
	if os.Geteuid() != 0 {
		scenario.Skip(t, "needs root: loads BPF programs and sets up a loop device")
	}
}

// blkLoop is a loop device over a temporary file, detached at cleanup.
type blkLoop struct {
	name         string // "loop3"
	path         string // "/dev/loop3"
	major, minor uint32
}

func newBlkLoop(t testing.TB, size int64) blkLoop {
	t.Helper()
	scenario.Hold(t)
	backing, err := os.Create(filepath.Join(t.TempDir(), "backing.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer backing.Close()
	if err := backing.Truncate(size); err != nil {
		t.Fatal(err)
	}
	ctl, err := unix.Open("/dev/loop-control", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("opening /dev/loop-control: %v", err)
	}
	defer unix.Close(ctl)
	// Another process may grab the same free device: retry.
	for try := 0; try < 20; try++ {
		n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
		if err != nil {
			t.Fatalf("LOOP_CTL_GET_FREE: %v", err)
		}
		l := blkLoop{name: fmt.Sprintf("loop%d", n), path: fmt.Sprintf("/dev/loop%d", n)}
		fd, err := unix.Open(l.path, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("opening %s: %v", l.path, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(backing.Fd())}
		copy(cfg.Info.File_name[:], backing.Name())
		err = unix.IoctlLoopConfigure(fd, &cfg)
		if errors.Is(err, unix.EBUSY) {
			unix.Close(fd)
			continue
		}
		if err != nil {
			unix.Close(fd)
			t.Fatalf("LOOP_CONFIGURE %s: %v", l.path, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatal(err)
		}
		l.major, l.minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
		t.Cleanup(func() {
			// Leave the queue as we found it, then detach.
			_ = os.WriteFile("/sys/block/"+l.name+"/queue/scheduler", []byte("none"), 0)
			if err := unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0); err != nil {
				t.Errorf("detaching %s: %v", l.path, err)
			}
			unix.Close(fd)
		})
		return l
	}
	t.Fatal("no free loop device")
	return blkLoop{}
}

// directWriter does 4 KiB O_DIRECT writes at random offsets of path from
// one locked OS thread until stop is closed (or n writes when n > 0), and
// returns that thread's id once it runs and a channel closed when it ends.
func directWriter(t *testing.T, path string, size int64, n int, stop <-chan struct{}) (tid int, done <-chan struct{}, writes *atomic.Int64) {
	t.Helper()
	tidc := make(chan int, 1)
	errc := make(chan error, 1)
	d := make(chan struct{})
	writes = new(atomic.Int64)
	go func() {
		defer close(d)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tidc <- unix.Gettid()
		f, err := openDirect(path, unix.O_WRONLY, 4096)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		for i := range f.buf {
			f.buf[i] = byte(i)
		}
		blocks := size / 4096
		for i := 0; n <= 0 || i < n; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := unix.Pwrite(f.fd, f.buf, rand.Int64N(blocks)*4096); err != nil {
				errc <- err
				return
			}
			writes.Add(1)
		}
	}()
	tid = <-tidc
	t.Cleanup(func() {
		select {
		case err := <-errc:
			t.Errorf("writer: %v", err)
		default:
		}
	})
	return tid, d, writes
}

// assertProgsUnloaded fails t when this test process still holds programs
// named names (a program or link file descriptor) a few seconds after Stop.
// Only this process's descriptors count: whyslow runs by other test
// packages load programs of the same names at the same time.
func assertProgsUnloaded(t *testing.T, names ...string) {
	t.Helper()
	var left []string
	if !blkWaitUntil(5*time.Second, func() bool {
		left = heldProgs(t, names...)
		return len(left) == 0
	}) {
		t.Errorf("programs still held after Stop: %v", left)
	}
}

// heldProgs returns the names, among names, of the BPF programs this process
// holds through a program or link file descriptor.
func heldProgs(t *testing.T, names ...string) []string {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("listing file descriptors: %v", err)
	}
	var found []string
	for _, fd := range fds {
		target, err := os.Readlink("/proc/self/fd/" + fd.Name())
		if err != nil || (target != "anon_inode:bpf-prog" && target != "anon_inode:bpf_link") {
			continue
		}
		info, err := os.ReadFile("/proc/self/fdinfo/" + fd.Name())
		if err != nil {
			continue // closed meanwhile
		}
		var id uint32
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "prog_id:"); ok {
				n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
				id = uint32(n)
			}
		}
		if id == 0 {
			continue
		}
		p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
		if err != nil {
			continue // unloaded meanwhile
		}
		pi, err := p.Info()
		p.Close()
		if err != nil {
			continue
		}
		for _, n := range names {
			if pi.Name == n {
				found = append(found, n)
			}
		}
	}
	return found
}

func TestErrReasonRealErrors(t *testing.T) {
	blkNeedRoot(t)
	// A real ENOENT: a tracepoint that does not exist.
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.TracePoint,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		t.Fatalf("loading a trivial program: %v", err)
	}
	defer prog.Close()
	_, err = link.Tracepoint("syscalls", "sys_enter_no_such_call", prog, nil)
	if err == nil {
		t.Fatal("attaching to a missing tracepoint succeeded")
	}
	got := errReason(err)
	if !strings.HasPrefix(got, "not found in this kernel") || strings.Contains(got, "\n") {
		t.Errorf("missing tracepoint: reason %q", got)
	}

	// A real EPERM: fentry programs are refused on this machine (see
	// kernel-lab.md); elsewhere they load, and then there is nothing to check.
	fentry, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.Tracing,
		AttachType:   ebpf.AttachTraceFEntry,
		AttachTo:     "vfs_read",
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err == nil {
		fentry.Close()
		t.Log("fentry loads on this kernel: no EPERM to check")
		return
	}
	got = errReason(err)
	t.Logf("fentry: %s", got)
	if errors.Is(err, unix.EPERM) && !strings.HasPrefix(got, "permission denied") {
		t.Errorf("EPERM: reason %q", got)
	}
	if strings.Contains(got, "\n") {
		t.Errorf("reason has several lines: %q", got)
	}
}

func TestErrReason(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string // prefix
	}{
		{"eperm", fmt.Errorf("loading objects: %w", unix.EPERM), "permission denied"},
		{"eacces", fmt.Errorf("attach: %w", unix.EACCES), "permission denied"},
		{"enoent", fmt.Errorf("attaching tp_btf x: %w", unix.ENOENT), "not found in this kernel"},
		{"not supported", fmt.Errorf("ring buffer: %w", ebpf.ErrNotSupported), "not supported by this kernel"},
		{"ours", fmt.Errorf("tracepoint: %w", ErrNotSupported), "not supported by this kernel"},
		{"multi-line", errors.New("first line\nsecond line"), "first line"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := errReason(tt.err)
			if !strings.HasPrefix(got, tt.want) {
				t.Errorf("errReason = %q, want prefix %q", got, tt.want)
			}
			if strings.Contains(got, "\n") {
				t.Errorf("errReason = %q: more than one line", got)
			}
			st := unavailableStatus("x", tt.err)
			if st.Status != event.StatusUnavailable || st.Reason != got {
				t.Errorf("status = %+v", st)
			}
		})
	}
}

func TestKernelDev(t *testing.T) {
	for _, tt := range []struct{ dev, major, minor uint32 }{
		{7<<20 | 3, 7, 3},
		{259<<20 | 1048575, 259, 1048575},
		{0, 0, 0},
	} {
		if ma, mi := kernelDev(tt.dev); ma != tt.major || mi != tt.minor {
			t.Errorf("kernelDev(%#x) = %d:%d, want %d:%d", tt.dev, ma, mi, tt.major, tt.minor)
		}
	}
}

func TestCString(t *testing.T) {
	if got := cString([]int8{'l', 'o', 'o', 'p', '0', 0, 'x'}); got != "loop0" {
		t.Errorf("int8: %q", got)
	}
	if got := cString([]byte("sda")); got != "sda" {
		t.Errorf("unterminated bytes: %q", got)
	}
}

func TestTPArgIndex(t *testing.T) {
	kernel, err := kernelSpec(Config{})
	if err != nil {
		t.Fatal(err)
	}
	// 5.11+: block_bio_queue(bio); before: block_bio_queue(q, bio).
	// Always: block_bio_complete(q, bio); block_rq_complete(rq, error, nr_bytes).
	bioQueue := uint32(0)
	if kernelBefore(t, 5, 11) {
		bioQueue = 1
	}
	for _, tt := range []struct {
		tp, st string
		want   uint32
	}{
		{"block_bio_queue", "bio", bioQueue},
		{"block_bio_complete", "bio", 1},
		{"block_rq_complete", "request", 0},
	} {
		got, err := tpArgIndex(kernel, tt.tp, tt.st)
		if err != nil || got != tt.want {
			t.Errorf("tpArgIndex(%s, %s) = %d, %v; want %d", tt.tp, tt.st, got, err, tt.want)
		}
	}
	if _, err := tpArgIndex(kernel, "block_bio_queue", "request"); !errors.Is(err, ErrNotSupported) {
		t.Errorf("missing argument: err = %v", err)
	}
	if _, err := tpArgIndex(kernel, "no_such_tracepoint", "bio"); err == nil {
		t.Error("missing tracepoint: no error")
	}
	// tpParamCount reads the same prototype: sched_switch(preempt, prev,
	// next), and prev_state since 5.18 (where a stable kernel before it
	// may have it too).
	n, err := tpParamCount(kernel, "sched_switch")
	if err != nil || n != 4 && (n != 3 || !kernelBefore(t, 5, 18)) {
		t.Errorf("tpParamCount(sched_switch) = %d, %v; want 4 (or 3 before 5.18)", n, err)
	}
	if _, err := tpParamCount(kernel, "no_such_tracepoint"); err == nil {
		t.Error("tpParamCount of a missing tracepoint: no error")
	}
}

// freezingWrite is scenario.FreezingWrite for a device of a probe test:
// the path of the attribute whose every change freezes the queue, and two
// values to alternate. The attribute is set back at the end of the test.
func freezingWrite(t testing.TB, name string) (path string, values [2]string) {
	t.Helper()
	attr, values, _ := scenario.FreezingWrite(name)
	path = filepath.Join("/sys/block", name, attr)
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if attr == "queue/scheduler" {
		old = []byte("none") // reads as "[none] mq-deadline"
	}
	t.Cleanup(func() { _ = os.WriteFile(path, old, 0) })
	return path, values
}

// kernelBefore reports whether the running kernel is older than major.minor.
func kernelBefore(t *testing.T, major, minor int) bool {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var ma, mi int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &ma, &mi); err != nil {
		t.Fatalf("kernel release %q: %v", u.Release, err)
	}
	return ma < major || (ma == major && mi < minor)
}

// blkWaitUntil polls cond until it holds or d passes.
func blkWaitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cond()
}
