package scenario

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/command"
	"github.com/whyslow/whyslow/internal/sysattr"
)

// FS is a filesystem made for a scenario, on a device of its own.
type FS struct {
	Dev  string // its device: a loop device, e.g. "loop4", or the kernel matrix's scratch disk
	Dir  string // where it is mounted
	Type string // "ext4", "xfs"
	// InMemory says that the device's data is in memory (a loop device
	// over tmpfs): writeback to it keeps up with any writer.
	InMemory bool
}

// ScratchSerial is the serial of the kernel matrix's scratch disk (see
// tools/vmtest): a virtio disk of 2 GiB for the scenarios' filesystems,
// whose writes the host limits to 32 MiB/s, so that writeback to it falls
// behind a buffered writer as it does on a real disk.
const ScratchSerial = "scratch"

// SlowSerial is the serial of the kernel matrix's slow disk (see
// tools/vmtest): a virtio disk of 2 GiB whose I/Os the host limits to 300
// per second, a disk whose queue a writer fills.
const SlowSerial = "hdd"

// SlowDisk returns the kernel matrix's slow disk (SlowSerial) for the test
// to use raw, or "" where there is none (this host). Cleanup wipes its
// first MiB. Tests that use it must not run in parallel with another that
// does (the bcache tests).
func SlowDisk(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	dev := DiskBySerial(SlowSerial)
	if dev == "" {
		return ""
	}
	t.Cleanup(func() {
		if err := zero("/dev/"+dev, 1<<20); err != nil {
			t.Errorf("slow disk cleanup: wiping %s: %v", dev, err)
		}
	})
	return dev
}

// scratch says whether a Filesystem of this process has the scratch disk.
var scratch struct {
	sync.Mutex
	busy bool
}

// claimScratch returns the scratch disk when the machine has one (the
// kernel matrix) of at least size bytes and no Filesystem of this process
// has it, else "". Cleanup wipes what was written at its start (a
// filesystem's superblock: the next mkfs finds none) and frees it.
func claimScratch(t testing.TB, size int64) string {
	t.Helper()
	dev := DiskBySerial(ScratchSerial)
	if dev == "" {
		return ""
	}
	b, err := os.ReadFile(filepath.Join("/sys/block", dev, "size"))
	if sectors, perr := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err != nil || perr != nil || sectors*512 < size {
		t.Logf("scenario: scratch disk %s: %d bytes wanted, has %s sectors (%v)", dev, size, strings.TrimSpace(string(b)), err)
		return ""
	}
	scratch.Lock()
	defer scratch.Unlock()
	if scratch.busy {
		return ""
	}
	scratch.busy = true
	if err := zero("/dev/"+dev, 1<<20); err != nil {
		t.Fatalf("filesystem: %v", err)
	}
	t.Cleanup(func() {
		if err := zero("/dev/"+dev, 1<<20); err != nil {
			t.Errorf("filesystem cleanup: wiping %s: %v", dev, err)
		}
		scratch.Lock()
		scratch.busy = false
		scratch.Unlock()
	})
	return dev
}

// Filesystem makes a filesystem of fstype on a device of its own and
// mounts it with the options opts ("" for none). The device is a new loop
// device with direct I/O over a filled file under the temp directory (on
// this host's disk: I/O to it is I/O to that disk, with its latency).
// Where the temp directory is in memory (the qemu guests), it is the
// kernel matrix's scratch disk (ScratchSerial), a real disk of the guest,
// when that is there and free; else a loop device without direct I/O,
// which says so (InMemory): its latency is memory's, its signals the
// kernel's. It skips, saying why, when mkfs for fstype is not installed.
// Cleanup unmounts it and detaches or wipes the device. An fstype of ""
// makes no filesystem: Dir is "".
func Filesystem(t testing.TB, fstype string, size int64, opts string) FS {
	t.Helper()
	RequireRoot(t)
	hold(t)
	mkfs, err := exec.LookPath("mkfs." + fstype)
	if err != nil && fstype != "" {
		Skip(t, "scenario: mkfs.%s is not installed", fstype)
	}
	dir := t.TempDir()
	var st unix.Statfs_t
	inMemory := unix.Statfs(dir, &st) == nil && (st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC)
	if inMemory {
		if dev := claimScratch(t, size); dev != "" {
			t.Logf("scenario: %s is in memory: the filesystem goes on the scratch disk /dev/%s", dir, dev)
			// as big as asked (its inode tables written at once: no lazy
			// initialisation competing with the scenario's writes)
			extra := map[string][]string{
				"ext4": {"-E", "lazy_itable_init=0,lazy_journal_init=0", "/dev/" + dev, fmt.Sprintf("%dk", size>>10)},
				"xfs":  {"-d", fmt.Sprintf("size=%d", size), "/dev/" + dev},
			}[fstype]
			return makeFS(t, FS{Dev: dev}, mkfs, fstype, opts, "the scratch disk", extra...)
		}
	}
	backing := filepath.Join(dir, fmt.Sprintf("%s%d.img", backingPrefix, os.Getpid()))
	// allocated where the filesystem can (writes to a hole allocate too)
	if _, err := command.Run(2*time.Minute, "fallocate", "-l", fmt.Sprint(size), backing); err != nil {
		if err := os.Truncate(backing, size); err != nil {
			if f, cerr := os.Create(backing); cerr == nil {
				err = f.Truncate(size)
				f.Close()
			}
			if err != nil {
				t.Fatalf("filesystem: %v", err)
			}
		}
	}
	largs := []string{"--find", "--show", "--direct-io=on", backing}
	if inMemory {
		// Older kernels refuse direct I/O over tmpfs (EINVAL) instead of
		// falling back to buffered I/O.
		largs = []string{"--find", "--show", backing}
	}
	out, err := command.Run(30*time.Second, "losetup", largs...)
	if err != nil {
		t.Fatalf("filesystem: %v", err)
	}
	if dio, err := os.ReadFile("/sys/block/" + filepath.Base(strings.TrimSpace(out)) + "/loop/dio"); err == nil && strings.TrimSpace(string(dio)) != "1" {
		t.Logf("scenario: %s: no direct I/O on %s (in memory?)", strings.TrimSpace(out), dir)
	}
	dev := filepath.Base(strings.TrimSpace(out))
	if !loopName.MatchString(dev) {
		t.Fatalf("filesystem: losetup printed %q, want /dev/loopN", strings.TrimSpace(out))
	}
	t.Cleanup(func() {
		if _, err := command.Run(30*time.Second, "losetup", "--detach", "/dev/"+dev); err != nil {
			t.Errorf("filesystem cleanup: %v", err)
		}
	})
	return makeFS(t, FS{Dev: dev, InMemory: inMemory}, mkfs, fstype, opts, backing)
}

// makeFS makes the filesystem of fs on fs.Dev (over what: how the log
// names where its data goes) and mounts it, unmounted on cleanup. mkfsArgs,
// when given, are mkfs's arguments after its own (-q, and -f for xfs),
// device included.
func makeFS(t testing.TB, fs FS, mkfs, fstype, opts, over string, mkfsArgs ...string) FS {
	t.Helper()
	dev := fs.Dev
	if fstype == "" {
		t.Logf("scenario: /dev/%s (over %s), no filesystem", dev, over)
		return fs
	}
	args := []string{"-q"}
	if fstype == "xfs" {
		args = append(args, "-f")
	}
	if len(mkfsArgs) == 0 {
		mkfsArgs = []string{"/dev/" + dev}
	}
	if _, err := command.Run(2*time.Minute, mkfs, append(args, mkfsArgs...)...); err != nil {
		t.Fatalf("filesystem: %v", err)
	}
	mnt := t.TempDir()
	margs := []string{"-t", fstype}
	if opts != "" {
		margs = append(margs, "-o", opts)
	}
	if _, err := command.Run(time.Minute, "mount", append(margs, "/dev/"+dev, mnt)...); err != nil {
		t.Fatalf("filesystem: %v", err)
	}
	t.Cleanup(func() {
		if _, err := command.Run(time.Minute, "umount", mnt); err != nil {
			t.Errorf("filesystem cleanup: %v", err)
		}
	})
	t.Logf("scenario: %s on /dev/%s (over %s), mounted at %s (%s)", fstype, dev, over, mnt, opts)
	fs.Dir, fs.Type = mnt, fstype
	return fs
}

// Sysctl sets /proc/sys/NAME (dots or slashes) to value and restores the
// value it had on cleanup.
func Sysctl(t testing.TB, name, value string) {
	t.Helper()
	RequireRoot(t)
	p := filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/"))
	old, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("sysctl %s: %v", name, err)
	}
	if err := sysattr.Write(p, value); err != nil {
		t.Fatalf("sysctl %s=%s: %v", name, value, err)
	}
	t.Cleanup(func() {
		if err := sysattr.Write(p, strings.TrimSpace(string(old))); err != nil {
			t.Errorf("sysctl cleanup: %s=%s: %v", name, old, err)
		}
	})
}

// DirtyLimits sets vm.dirty_bytes and vm.dirty_background_bytes (0: left
// as they are), restoring the four dirty sysctls on cleanup (writing one of
// a _bytes/_ratio pair zeroes the other).
func DirtyLimits(t testing.TB, bytes, background int64) {
	t.Helper()
	RequireRoot(t)
	saved := map[string]string{}
	for _, n := range []string{"dirty_ratio", "dirty_bytes", "dirty_background_ratio", "dirty_background_bytes"} {
		b, err := os.ReadFile("/proc/sys/vm/" + n)
		if err != nil {
			t.Fatalf("dirty limits: %v", err)
		}
		saved[n] = strings.TrimSpace(string(b))
	}
	t.Cleanup(func() {
		// the non-zero one of each pair is the one in force
		for _, pair := range [][2]string{{"dirty_bytes", "dirty_ratio"}, {"dirty_background_bytes", "dirty_background_ratio"}} {
			n := pair[1]
			if saved[pair[0]] != "0" {
				n = pair[0]
			}
			if err := sysattr.Write("/proc/sys/vm/"+n, saved[n]); err != nil {
				t.Errorf("dirty limits cleanup: vm.%s=%s: %v", n, saved[n], err)
			}
		}
	})
	if bytes > 0 {
		if err := sysattr.Write("/proc/sys/vm/dirty_bytes", fmt.Sprint(bytes)); err != nil {
			t.Fatalf("vm.dirty_bytes: %v", err)
		}
	}
	if background > 0 {
		if err := sysattr.Write("/proc/sys/vm/dirty_background_bytes", fmt.Sprint(background)); err != nil {
			t.Fatalf("vm.dirty_background_bytes: %v", err)
		}
	}
}

// NamedJob is a fio job run under a name of its own (a copy of fio called
// name), so that a report names it.
type NamedJob struct{ *Fio }

// StartNamedJob starts fio, as name, with args (fio's options; a
// --runtime bounds it), and stops it on cleanup.
func StartNamedJob(t testing.TB, name string, args ...string) *NamedJob {
	t.Helper()
	return StartNamedJobIn(t, "", name, args...)
}

// StartNamedJobIn is StartNamedJob in the cgroup whose cgroup.procs file is
// procs ("" for none): a shell moves itself there, then execs the job
// (keeping its pid), so that every process of the job runs in the cgroup.
func StartNamedJobIn(t testing.TB, procs, name string, args ...string) *NamedJob {
	t.Helper()
	RequireRoot(t)
	fio, err := lookPath("fio", "fio")
	if err != nil {
		t.Fatalf("job %s: %v", name, err)
	}
	bin := filepath.Join(t.TempDir(), name)
	if _, err := command.Run(30*time.Second, "cp", fio, bin); err != nil {
		t.Fatalf("job %s: %v", name, err)
	}
	// fio runs each job in a child: the group is killed at cleanup, so
	// that none keeps the scenario's files open.
	argv := append([]string{bin, "--name=" + name}, args...)
	if procs != "" {
		argv = append([]string{"/bin/sh", "-c", `echo $$ > "$0" && exec "$@"`, procs}, argv...)
	}
	j := &NamedJob{startFio(t, fioRun{what: "job " + name, name: name,
		argv: argv,
		// fio's job processes may leave the group: every process of the
		// copy is killed, until none is left
		reap: func() {
			waitFor(10*time.Second, func() bool {
				left := false
				ents, _ := os.ReadDir("/proc")
				for _, e := range ents {
					pid, err := strconv.Atoi(e.Name())
					if err != nil {
						continue
					}
					if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe == bin {
						left = true
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
				return !left
			})
		}})}
	in := ""
	if procs != "" {
		in = " in " + filepath.Dir(procs)
	}
	t.Logf("scenario: %s (pid %d)%s: fio %s", name, j.Pid, in, strings.Join(args, " "))
	return j
}

// Wait waits for the job to end.
func (j *NamedJob) Wait() error {
	_, err := j.Fio.Wait()
	return err
}
