package scenario

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/sysattr"
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
			if err := sysattr.Write(filepath.Join(v2, "cgroup.subtree_control"), "+memory"); err != nil {
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
				_ = sysattr.Write(rootProcs, p)
			}
			if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("memory cgroup %s not removed", dir)
	})
	if err := sysattr.Write(filepath.Join(dir, limitFile), strconv.FormatInt(limit, 10)); err != nil {
		t.Fatalf("memory cgroup: %v", err)
	}
	return filepath.Join(dir, "cgroup.procs")
}

// CgroupWriteback says whether the kernel gives each memory cgroup a dirty
// limit of its own (cgroup writeback): the memory and io controllers are
// both on the unified (v2) hierarchy; else why not.
func CgroupWriteback() (bool, string) {
	for _, v2 := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		b, err := os.ReadFile(filepath.Join(v2, "cgroup.controllers"))
		if err != nil {
			continue
		}
		c := " " + strings.TrimSpace(string(b)) + " "
		if strings.Contains(c, " memory ") && strings.Contains(c, " io ") {
			return true, ""
		}
		return false, fmt.Sprintf("the cgroup v2 hierarchy at %s has controllers %q: cgroup writeback needs memory and io there", v2, strings.TrimSpace(string(b)))
	}
	return false, "no cgroup v2 hierarchy"
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
	output := filepath.Join(t.TempDir(), "fio.json")
	// fio is moved into the cgroup as soon as it started: its first
	// writes may come before, the rest are under the limit.
	args := []string{"--name=buffered", "--filename=/dev/" + dev, "--rw=write", "--bs=1m", "--ioengine=psync",
		"--time_based", fmt.Sprintf("--runtime=%dms", dur.Milliseconds()), "--output-format=json", "--output=" + output}
	args = append(args, extra...)
	r := fioRun{what: "writer", name: "fio", argv: append([]string{bin}, args...), timeout: dur + 2*time.Minute, output: output}
	if procs != "" {
		r.started = func(pid int) error {
			if err := sysattr.Write(procs, strconv.Itoa(pid)); err != nil {
				return fmt.Errorf("moving fio into %s: %w", procs, err)
			}
			return nil
		}
	}
	return startFio(t, r)
}
