package scenario

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// MemoryCgroup makes a memory cgroup limited to limit bytes (cgroup v2
// memory.max where the unified hierarchy has the memory controller, else
// cgroup v1 memory.limit_in_bytes) and returns its cgroup.procs file. The
// cleanup moves what is left in it to the root and removes it.
func MemoryCgroup(t testing.TB, limit int64) string {
	t.Helper()
	RequireRoot(t)
	name := fmt.Sprintf("whyslow-test-mem-%d", os.Getpid())
	var dir, limitFile, rootProcs string
	for _, v2 := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		b, err := os.ReadFile(filepath.Join(v2, "cgroup.controllers"))
		if err == nil && strings.Contains(" "+string(b)+" ", " memory ") {
			if err := writeAttr(filepath.Join(v2, "cgroup.subtree_control"), "+memory"); err != nil {
				t.Fatalf("memory cgroup: %v", err)
			}
			dir, limitFile, rootProcs = filepath.Join(v2, name), "memory.max", filepath.Join(v2, "cgroup.procs")
			break
		}
	}
	if dir == "" {
		v1 := "/sys/fs/cgroup/memory"
		if _, err := os.Stat(filepath.Join(v1, "memory.limit_in_bytes")); err != nil {
			Skip(t, "no memory cgroup controller (neither cgroup v2 nor v1 memory)")
		}
		dir, limitFile, rootProcs = filepath.Join(v1, name), "memory.limit_in_bytes", filepath.Join(v1, "cgroup.procs")
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("memory cgroup: %v", err)
	}
	t.Cleanup(func() {
		for i := 0; i < 50; i++ {
			b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			for _, p := range strings.Fields(string(b)) {
				_ = writeAttr(rootProcs, p)
			}
			if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("memory cgroup %s not removed", dir)
	})
	if err := writeAttr(filepath.Join(dir, limitFile), strconv.FormatInt(limit, 10)); err != nil {
		t.Fatalf("memory cgroup: %v", err)
	}
	return filepath.Join(dir, "cgroup.procs")
}

// BufferedWriter starts fio writing /dev/<dev> through the page cache
// (1 MiB sequential buffered writes, over and over) for dur, moved into
// the cgroup whose cgroup.procs file is procs ("" for none) once started
// (without --thread: its job is a child process, forked after the move). The cleanup kills
// fio if it still runs.
func BufferedWriter(t testing.TB, dev string, dur time.Duration, procs string, extra ...string) *Fio {
	t.Helper()
	RequireRoot(t)
	bin, err := lookPath("fio", "fio")
	if err != nil {
		t.Fatalf("writer: %v", err)
	}
	if err := checkDev(dev); err != nil {
		t.Fatalf("writer: %v", err)
	}
	f := &Fio{Output: filepath.Join(t.TempDir(), "fio.json"), done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), dur+2*time.Minute)
	f.cancel = cancel
	// fio is moved into the cgroup as soon as it started: its first
	// writes may come before, the rest are under the limit.
	args := []string{"--name=buffered", "--filename=/dev/" + dev, "--rw=write", "--bs=1m", "--ioengine=psync",
		"--time_based", fmt.Sprintf("--runtime=%dms", dur.Milliseconds()), "--output-format=json", "--output=" + f.Output}
	args = append(args, extra...)
	f.cmd = exec.CommandContext(ctx, bin, args...)
	f.cmd.Stderr = &f.stderr
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	f.cmd.Cancel = func() error { return syscall.Kill(-f.cmd.Process.Pid, syscall.SIGKILL) }
	f.cmd.WaitDelay = 5 * time.Second
	if err := f.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("writer: starting fio: %v", err)
	}
	f.Pid = f.cmd.Process.Pid
	if procs != "" {
		if err := writeAttr(procs, strconv.Itoa(f.Pid)); err != nil {
			syscall.Kill(-f.Pid, syscall.SIGKILL)
			t.Fatalf("writer: moving fio into %s: %v", procs, err)
		}
	}
	go func() {
		f.err = f.cmd.Wait()
		close(f.done)
	}()
	t.Cleanup(func() {
		select {
		case <-f.done:
		default:
			syscall.Kill(-f.Pid, syscall.SIGKILL)
		}
		f.Wait()
	})
	return f
}
