package probes

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
)

var seedThreads = flag.Int("seedthreads", 3000, "BenchmarkArmSeed: threads to start besides the host's (in a process of their own, half asleep in read(2) of a pipe, half in poll)")

// BenchmarkArmSeed measures what finding the storage calls in progress
// costs an arming (armed mode, syscall_armed.go) with many threads on the
// host: seed, the iter/task program sc_seed's run over every task (where
// the kernel has it), against the /proc walk of the kernels without it
// (inStorageCall), and a whole Disarm + Arm of the syscall probe. Half
// the extra threads sleep in read(2) of a pipe (a storage call's number:
// the iterator finds its file, on no block device), half in poll. Root
// only; run under the heavy lock:
//
//	go test ./probes -run '^$' -bench ArmSeed -benchtime 50x [-args -seedthreads 3000]
func BenchmarkArmSeed(b *testing.B) {
	if os.Geteuid() != 0 || testing.Short() {
		b.Skip("needs root: loads BPF programs")
	}
	cfg := Config{MinLatency: 10 * time.Millisecond, SysFS: "/sys", ProcFS: "/proc",
		Mechanism: MechanismChoice{Per: map[string]event.Mechanism{event.ProbeSyscall: event.MechTPBTF}}}
	g := Start(cfg, new(blkSink), syscallProbe{})
	defer g.Stop()
	var r *syscallRunning
	g.mu.Lock()
	for _, s := range g.running {
		if sr, ok := s.r.(*syscallRunning); ok {
			r = sr
		}
	}
	g.mu.Unlock()
	if r == nil {
		b.Fatalf("the syscall probe did not start: %+v", g.Statuses())
	}
	// The threads, in a process of their own (the /proc walk leaves
	// whyslow's own out): the test binary run again (runSeedHelper).
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), seedHelperEnv+"=threads "+strconv.Itoa(*seedThreads)+" -")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	helper := func() int {
		es, _ := os.ReadDir(filepath.Join("/proc", strconv.Itoa(cmd.Process.Pid), "task"))
		return len(es)
	}
	for deadline := time.Now().Add(time.Minute); helper() < *seedThreads && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	tasks := 0
	procThreads("/proc", func(string, int, int) { tasks++ })
	b.Logf("%d threads in the helper, %d on the host in all (whyslow's left out)", helper(), tasks)
	if r.seeder != nil {
		b.Run("iter", func(b *testing.B) {
			for b.Loop() {
				r.sums.Lock()
				_, _, _, err := r.seed()
				r.sums.Unlock()
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	} else {
		b.Log("no seeding on this kernel: the /proc walk only")
	}
	b.Run("proc", func(b *testing.B) {
		for b.Loop() {
			r.inStorageCall(nil)
		}
	})
	b.Run("disarm+arm", func(b *testing.B) {
		for b.Loop() {
			if err := g.Disarm(); err != nil {
				b.Fatal(err)
			}
			if err := g.Arm(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// seedThreadsHelper starts n threads, half asleep in read(2) of a pipe,
// half in poll of it, and waits for ever.
func seedThreadsHelper(n int) error {
	var p [2]int
	if err := unix.Pipe(p[:]); err != nil {
		return err
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread() // the thread exits with it: no reuse
			if i%2 == 0 {
				buf := make([]byte, 1)
				unix.Read(p[0], buf)
				return
			}
			unix.Poll([]unix.PollFd{{Fd: int32(p[0]), Events: unix.POLLIN}}, -1)
		}()
	}
	wg.Wait()
	return nil
}
