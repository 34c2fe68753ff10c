package probes

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/scenario"
)

// Armed mode: Disarm takes every program of the syscall, off-CPU, sysfs
// and exec probes off sys_enter, sys_exit, sched_switch and sched_waking
// (the kernel's links say so, and a pipe's ping-pong runs none of them);
// Arm puts them back, and storage calls are timed again. A read held by a
// cgroup's throttle since before the arming is counted and reported
// unfinished from the arming, and its D sleep is timed from it with its
// waker; many arms and disarms under concurrent checkpoints leak no link
// and lose no count of the calls made while armed.
func TestArmedMode(t *testing.T) {
	blkNeedRoot(t)
	old := syscallSelf
	syscallSelf = 0
	t.Cleanup(func() { syscallSelf = old })
	dev := scenario.LoopDevice(t, 64<<20) // direct reads through a throttle: any backing will do, and the guests' /tmp is tmpfs
	cfg := Config{MinLatency: 10 * time.Millisecond, SysFS: "/sys", ProcFS: "/proc", FailedExecs: true,
		Mechanism: MechanismChoice{Per: map[string]event.Mechanism{event.ProbeSyscall: event.MechTPBTF}}}
	sink := new(blkSink)
	g := Start(cfg, sink, syscallProbe{}, sysfsProbe{}, execProbe{}, offcpuProbe{})
	stopped := false
	defer func() {
		if !stopped {
			g.Stop()
		}
	}()
	for _, st := range g.Statuses() {
		if st.Status != event.StatusOK {
			t.Fatalf("%s did not start: %+v", st.Name, st)
		}
	}
	hotIDs, allIDs := armProgIDs(t, g)
	hot0, all0 := linksOf(t, hotIDs), linksOf(t, allIDs)
	t.Logf("links: %d on the hot hooks, %d in all", hot0, all0)
	if hot0 == 0 {
		t.Fatal("no link of the probes' hot-hook programs before disarming")
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatalf("enabling BPF statistics: %v", err)
	}
	defer stats.Close()

	r := openDirectDev(t, dev)
	calls := func() uint64 { return preadCount(t, g, dev) }

	// Disarmed: no link on the hooks, no run on a pipe, no call timed.
	t0 := time.Now()
	if err := g.Disarm(); err != nil {
		t.Fatal(err)
	}
	t.Logf("disarm took %v", time.Since(t0))
	if n := linksOf(t, hotIDs); n != 0 {
		t.Errorf("disarmed: %d links of the hot-hook programs still in the kernel", n)
	}
	if tps := syscallTracepointsOf(t); len(tps) > 0 {
		t.Errorf("disarmed: syscall tracepoints still attached: %v", tps)
	}
	runs0 := runsOf(t, hotIDs)
	pingPong(t, 20000)
	if d := runsOf(t, hotIDs) - runs0; d != 0 {
		t.Errorf("disarmed: the hot-hook programs ran %d times over a pipe's ping-pong", d)
	}
	before := calls()
	r.reads(t, 50)
	if got := calls(); got != before {
		t.Errorf("disarmed: %d preads timed, want none", got-before)
	}

	// A read held by its cgroup's throttle, begun while disarmed.
	c := scenario.IOCgroup(t, "armed")
	if err := c.LimitReadBPS(dev, 4096); err != nil {
		t.Fatal(err)
	}
	dd := hungReader(t, c, dev)
	if !blkWaitUntil(5*time.Second, func() bool { return inReadD(dd.Process.Pid) }) {
		t.Fatalf("dd %d not asleep in its read", dd.Process.Pid)
	}
	// Threads that are in no storage call, though their last call (or
	// the one they sleep in) has a storage call's number: none is seeded.
	spinner := seedHelper(t, "spin", dev)  // back in user space after a pread of dev, spinning
	sleeper := seedHelper(t, "sleep", dev) // asleep in nanosleep after a pread of dev
	piper := pipeReader(t)                 // asleep in read(2) of a pipe
	stoppedPid := stoppedAfterRead(t, dev) // stopped by a signal on its way back from a pread of dev
	seeding := syscallOf(t, g).seeder != nil

	t0 = time.Now()
	armedAt, _ := event.Now()
	if err := g.Arm(); err != nil {
		t.Fatal(err)
	}
	t.Logf("arm took %v", time.Since(t0))
	if seeding {
		sr := syscallOf(t, g)
		sr.sums.Lock()
		outcomes := sr.armed.lastSeed
		sr.sums.Unlock()
		if o := outcomes[uint32(dd.Process.Pid)]; o != syscallScSeedOutcomeSEED_DONE {
			t.Errorf("dd's read in progress as the probe armed: seeding outcome %d, want %d (seeded)", o, syscallScSeedOutcomeSEED_DONE)
		}
		for _, h := range []struct {
			what string
			pid  int
		}{{"a thread back in user space after a pread of the disk", spinner},
			{"a thread asleep in nanosleep after a pread of the disk", sleeper},
			{"a thread asleep in read(2) of a pipe", piper},
			{"a thread stopped on its way back from a pread of the disk", stoppedPid}} {
			if o, ok := outcomes[uint32(h.pid)]; ok {
				t.Errorf("%s (%d) was taken for one in a storage call as the probe armed: outcome %d", h.what, h.pid, o)
			}
		}
	} else {
		t.Logf("no seeding of the calls in progress on this kernel (it needs task storage, tp_btf and bpf_task_pt_regs, 5.15+): /proc counts them")
	}
	unix.Kill(spinner, unix.SIGKILL) // it spins on a CPU
	if n := linksOf(t, hotIDs); n != hot0 {
		t.Errorf("armed: %d links of the hot-hook programs, want %d as at the start", n, hot0)
	}
	runs0 = runsOf(t, hotIDs)
	pingPong(t, 1000)
	if runsOf(t, hotIDs) == runs0 {
		t.Error("armed: the hot-hook programs did not run over a pipe's ping-pong")
	}
	r.reads(t, 50)
	if got := calls() - before; got < 50 {
		t.Errorf("armed: %d preads timed, want 50", got)
	}
	time.Sleep(50 * time.Millisecond) // past MinLatency since the arming
	cp := new(blkSink)
	if err := g.Checkpoint(cp); err != nil {
		t.Fatal(err)
	}
	if seeding {
		if n := lossCount(cp, event.ProbeSyscall, syscallSeededWhat); n < 1 {
			t.Errorf("the read in flight as the probe armed is not counted as seeded: %v", cp.losses)
		}
	} else if n := lossCount(cp, event.ProbeSyscall, syscallInFlightWhat); n < 1 {
		t.Errorf("the read in flight as the probe armed is not counted: %v", cp.losses)
	}
	if n := lossCount(cp, event.ProbeOffCPU, offcpuSeededWhat); n < 1 {
		t.Errorf("the D sleep in progress as the probe armed is not seeded: %v", cp.losses)
	}
	// The time disarmed is coverage, not a loss (trouble.Coverage): the
	// removed "ms disarmed (armed mode): ..." line. offcpu's count of D
	// sleeps in progress at a disarming is a real loss, there when a
	// task of the machine slept in D as the probe disarmed.
	for _, l := range cp.losses {
		if strings.HasPrefix(l.What, "ms disarmed") {
			t.Errorf("the time disarmed is reported as a loss: %+v", l)
		}
	}
	var found bool
	for _, u := range sinkEvents[event.UnfinishedCall](cp) {
		if int(u.Task.Tgid) == dd.Process.Pid && u.Call == "read" {
			found = true
			if !u.Before || u.Start < armedAt || u.Start > armedAt+event.Mono(time.Second) {
				t.Errorf("dd's read: before %v, start %v after the arming (want the arming: a lower bound)", u.Before, time.Duration(u.Start-armedAt))
			}
			if u.Dev.Name != dev {
				t.Errorf("dd's read unfinished on %q, want %s", u.Dev.Name, dev)
			}
		}
	}
	if !found {
		t.Errorf("dd's read in flight as the probe armed is not reported unfinished")
	}
	// Its read ends: the D sleep, timed from the arming, with its waker.
	released, _ := event.Now()
	if err := c.LimitReadBPS(dev, 0); err != nil {
		t.Fatal(err)
	}
	dd.Wait()
	if seeding {
		checkSeededRead(t, g, sink, dd.Process.Pid, dev, armedAt, released)
	}
	e, ok := waitEvent(sink, 5*time.Second, func(o event.OffCPU) bool { return int(o.Task.Tgid) == dd.Process.Pid })
	if !ok {
		t.Errorf("no off-CPU span of dd's read, seeded as the probe armed")
	} else {
		t.Logf("dd's span: %v from %v after the arming, waker %+v, %d kernel frames", e.Duration, time.Duration(e.Start-armedAt), e.Waker, len(e.KernelStack))
		if e.Start < armedAt || len(e.KernelStack) == 0 {
			t.Errorf("dd's span starts %v after the arming (want ≥ 0: a lower bound), %d kernel frames", time.Duration(e.Start-armedAt), len(e.KernelStack))
		}
	}

	// Many times, with checkpoints at the same time: no link leaks, the
	// calls made while armed all counted.
	var stop atomic.Bool
	var wg sync.WaitGroup
	var cpErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if err := g.Checkpoint(new(blkSink)); err != nil && cpErr == nil {
				cpErr = err
			}
		}
	}()
	before = calls()
	var dis, arm time.Duration
	const rounds = 20
	for range rounds {
		t0 := time.Now()
		if err := g.Disarm(); err != nil {
			t.Fatal(err)
		}
		dis += time.Since(t0)
		if err := g.Disarm(); err != nil { // again: nothing to do
			t.Fatal(err)
		}
		t0 = time.Now()
		if err := g.Arm(); err != nil {
			t.Fatal(err)
		}
		arm += time.Since(t0)
		r.reads(t, 10)
	}
	stop.Store(true)
	wg.Wait()
	if cpErr != nil {
		t.Errorf("checkpoint while arming and disarming: %v", cpErr)
	}
	t.Logf("%d rounds: disarm %v, arm %v on average", rounds, dis/rounds, arm/rounds)
	if got := calls() - before; got < rounds*10 {
		t.Errorf("%d preads timed over %d rounds, want %d", got, rounds, rounds*10)
	}
	if n, m := linksOf(t, hotIDs), linksOf(t, allIDs); n != hot0 || m != all0 {
		t.Errorf("after %d rounds: %d links on the hot hooks and %d in all, want %d and %d", rounds, n, m, hot0, all0)
	}
	writeScheduler(t, "after the rounds", dev, sink)

	// Stop while arming.
	if err := g.Disarm(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- g.Arm() }()
	stopped = true
	if err := g.Stop(); err != nil {
		t.Error(err)
	}
	if err := <-done; err != nil {
		t.Logf("arm during the stop: %v", err)
	}
	if n := linksOf(t, allIDs); n != 0 {
		t.Errorf("after the stop: %d links of the probes' programs left", n)
	}
	if tps := syscallTracepointsOf(t); len(tps) > 0 {
		t.Errorf("after the stop: syscall tracepoints left: %v", tps)
	}
}

// armProgIDs are the ids of the group's programs on the hot hooks (and
// their syscall tracepoints), and of all its armable probes' programs.
func armProgIDs(t *testing.T, g *Group) (hot, all map[ebpf.ProgramID]bool) {
	t.Helper()
	hot, all = map[ebpf.ProgramID]bool{}, map[ebpf.ProgramID]bool{}
	add := func(isHot bool, ps ...*ebpf.Program) {
		for _, p := range ps {
			if p == nil {
				continue
			}
			info, err := p.Info()
			if err != nil {
				t.Fatal(err)
			}
			id, _ := info.ID()
			all[id] = true
			if isHot {
				hot[id] = true
			}
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, s := range g.running {
		switch r := s.r.(type) {
		case *syscallRunning:
			for name, p := range r.coll.Programs {
				add(name == r.enterProg || name == r.exitProg || name == "sc_switch" || name == "sc_waking", p)
			}
		case *offcpuRunning:
			add(true, r.objs.OffcpuSwitch, r.objs.OffcpuWakeup, r.objs.OffcpuSysExit)
		case *sysfsRunning:
			for _, p := range r.objs.Programs {
				add(true, p)
			}
		case *execRunning:
			add(false, r.objs.ExecExec, r.objs.ExecExit)
			add(true, r.objs.ExecBtfEnter, r.objs.ExecBtfExit, r.objs.ExecEnterExecve, r.objs.ExecEnterExecveat,
				r.objs.ExecExitExecve, r.objs.ExecExitExecveat)
		}
	}
	return hot, all
}

// linksOf counts the kernel's links whose program is one of ids.
func linksOf(t *testing.T, ids map[ebpf.ProgramID]bool) int {
	t.Helper()
	n := 0
	var it link.Iterator
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			continue
		}
		if ids[info.Program] {
			n++
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// runsOf sums the kernel's run counts of the programs ids (BPF
// statistics on).
func runsOf(t *testing.T, ids map[ebpf.ProgramID]bool) uint64 {
	t.Helper()
	var n uint64
	for id := range ids {
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			t.Fatal(err)
		}
		st, err := p.Stats()
		p.Close()
		if err != nil {
			t.Fatal(err)
		}
		n += st.RunCount
	}
	return n
}

// pingPong makes n round trips over two pipes between two goroutines.
func pingPong(t *testing.T, n int) {
	t.Helper()
	ar, aw, _ := os.Pipe()
	br, bw, _ := os.Pipe()
	defer func() {
		for _, f := range []*os.File{ar, aw, br, bw} {
			f.Close()
		}
	}()
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := make([]byte, 1)
		for range n {
			if _, err := ar.Read(b); err != nil {
				return
			}
			bw.Write(b)
		}
	}()
	b := make([]byte, 1)
	for range n {
		aw.Write(b)
		if _, err := br.Read(b); err != nil {
			t.Fatal(err)
		}
	}
	<-done
}

// directReader reads a block device with O_DIRECT.
type directReader struct {
	fd  int
	buf []byte
}

func openDirectDev(t *testing.T, dev string) *directReader {
	t.Helper()
	fd, err := unix.Open("/dev/"+dev, unix.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd); unix.Munmap(buf) })
	return &directReader{fd: fd, buf: buf}
}

func (r *directReader) reads(t *testing.T, n int) {
	t.Helper()
	for i := range n {
		if _, err := unix.Pread(r.fd, r.buf, int64(i%64)*4096); err != nil {
			t.Fatal(err)
		}
	}
}

// preadCount is how many pread64 calls of this process on dev the syscall
// probe has timed, at a checkpoint of g.
func preadCount(t *testing.T, g *Group, dev string) uint64 {
	t.Helper()
	s := new(blkSink)
	if err := g.Checkpoint(s); err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, st := range sinkEvents[event.SyscallStats](s) {
		if int(st.Pid) == os.Getpid() && st.Call == "pread64" && st.Dev.Name == dev {
			n += st.Latency.Count
		}
	}
	return n
}

// lossCount is the count of a probe's loss line what.
func lossCount(s *blkSink, probe, what string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n uint64
	for _, l := range s.losses {
		if l.Probe == probe && l.What == what {
			n += l.Count
		}
	}
	return n
}

// waitEvent waits up to d for an event E in s that ok accepts.
func waitEvent[E event.Event](s *blkSink, d time.Duration, ok func(E) bool) (E, bool) {
	var found E
	got := blkWaitUntil(d, func() bool {
		for _, e := range sinkEvents[E](s) {
			if ok(e) {
				found = e
				return true
			}
		}
		return false
	})
	return found, got
}

// inReadD says process pid is asleep in D inside read(2).
func inReadD(pid int) bool {
	tdir := filepath.Join("/proc", strconv.Itoa(pid), "task", strconv.Itoa(pid))
	nr, _, ok := taskSyscall(tdir)
	_, st := taskState(tdir)
	return ok && nr == uint32(syscallStorageNrNR_READ) && st == 'D'
}

// hungReader starts, in cgroup c, a 1 MiB O_DIRECT read of dev that its
// read limit holds; on cleanup the limit is lifted and dd reaped.
func hungReader(t *testing.T, c *scenario.Cgroup, dev string) *exec.Cmd {
	t.Helper()
	argv := c.Command("dd", "if=/dev/"+dev, "of=/dev/null", "bs=1M", "count=1", "iflag=direct", "status=none")
	cmd := exec.Command(argv[0], argv[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.LimitReadBPS(dev, 0)
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

// syscallOf is g's running syscall probe.
func syscallOf(t *testing.T, g *Group) *syscallRunning {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, s := range g.running {
		if r, ok := s.r.(*syscallRunning); ok {
			return r
		}
	}
	t.Fatal("no syscall probe running")
	return nil
}

// checkSeededRead checks that dd's read (pid, on dev), in progress as
// the probe armed (after armedAt) and held until released, was timed from
// the arming: its slow-call record and its histogram marked as such, with
// its process, device and call, its duration at least the time from the
// arming to the release, and its sleep summed with the stack it slept in.
func checkSeededRead(t *testing.T, g *Group, sink *blkSink, pid int, dev string, armedAt, released event.Mono) {
	t.Helper()
	e, ok := waitEvent(sink, 5*time.Second, func(e event.Syscall) bool { return int(e.Task.Tgid) == pid && e.Call == "read" })
	if !ok {
		t.Error("no slow-call record of dd's read, seeded as the probe armed")
		return
	}
	t.Logf("dd's read: %v from %v after the arming, asleep %v, on %s, from the arming: %v", e.Duration, time.Duration(e.Start-armedAt), e.Sleep, e.Dev.Name, e.FromArming)
	if !e.FromArming {
		t.Error("dd's read is not marked as timed from the arming (a lower bound)")
	}
	if e.Dev.Name != dev || int(e.Task.Pid) != pid {
		t.Errorf("dd's read on %q by thread %d, want %s by %d", e.Dev.Name, e.Task.Pid, dev, pid)
	}
	if e.Start < armedAt {
		t.Errorf("dd's read starts %v before the arming, want at it", time.Duration(armedAt-e.Start))
	}
	if end := e.Start + event.Mono(e.Duration); end < released {
		t.Errorf("dd's read ends %v before its throttle was lifted: duration %v is not from the arming", time.Duration(released-end), e.Duration)
	}
	if e.Start+event.Mono(e.Sleep) < released {
		t.Errorf("dd's read slept %v, less than from the arming to the release", e.Sleep)
	}
	cp := new(blkSink)
	if err := g.Checkpoint(cp); err != nil {
		t.Fatal(err)
	}
	var calls, from uint64
	for _, st := range sinkEvents[event.SyscallStats](cp) {
		if int(st.Pid) == pid && st.Call == "read" && st.Dev.Name == dev {
			calls += st.Latency.Count
			from += st.FromArming
		}
	}
	if calls < 1 || from != 1 {
		t.Errorf("dd's reads of %s: %d in its histogram, %d of them from the arming, want the seeded one marked", dev, calls, from)
	}
	var stacked time.Duration
	for _, b := range sinkEvents[event.BlockedStack](cp) {
		if int(b.Pid) == pid && b.Call == "read" && b.Dev.Name == dev && len(b.KernelStack) > 0 {
			stacked += b.Total
		}
	}
	if stacked < time.Duration(released-e.Start) {
		t.Errorf("dd's read slept %v in kernel stacks, less than from the arming to the release (%v)", stacked, time.Duration(released-e.Start))
	}
	for _, u := range sinkEvents[event.UnfinishedCall](cp) {
		if int(u.Task.Tgid) == pid {
			t.Errorf("dd's read still reported unfinished after it returned: %+v", u)
		}
	}
}

// seedHelperEnv makes the test binary, run again, a thread that is in no
// storage call as the probe arms though its registers hold a storage
// call's number (runSeedHelper).
const seedHelperEnv = "WHYSLOW_PROBES_SEED_HELPER"

func init() {
	if spec := os.Getenv(seedHelperEnv); spec != "" {
		// The main goroutine stays on the main thread (pid = tid), as
		// during the inits.
		runtime.LockOSThread()
		if err := runSeedHelper(spec); err != nil {
			fmt.Fprintln(os.Stderr, "seed helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// runSeedHelper, for spec "MODE DEV FLAG": a pread of /dev/DEV with
// O_DIRECT, then a 1 in the first byte of the file FLAG (shared memory:
// no system call), then, for MODE spin, a loop in user space with no
// system call (until FLAG's second word is set: a thread on a CPU in
// user space, whose registers at the top of its kernel stack are those
// of its last entry, the pread's until an interrupt comes); for MODE
// sleep, a nanosleep of a minute. MODE threads (DEV is a count):
// seedThreadsHelper. MODE read1m: a pread of 1 MiB, and
// nothing else.
func runSeedHelper(spec string) error {
	f := strings.Fields(spec)
	if len(f) != 3 {
		return fmt.Errorf("bad spec %q", spec)
	}
	if f[0] == "threads" {
		n, err := strconv.Atoi(f[1])
		if err != nil {
			return err
		}
		return seedThreadsHelper(n)
	}
	fd, err := unix.Open("/dev/"+f[1], unix.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return err
	}
	if f[0] == "read1m" {
		buf, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
		if err != nil {
			return err
		}
		_, err = unix.Pread(fd, buf, 0)
		return err
	}
	flagFd, err := unix.Open(f[2], unix.O_RDWR, 0)
	if err != nil {
		return err
	}
	flag, err := unix.Mmap(flagFd, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	ts := unix.NsecToTimespec(int64(time.Minute))
	if _, err := unix.Pread(fd, buf, 0); err != nil {
		return err
	}
	flag[0] = 1
	switch f[0] {
	case "spin":
		for atomic.LoadUint32((*uint32)(unsafe.Pointer(&flag[4]))) == 0 {
		}
	case "sleep":
		unix.Nanosleep(&ts, nil)
	}
	return nil
}

// seedHelper starts runSeedHelper in mode on dev, waits until it is
// there (spinning in user space, or asleep in nanosleep), and returns its
// pid (that of the thread); on cleanup it is killed.
func seedHelper(t *testing.T, mode, dev string) int {
	t.Helper()
	flagPath := filepath.Join(t.TempDir(), "flag")
	if err := os.WriteFile(flagPath, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	// No asynchronous preemption: no signal brings the spinning thread
	// into the kernel.
	cmd.Env = append(os.Environ(), seedHelperEnv+"="+mode+" "+dev+" "+flagPath, "GODEBUG=asyncpreemptoff=1")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pid := cmd.Process.Pid
	tdir := filepath.Join("/proc", strconv.Itoa(pid), "task", strconv.Itoa(pid))
	there := func() bool {
		b, err := os.ReadFile(flagPath)
		if err != nil || len(b) == 0 || b[0] != 1 {
			return false
		}
		_, st := taskState(tdir)
		if mode == "spin" {
			return st == 'R'
		}
		nr, _, ok := taskSyscall(tdir)
		return ok && nr == unix.SYS_NANOSLEEP && st == 'S'
	}
	if !blkWaitUntil(10*time.Second, there) {
		t.Fatalf("seed helper %s (%d) not there", mode, pid)
	}
	return pid
}

// pipeReader starts a cat reading an empty pipe, waits until it is
// asleep in read(2), and returns its pid.
func pipeReader(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("cat")
	w, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close(); cmd.Process.Kill(); cmd.Wait() })
	pid := cmd.Process.Pid
	tdir := filepath.Join("/proc", strconv.Itoa(pid), "task", strconv.Itoa(pid))
	if !blkWaitUntil(10*time.Second, func() bool {
		nr, _, ok := taskSyscall(tdir)
		_, st := taskState(tdir)
		return ok && nr == uint32(syscallStorageNrNR_READ) && st == 'S'
	}) {
		t.Fatalf("cat %d not asleep in its read of a pipe", pid)
	}
	return pid
}

// stoppedAfterRead starts runSeedHelper in mode "read1m" (a 1 MiB pread
// of dev) in a cgroup whose read limit holds it, stops it with SIGSTOP
// while it sleeps in the pread, and lifts the limit: its pread returns,
// and it stops on its way back to user space, still in the kernel, with
// the pread's number as its last call (what /proc/PID/syscall shows too)
// and its result in its registers. It returns its pid.
func stoppedAfterRead(t *testing.T, dev string) int {
	t.Helper()
	c := scenario.IOCgroup(t, "armed-stopped")
	if err := c.LimitReadBPS(dev, 4096); err != nil {
		t.Fatal(err)
	}
	argv := c.Command(os.Args[0], "-test.run=^$")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), seedHelperEnv+"=read1m "+dev+" -")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.LimitReadBPS(dev, 0)
		cmd.Process.Kill()
		cmd.Wait()
	})
	pid := cmd.Process.Pid
	tdir := filepath.Join("/proc", strconv.Itoa(pid), "task", strconv.Itoa(pid))
	in := func(want byte) func() bool {
		return func() bool {
			nr, _, ok := taskSyscall(tdir)
			_, st := taskState(tdir)
			return ok && nr == uint32(syscallStorageNrNR_PREAD64) && st == want
		}
	}
	if !blkWaitUntil(10*time.Second, in('D')) {
		t.Fatalf("helper %d not asleep in its pread", pid)
	}
	if err := unix.Kill(pid, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := c.LimitReadBPS(dev, 0); err != nil {
		t.Fatal(err)
	}
	if !blkWaitUntil(10*time.Second, in('T')) {
		t.Fatalf("helper %d not stopped after its pread", pid)
	}
	return pid
}
