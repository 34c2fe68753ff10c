package probes

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
)

func TestParseSysfsBlockPath(t *testing.T) {
	tests := []struct {
		path, dev, attr string
		ok              bool
		keep            bool // isBlockAttr(attr)
	}{
		{"/sys/devices/virtual/block/loop0/queue/scheduler", "loop0", "queue/scheduler", true, true},
		{"/sys/block/sda/queue/nr_requests", "sda", "queue/nr_requests", true, true},
		{"/sys/block/sda/sda1/uevent", "sda", "sda1/uevent", true, true},
		{"/sys/block/nvme0n1/nvme0n1p2/stat", "nvme0n1", "nvme0n1p2/stat", true, false},
		{"/sys/class/block/bcache0/bcache/cache_mode", "bcache0", "bcache/cache_mode", true, true},
		{"/sys/dev/block/7:0/queue/wbt_lat_usec", "7:0", "queue/wbt_lat_usec", true, true},
		{"/sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda/queue/read_ahead_kb", "vda", "queue/read_ahead_kb", true, true},
		{"/sys/devices/platform/host0/target0:0:0/0:0:0:0/block/sdb/device/queue_depth", "sdb", "device/queue_depth", true, true},
		{"/sys/block/md0/md/sync_speed_max", "md0", "md/sync_speed_max", true, true},
		{"/sys/block/loop0/uevent", "loop0", "uevent", true, true},
		{"/sys/block/loop0/bdi/read_ahead_kb", "loop0", "bdi/read_ahead_kb", true, true},
		{"/sys/block//loop0/./queue/../queue/scheduler", "loop0", "queue/scheduler", true, true},
		{"/sys/block/loop0/size", "loop0", "size", true, false},
		{"/sys/block/loop0/queue", "loop0", "queue", true, false},
		{"/sys/block/loop0", "", "", false, false},
		{"/sys/block", "", "", false, false},
		{"/sys/class/net/eth0/mtu", "", "", false, false},
		{"/sys/fs/cgroup/io.max", "", "", false, false},
		{"/sys/devices/system/cpu/cpu0/online", "", "", false, false},
		{"/proc/sys/vm/dirty_ratio", "", "", false, false},
		{"relative/queue/scheduler", "", "", false, false},
		{"", "", "", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			dev, attr, ok := parseSysfsBlockPath(tt.path)
			if dev != tt.dev || attr != tt.attr || ok != tt.ok {
				t.Errorf("parseSysfsBlockPath(%q) = %q, %q, %v; want %q, %q, %v", tt.path, dev, attr, ok, tt.dev, tt.attr, tt.ok)
			}
			if ok {
				if keep := isBlockAttr(attr); keep != tt.keep {
					t.Errorf("isBlockAttr(%q) = %v, want %v", attr, keep, tt.keep)
				}
			}
		})
	}
}

// A fake sysfs tree: the partition sda1 of sda and loop0, reached through
// /sys/class/block and /sys/dev/block links as in the real one.
func TestResolveSysfsDevice(t *testing.T) {
	root := t.TempDir()
	mk := func(p string) {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, name string) {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	mk("devices/pci0/block/sda/sda1")
	mk("devices/virtual/block/loop0")
	mk("class/block")
	mk("dev/block")
	if err := os.WriteFile(filepath.Join(root, "devices/pci0/block/sda/sda1/partition"), []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link("../../devices/pci0/block/sda", "class/block/sda")
	link("../../devices/pci0/block/sda/sda1", "class/block/sda1")
	link("../../devices/virtual/block/loop0", "class/block/loop0")
	link("../../devices/pci0/block/sda/sda1", "dev/block/8:1")
	link("../../devices/virtual/block/loop0", "dev/block/7:0")

	for _, tt := range []struct{ dev, attr, wantDev, wantAttr string }{
		{"7:0", "queue/scheduler", "loop0", "queue/scheduler"},
		{"8:1", "uevent", "sda", "sda1/uevent"},
		{"sda1", "uevent", "sda", "sda1/uevent"},
		{"sda", "queue/nr_requests", "sda", "queue/nr_requests"},
		{"gone0", "queue/scheduler", "gone0", "queue/scheduler"},
		{"9:9", "uevent", "9:9", "uevent"},
	} {
		d, a := resolveSysfsDevice(root, tt.dev, tt.attr)
		if d != tt.wantDev || a != tt.wantAttr {
			t.Errorf("resolveSysfsDevice(%q, %q) = %q, %q; want %q, %q", tt.dev, tt.attr, d, a, tt.wantDev, tt.wantAttr)
		}
	}
}

// A shell writing a loop device's scheduler is reported with its pid, the
// device and the attribute; an open for reading is not.
func TestSysfsSchedulerWrite(t *testing.T) {
	blkNeedRoot(t)
	for _, tt := range []struct {
		name        string
		tracepoints bool
		mech        event.Mechanism
	}{
		{"tracepoint", true, event.MechTracepoint},
		{"tp_btf fallback", false, event.MechTPBTF},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sink := new(blkSink)
			r, st := startSysfs(Config{SysFS: "/sys", ProcFS: "/proc"}, sink, tt.tracepoints)
			if st.Status != event.StatusOK || r == nil {
				t.Fatalf("starting sysfs: %+v", st)
			}
			t.Cleanup(func() { r.Stop() })
			t.Logf("status: %+v", st)
			if st.Mechanism != tt.mech {
				t.Errorf("mechanism %q, want %q", st.Mechanism, tt.mech)
			}
			checkSchedulerWrite(t, sink, r)
		})
	}
}

func checkSchedulerWrite(t *testing.T, sink *blkSink, r Running) {
	loop := newBlkLoop(t, 16<<20)

	sched := "/sys/block/" + loop.name + "/queue/scheduler"
	reader := exec.Command("sh", "-c", "cat "+sched+" >/dev/null")
	if out, err := reader.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	writer := exec.Command("sh", "-c", "echo none > "+sched)
	if out, err := writer.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	pid := uint32(writer.Process.Pid)

	var got event.SysfsWrite
	found := blkWaitUntil(5*time.Second, func() bool {
		for _, w := range sink.sysfsWrites() {
			if w.Task.Tgid == pid {
				got = w
				return true
			}
		}
		return false
	})
	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if !found {
		t.Fatalf("no SysfsWrite from the shell (pid %d); got %+v", pid, sink.sysfsWrites())
	}
	if got.Device != loop.name || got.Attr != "queue/scheduler" || got.Path != sched || got.Task.Comm != "sh" {
		t.Errorf("got %+v, want device %s attr queue/scheduler path %s comm sh", got, loop.name, sched)
	}
	if got.Time <= 0 {
		t.Errorf("time %d", got.Time)
	}
	for _, w := range sink.sysfsWrites() {
		if w.Task.Tgid == uint32(reader.Process.Pid) {
			t.Errorf("an open for reading was reported: %+v", w)
		}
	}
	assertProgsUnloaded(t, "sysfs_openat", "sysfs_openat2", "sysfs_open_old", "sysfs_sys_enter")
}

// In a private mount namespace without tracefs, ensureTracefs mounts it at
// /sys/kernel/tracing and says so.
func TestEnsureTracefsMounts(t *testing.T) {
	blkNeedRoot(t)
	type result struct {
		note  string
		err   error
		magic int64
		setup error
	}
	before, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	res := make(chan result, 1)
	inPrivateNS := func() {
		// The thread's mount namespace is changed: never unlock it, so the
		// runtime throws the thread away when this goroutine ends.
		runtime.LockOSThread()
		var r result
		defer func() { res <- r }()
		if r.setup = unix.Unshare(unix.CLONE_NEWNS); r.setup != nil {
			return
		}
		if r.setup = unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); r.setup != nil {
			return
		}
		for _, d := range []string{"/sys/kernel/debug/tracing", tracefsDir, "/sys/kernel/debug"} {
			for unix.Unmount(d, unix.MNT_DETACH) == nil {
			}
		}
		var fs unix.Statfs_t
		if unix.Statfs(tracefsDir, &fs) == nil && int64(fs.Type) == unix.TRACEFS_MAGIC {
			r.setup = errors.New("tracefs still mounted after unmounting it")
			return
		}
		r.note, r.err = ensureTracefs()
		if unix.Statfs(tracefsDir, &fs) == nil {
			r.magic = int64(fs.Type)
		}
	}
	go func() {
		// Never on the main thread: the runtime keeps it (it cannot end
		// it), and /proc/self/... shows its namespace, so the process's
		// later mounts would be missing there (TestWritebackLive saw no
		// mount of its filesystem). Holding the main thread locked here
		// puts the work on another.
		runtime.LockOSThread()
		if unix.Gettid() != unix.Getpid() {
			inPrivateNS()
			return
		}
		defer runtime.UnlockOSThread()
		done := make(chan struct{})
		go func() { defer close(done); inPrivateNS() }()
		<-done
	}()
	r := <-res
	if r.setup != nil {
		t.Fatalf("setting up a mount namespace without tracefs: %v", r.setup)
	}
	if r.err != nil {
		t.Fatalf("ensureTracefs: %v", r.err)
	}
	if r.magic != unix.TRACEFS_MAGIC {
		t.Errorf("%s is not tracefs after ensureTracefs (magic %#x)", tracefsDir, r.magic)
	}
	if !strings.Contains(r.note, "mounted it at "+tracefsDir) {
		t.Errorf("note %q does not say tracefs was mounted", r.note)
	}
	// The process's namespace (what /proc/self shows) is still the one it
	// had: the private one was never the main thread's.
	if after, _ := os.Readlink("/proc/self/ns/mnt"); after != before {
		t.Errorf("the process's mount namespace is %q after the test, not %q as before", after, before)
	}
	// The host's mounts are untouched.
	var fs unix.Statfs_t
	if err := unix.Statfs(tracefsDir, &fs); err != nil || int64(fs.Type) != unix.TRACEFS_MAGIC {
		t.Errorf("host %s changed: %v", tracefsDir, err)
	}
}
