package probes

import (
	"flag"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
)

var probeConfigs = flag.String("probeconfigs", "", "BenchmarkSyscallProbe: only these configurations (comma-separated: none,offcpu,tracepoint,tp_btf,offcpu+tp_btf), each loaded and attached only when listed")

var probeStats = flag.Bool("probestats", false, "BenchmarkSyscallProbe: report each program's runs and run time (kernel.bpf_stats_enabled, which slows every program down)")

// BenchmarkSyscallProbe measures what the syscall probe costs the
// workloads it watches, per mechanism: a system call that is no storage
// call (getppid), a storage call that does not sleep (a 4 KiB pread of a
// cached file on the root filesystem), one that sleeps (an O_DIRECT pread
// of a loop device: two context switches, a stack walk), a call on a pipe
// that is let go at entry after the file lookup, and context switches
// between two threads that make no storage call (pipe ping-pong, where
// only the scheduler programs run), and an asynchronous I/O (io_submit +
// io_getevents of an O_DIRECT read of the loop device, libaio's two
// storage calls per I/O). "none" is the baseline; "offcpu" and
// "offcpu+tp_btf" (a diagnosis runs both) tell what sharing the offcpu
// probe's sched_switch program would save. Each program's runs per
// operation and its mean run time come from the kernel's BPF statistics
// with -probestats (kernel.bpf_stats_enabled, which adds some 20-40 ns to
// every program's run: the times per operation are without). Root only;
// run under the heavy lock (docs/syscall-probe.md has the results):
//
//	go test ./probes -run '^$' -bench SyscallProbe -benchtime 100000x [-args -probestats -probeconfigs tp_btf]
func BenchmarkSyscallProbe(b *testing.B) {
	if os.Geteuid() != 0 || testing.Short() {
		b.Skip("needs root: loads BPF programs")
	}
	old := syscallSelf
	syscallSelf = 0
	defer func() { syscallSelf = old }()
	dir := b.TempDir()
	cached := filepath.Join(dir, "cached")
	if err := os.WriteFile(cached, make([]byte, 1<<20), 0o600); err != nil {
		b.Fatal(err)
	}
	loop := newBlkLoop(b, 64<<20)
	if *probeStats {
		stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			b.Fatalf("enabling BPF run-time statistics: %v", err)
		}
		defer stats.Close()
	}
	for _, cfg := range []struct {
		name   string
		probes []Probe
		mech   event.Mechanism
	}{
		{"none", nil, ""},
		{"offcpu", []Probe{offcpuProbe{}}, ""},
		{"tracepoint", []Probe{syscallProbe{}}, event.MechTracepoint},
		{"tp_btf", []Probe{syscallProbe{}}, event.MechTPBTF},
		{"offcpu+tp_btf", []Probe{offcpuProbe{}, syscallProbe{}}, event.MechTPBTF},
	} {
		if *probeConfigs != "" && !slices.Contains(strings.Split(*probeConfigs, ","), cfg.name) {
			continue
		}
		sink := new(blkSink)
		c := Config{MinLatency: 1 << 40, SysFS: "/sys", ProcFS: "/proc"}
		if cfg.mech != "" {
			c.Mechanism = MechanismChoice{Per: map[string]event.Mechanism{event.ProbeSyscall: cfg.mech}}
		}
		g := Start(c, sink, cfg.probes...)
		for _, st := range g.Statuses() {
			if st.Status != event.StatusOK {
				b.Fatalf("%s: %+v", cfg.name, st)
			}
		}
		var progs map[string]*ebpf.Program
		for _, s := range g.running {
			if sr, ok := s.r.(*syscallRunning); ok && *probeStats {
				progs = sr.coll.Programs
			}
		}
		run := func(name string, fn func(b *testing.B)) {
			b.Run(cfg.name+"/"+name, func(b *testing.B) {
				before := progRuns(b, progs)
				fn(b)
				after := progRuns(b, progs)
				for p, a := range after {
					runs := a.RunCount - before[p].RunCount
					if runs == 0 {
						continue
					}
					b.ReportMetric(float64(runs)/float64(b.N), p+"-runs/op")
					b.ReportMetric(float64(a.Runtime-before[p].Runtime)/float64(runs), p+"-ns/run")
				}
			})
		}
		run("getppid", func(b *testing.B) {
			for b.Loop() {
				unix.Getppid()
			}
		})
		run("pread-cached", func(b *testing.B) {
			fd, err := unix.Open(cached, unix.O_RDONLY, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer unix.Close(fd)
			buf := make([]byte, 4096)
			for b.Loop() {
				unix.Pread(fd, buf, 0)
			}
		})
		run("pread-direct", func(b *testing.B) {
			d, err := openDirect(loop.path, unix.O_RDONLY, 4096)
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			for b.Loop() {
				unix.Pread(d.fd, d.buf, 0)
			}
		})
		run("aio-direct", func(b *testing.B) {
			d, err := openDirect(loop.path, unix.O_RDONLY, 4096)
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			ctx := aioSetup(b)
			for b.Loop() {
				aioSubmitRead(b, ctx, d.fd, d.buf)
				aioWait(b, ctx)
			}
		})
		run("pipe-write", func(b *testing.B) {
			var p [2]int
			if err := unix.Pipe(p[:]); err != nil {
				b.Fatal(err)
			}
			defer unix.Close(p[0])
			defer unix.Close(p[1])
			buf := make([]byte, 8)
			for b.Loop() {
				unix.Write(p[1], buf)
				unix.Read(p[0], buf)
			}
		})
		run("ping-pong", func(b *testing.B) {
			var ab, ba [2]int
			if err := unix.Pipe(ab[:]); err != nil {
				b.Fatal(err)
			}
			if err := unix.Pipe(ba[:]); err != nil {
				b.Fatal(err)
			}
			done := make(chan struct{})
			go func() {
				runtime.LockOSThread()
				defer close(done)
				buf := make([]byte, 1)
				for {
					if n, _ := unix.Read(ab[0], buf); n != 1 || buf[0] == 0 {
						return
					}
					unix.Write(ba[1], buf)
				}
			}()
			runtime.LockOSThread()
			buf := []byte{1}
			for b.Loop() {
				unix.Write(ab[1], buf)
				unix.Read(ba[0], buf)
			}
			unix.Write(ab[1], []byte{0})
			<-done
			runtime.UnlockOSThread()
			for _, fd := range []int{ab[0], ab[1], ba[0], ba[1]} {
				unix.Close(fd)
			}
		})
		if err := g.Stop(); err != nil {
			b.Fatal(err)
		}
	}
}

// progRuns reads the kernel's run-time statistics of programs.
func progRuns(b *testing.B, progs map[string]*ebpf.Program) map[string]ebpf.ProgramStats {
	out := map[string]ebpf.ProgramStats{}
	for name, p := range progs {
		st, err := p.Stats()
		if err != nil {
			b.Fatalf("statistics of %s: %v", name, err)
		}
		out[name] = *st
	}
	return out
}
