package main

// Failing devices, for real, in the kernel matrix (scsi_debug, loaded at
// boot by tools/vmtest): medium errors, and commands the device drops so
// that they time out and the SCSI error handler retries them. The top
// finding must be failing-device on the scsi_debug disk, naming the reader;
// the same reader on the healthy disk gives no such finding.

import (
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/scenario"
)

// directReader reads 4 KiB blocks of /dev/<dev> with O_DIRECT from this
// process until stop is called: the block at offset bad every other read
// when bad >= 0, else blocks spread over the first size bytes. Errors are
// what the test is about: they are counted, not fatal.
func directReader(t *testing.T, dev string, size int64, bad int64) (stop func() (reads, errors int)) {
	t.Helper()
	fd, err := unix.Open("/dev/"+dev, unix.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu           sync.Mutex
		done         bool
		reads, fails int
		wg           sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := int64(0); ; i++ {
			mu.Lock()
			if done {
				mu.Unlock()
				return
			}
			mu.Unlock()
			off := (i * 7919 % (size / 4096)) * 4096
			if bad >= 0 && i%2 == 0 {
				off = bad
			}
			_, err := unix.Pread(fd, buf, off)
			mu.Lock()
			reads++
			if err != nil {
				fails++
			}
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return func() (int, int) {
		mu.Lock()
		done = true
		mu.Unlock()
		wg.Wait()
		unix.Close(fd)
		unix.Munmap(buf)
		return reads, fails
	}
}

func TestFailingDevice(t *testing.T) {
	scenario.RequireRoot(t)
	dev := scenario.ScsiDebugDisk(t)
	const size = 8 << 20 // scsi_debug's default disk
	for _, tc := range []struct {
		name           string
		opts, everyNth int
		bad            int64
		want           bool
	}{
		{"medium-errors", 2, 0, scenario.ScsiDebugMediumErrorOffset, true},
		{"timeouts", 4, 25, -1, true},
		{"control", 0, 0, scenario.ScsiDebugMediumErrorOffset, false},
		// every command after the first four dropped: each times out, its
		// retry after the abort too, and the host's error handler escalates
		// (device, target, bus, host reset) until it takes the disk offline
		{"resets", 4, -4, -1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "resets" {
				scsiDebugRecoverable(t, dev)
			}
			scenario.ScsiDebugTimeout(t, dev, 2)
			scenario.ScsiDebugFaults(t, tc.opts, tc.everyNth)
			defer scenario.ScsiDebugFaults(t, 0, 0)
			var reads, fails int
			rep := diagnoseUnder(t, 10*time.Second, func() func() {
				stop := directReader(t, dev, size, tc.bad)
				return func() { reads, fails = stop() }
			}, "--device", dev, "--record", tracePath(t, "scsi-"+tc.name))
			t.Logf("reads %d, failed %d; findings:\n%s", reads, fails, summary(rep))
			checkFailing(t, rep, dev, tc.want, "e2e.test", "whyslow.test")
			if tc.name != "timeouts" && tc.name != "resets" {
				return
			}
			// SCSI's error handling, said: the commands that timed out
			// (reads); and where an abort did not recover them (resets),
			// the host's error handler woken for them.
			f, ok := findingOf(rep, "failing-device")
			if !ok {
				return
			}
			n, _ := evidence(f, "scsi_timeouts").(float64)
			r, _ := evidence(f, "recoveries").(float64)
			cmds := stringsOf(evidence(f, "scsi_commands"))
			t.Logf("scsi_timeouts %v, recoveries %v, commands %v", n, r, cmds)
			if n == 0 || !slices.ContainsFunc(cmds, func(c string) bool { return strings.HasPrefix(c, "READ") }) {
				t.Errorf("evidence scsi_timeouts %v, scsi_commands %v: want the reads that timed out", n, cmds)
			}
			if !strings.Contains(f.Explanation, "SCSI command") {
				t.Errorf("explanation does not say the SCSI commands timed out: %s", f.Explanation)
			}
			if tc.name != "resets" {
				return
			}
			if r == 0 {
				t.Errorf("evidence recoveries %v: want the error handler's wakeups", r)
			}
			if !strings.Contains(f.Explanation, "SCSI error handler") {
				t.Errorf("explanation does not say the error handler ran: %s", f.Explanation)
			}
		})
	}
}

// scsiDebugRecoverable shortens the error handler's own commands' timeout
// (device/eh_timeout) to 1 s and, on cleanup, puts it back and the disk
// back online if the escalation took it offline (a reset that works
// leaves it running).
func scsiDebugRecoverable(t *testing.T, dev string) {
	t.Helper()
	eh := "/sys/block/" + dev + "/device/eh_timeout"
	orig, err := os.ReadFile(eh)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(eh, []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		scenario.ScsiDebugFaults(t, 0, 0)
		// The kernel refuses (EINVAL) while the error handler still
		// holds the host: try for 10 s. A disk left offline stays so for
		// the rest of the guest (the matrix's scsi_debug disk, which only
		// these tests use): said, not failed.
		state := "/sys/block/" + dev + "/device/state"
		for end := time.Now().Add(10 * time.Second); ; time.Sleep(500 * time.Millisecond) {
			b, err := os.ReadFile(state)
			if err != nil || strings.TrimSpace(string(b)) == "running" {
				break
			}
			if err := os.WriteFile(state, []byte("running"), 0o644); err == nil {
				break
			} else if time.Now().After(end) {
				t.Logf("%s stays %s: putting it back online: %v", dev, strings.TrimSpace(string(b)), err)
				break
			}
		}
		if err := os.WriteFile(eh, orig, 0o644); err != nil {
			t.Errorf("%s: %v", eh, err)
		}
	})
}

// failingWrites are fio's options for random O_DIRECT 4 KiB writes that
// go on when some fail.
var failingWrites = []string{"--direct=1", "--rw=randwrite", "--bs=4k", "--continue_on_error=all", "--rate_iops=400"}

// On this host: a loop device whose backing store is full fails fio's
// writes to new blocks. The top finding is failing-device on it, naming
// fio; with room enough, the same writer gives no such finding.
func TestFailingLoopDevice(t *testing.T) {
	for _, tc := range []struct {
		name string
		room int64
		want bool
	}{{"full", 4 << 20, true}, {"control", 96 << 20, false}} {
		t.Run(tc.name, func(t *testing.T) {
			scenario.RequireRoot(t)
			dev := scenario.FullLoopDevice(t, 64<<20, tc.room)
			rep := diagnoseUnder(t, 5*time.Second, func() func() {
				scenario.BufferedWriter(t, dev, 4*time.Second, "", failingWrites...)
				return func() {}
			}, "--device", dev)
			t.Logf("findings:\n%s", summary(rep))
			checkFailing(t, rep, dev, tc.want, "fio")
		})
	}
}

// checkFailing checks that the top finding is failing-device on dev naming
// a process of comm (want), or that no finding is failing-device.
func checkFailing(t *testing.T, rep *report.Report, dev string, want bool, comms ...string) {
	t.Helper()
	found := slices.IndexFunc(rep.Findings, func(f report.Finding) bool { return f.Rule == "failing-device" })
	if !want {
		if found >= 0 {
			t.Errorf("failing-device found on a healthy device: %+v", rep.Findings[found])
		}
		return
	}
	if found != 0 {
		t.Fatalf("top finding is not failing-device (at %d)", found)
	}
	top := rep.Findings[0]
	if !slices.Contains(top.Devices, dev) {
		t.Errorf("failing-device names %v, want %s", top.Devices, dev)
	}
	if !slices.ContainsFunc(top.Processes, func(p report.Process) bool { return slices.Contains(comms, p.Comm) }) {
		t.Errorf("failing-device names %+v, not %v", top.Processes, comms)
	}
	t.Logf("title: %s", top.Title)
}
