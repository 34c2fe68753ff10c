package vmtest

import (
	"cmp"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Config is one `make vmtest` run.
type Config struct {
	Repo    string // the whyslow checkout
	Cache   string // kernels and apt state, kept between runs
	Out     string // results: Out/<kernel>/ (console.log, step logs, probes.json and probes.txt)
	Fetcher *Fetcher
	Timeout time.Duration // per kernel
	Console io.Writer     // the guests' consoles, or nil
	Log     func(format string, args ...any)
	Select  Selection
	// CPUs is the guests' vCPUs; 0 means 2. Under TCG each vCPU can take
	// a host CPU: one leaves the other free on a shared 2-CPU host (a long
	// benchmark).
	CPUs int
}

// KernelResult is one kernel's run.
type KernelResult struct {
	Kernel Kernel
	Boot   *Boot
	Dir    string // its results
	Err    error  // set when the run could not be made or did not pass
}

// Passed reports whether every step ran and exited 0.
func (r KernelResult) Passed() bool { return r.Err == nil }

// Binaries built for the guest, statically.
type binary struct {
	name string   // in /usr/local/bin
	args []string // go subcommand
}

var binaries = []binary{
	{"whyslow", []string{"build", "-trimpath", "-o", "{out}", "./cmd/whyslow"}},
	{"probes.test", []string{"test", "-c", "-o", "{out}", "./probes"}},
	{"e2e.test", []string{"test", "-c", "-o", "{out}", "./cmd/whyslow"}},
}

// hostTools are the programs the scenarios drive, copied from the host
// with their libraries: guest path -> host candidates.
var hostTools = []struct {
	guest string
	host  []string
	pkg   string
}{
	{"/usr/bin/fio", []string{"/usr/bin/fio"}, "fio"},
	{"/usr/sbin/losetup", []string{"/usr/sbin/losetup", "/sbin/losetup"}, "mount"},
	{"/usr/bin/udevadm", []string{"/usr/bin/udevadm", "/bin/udevadm"}, "udev"},
	{"/usr/sbin/make-bcache", []string{"/usr/sbin/make-bcache", "/sbin/make-bcache"}, "bcache-tools"},
	{"/bin/busybox", []string{"/bin/busybox", "/usr/bin/busybox"}, "busybox-static"},
	{"/usr/sbin/mkfs.ext4", []string{"/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"}, "e2fsprogs"},
	{"/usr/sbin/mkfs.xfs", []string{"/usr/sbin/mkfs.xfs", "/sbin/mkfs.xfs"}, "xfsprogs"},
}

// guestModules are loaded at boot (with their dependencies) where they are
// modules; built-in ones need nothing. xfs is loaded before whyslow starts:
// the tracepoints of a module loaded later are not seen.
var guestModules = []string{"virtio_pci", "virtio_blk", "loop", "bcache", "null_blk", "mq-deadline", "scsi_debug", "sd_mod", "xfs"}

// benchModules are guestModules without bcache, which only the tests use:
// a loaded stacking driver keeps whyslow's per-bio submission programs
// attached (probes/stacked.go), and the benchmark measures a host with no
// stacked device, where they are off.
var benchModules = slices.DeleteFunc(slices.Clone(guestModules), func(m string) bool { return m == "bcache" })

// Selection narrows the guest's tests (for a developer's quick rerun); the
// zero value runs everything.
type Selection struct {
	ProbesRun string // -test.run for the probes package tests
	E2ERun    string // -test.run for the end-to-end tests
	// Bench, when set, runs the benchmark driver (tools/bench/cmd/whyslow-bench)
	// with these arguments instead of the tests (make bench-vm); its
	// results go to results/bench.json.
	Bench string
}

// benchBinary is the benchmark driver, built for the guest when a Selection
// asks for it.
var benchBinary = binary{"whyslow-bench", []string{"build", "-trimpath", "-o", "{out}", "./tools/bench/cmd/whyslow-bench"}}

// benchTools are the programs the benchmark compares whyslow with, copied
// from the host to the same path in the guest with their libraries
// (stdbuf's preloaded library too: the driver reads the tools' first output
// line through it).
var benchTools = []struct{ path, pkg string }{
	{"/usr/sbin/biolatency", "libbpf-tools"},
	{"/usr/sbin/execsnoop", "libbpf-tools"},
	{"/usr/bin/stdbuf", "coreutils"},
	{"/usr/libexec/coreutils/libstdbuf.so", "coreutils"},
}

// defaultE2E are the end-to-end tests that need a kernel of the matrix (the
// bcache incident on the virtio disks) or that must hold on every kernel
// (each rung of the ladder, `whyslow probes`, the live trace commands on
// the direct probes, armed mode auto's detaching and arming of the hot
// hooks and its PSI triggers on a cgroup: each ~10 s a kernel); the
// loop-device story runs on the host in make test.
const defaultE2E = "TestBcache|TestMechanism|TestTrace|TestProbesCommand|TestCgroupThrottle|TestUnfinishedThrottledRead|TestIOCost|TestFailingDevice|TestWritebackCauses|TestArmedAuto|TestServeArmedAuto"

// leftOut are the cases of the default end-to-end set the matrix does not
// run (go test -test.skip), with why; vmtest says so for every kernel.
// None now: TestWritebackCauses/wbt, left out while it ran on qemu's disks
// (a flood did not make wbt throttle there run after run), runs on a
// null_blk disk whose every request takes 2 ms.
var leftOut []struct{ pattern, why string }

// byHand are the probes tests the matrix never runs: experiments a
// developer runs by hand, which skip (with their reason) unless asked for;
// a skip in the guest would fail the kernel.
var byHand = []struct{ pattern, why string }{
	{"TestCompletionsExperiment", "an experiment run by hand (WHYSLOW_COMPLETIONS_EXPERIMENT=loop|vda), not a check"},
}

// guestSteps are what runs in each kernel of the matrix, in order: the
// same steps in every one (leftOut is not per kernel).
func guestSteps(sel Selection) []Step {
	if sel.Bench != "" {
		return []Step{{Name: "bench", Cmd: "whyslow-bench -whyslow /usr/local/bin/whyslow -out /results/bench.md -json /results/bench.json " + sel.Bench}}
	}
	e2e, skip := defaultE2E, ""
	if sel.E2ERun != "" {
		e2e = sel.E2ERun
	} else if len(leftOut) > 0 {
		var pats []string
		for _, l := range leftOut {
			pats = append(pats, l.pattern)
		}
		skip = " -test.skip '" + strings.Join(pats, "|") + "'"
	}
	probes := ""
	if sel.ProbesRun != "" {
		probes = " -test.run '" + sel.ProbesRun + "'"
	}
	if len(byHand) > 0 {
		var pats []string
		for _, b := range byHand {
			pats = append(pats, "^"+b.pattern+"$")
		}
		probes += " -test.skip '" + strings.Join(pats, "|") + "'"
	}
	return []Step{
		{Name: "probes-test", Cmd: "probes.test -test.v -test.count=1 -test.timeout=15m" + probes},
		{Name: "e2e-test", Cmd: "e2e.test -test.v -test.count=1 -test.timeout=15m -test.run '" + e2e + "'" + skip},
	}
}

// guestEnv tells the tests they run in the matrix, where the binary is,
// that fentry and kprobes must work there, and where to leave traces.
var guestEnv = []string{
	"WHYSLOW_VMTEST=1",
	"WHYSLOW_BIN=/usr/local/bin/whyslow",
	"WHYSLOW_EXPECT_MECHANISMS=fentry,kprobe",
	"WHYSLOW_RECORD_DIR=/results",
}

// BuildBinaries builds whyslow and the test binaries (or, for a benchmark,
// its driver), static, into dir.
func BuildBinaries(ctx context.Context, repo, dir string, sel Selection) (map[string]string, error) {
	out := map[string]string{}
	build := binaries
	if sel.Bench != "" {
		build = []binary{binaries[0], benchBinary}
	}
	for _, b := range build {
		path := filepath.Join(dir, b.name)
		args := make([]string, len(b.args))
		for i, a := range b.args {
			args[i] = strings.ReplaceAll(a, "{out}", path)
		}
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if o, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, o)
		}
		out[b.name] = path
	}
	return out, nil
}

// BuildInitramfs writes the guest's initramfs for kernel k to path.
func BuildInitramfs(ctx context.Context, k *Unpacked, bins map[string]string, steps []Step, path string) error {
	a := NewArchive()
	for _, t := range hostTools {
		host := ""
		for _, h := range t.host {
			if _, err := os.Stat(h); err == nil {
				host = h
				break
			}
		}
		if host == "" {
			return fmt.Errorf("%s not found: install the Debian package %s", t.host[0], t.pkg)
		}
		if err := a.AddProgram(ctx, host, t.guest); err != nil {
			return err
		}
	}
	if _, ok := bins[benchBinary.name]; ok {
		for _, t := range benchTools {
			if _, err := os.Stat(t.path); err != nil {
				return fmt.Errorf("%s not found: install the Debian package %s", t.path, t.pkg)
			}
			if err := a.AddProgram(ctx, t.path, t.path); err != nil {
				return err
			}
		}
	}
	a.Symlink("/bin/sh", "busybox")
	// udevadm is systemd-udevd when called by that name.
	a.Symlink("/lib/systemd/systemd-udevd", "/usr/bin/udevadm")
	a.Dir("/etc/udev/rules.d")
	a.File("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	a.File("/etc/group", []byte("root:x:0:\ndisk:x:6:\n"), 0o644)
	for name, p := range bins {
		if err := a.AddHostFile(p, "/usr/local/bin/"+name); err != nil {
			return err
		}
	}
	load := guestModules
	if _, ok := bins[benchBinary.name]; ok {
		load = benchModules
	}
	mods, err := a.AddModules(ctx, k, load...)
	if err != nil {
		return err
	}
	a.File("/init", []byte(initScript(mods, guestEnv, steps)), 0o755)

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	zw, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	if err := a.Write(zw); err != nil {
		f.Close()
		return err
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// RunKernel fetches kernel k, builds its initramfs, boots it and collects
// the results into Out/<name>.
func (c *Config) RunKernel(ctx context.Context, k Kernel, bins map[string]string) KernelResult {
	res := KernelResult{Kernel: k, Dir: filepath.Join(c.Out, k.Name)}
	fail := func(err error) KernelResult { res.Err = err; return res }
	u, err := c.Fetcher.Fetch(ctx, k)
	if err != nil {
		return fail(err)
	}
	os.RemoveAll(res.Dir)
	if err := os.MkdirAll(res.Dir, 0o755); err != nil {
		return fail(err)
	}
	work, err := os.MkdirTemp("", "whyslow-vmtest-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(work)
	initrd := filepath.Join(work, "initrd.gz")
	c.Log("%s: building the initramfs for %s", k.Name, u.Release)
	if c.Select.E2ERun == "" && c.Select.Bench == "" {
		for _, l := range leftOut {
			c.Log("%s: leaves out %s: %s", k.Name, l.pattern, l.why)
		}
	}
	if c.Select.Bench == "" {
		for _, b := range byHand {
			c.Log("%s: does not run %s: %s", k.Name, b.pattern, b.why)
		}
	}
	if err := BuildInitramfs(ctx, u, bins, guestSteps(c.Select), initrd); err != nil {
		return fail(fmt.Errorf("initramfs for %s: %w", u.Release, err))
	}
	results := filepath.Join(work, "results.img")
	m := Machine{
		Kernel: u.Vmlinuz, Initrd: initrd, CPUs: cmp.Or(c.CPUs, 2), MemMiB: 3072,
		Timeout: c.Timeout, Console: c.Console,
		Disks: []Disk{
			// The story's bcache: a slow "HDD" as backing device and a
			// fast "NVMe" as cache.
			{Path: filepath.Join(work, "hdd.img"), Size: 2 << 30, Serial: "hdd", IOPS: 300},
			{Path: filepath.Join(work, "nvme.img"), Size: 1 << 30, Serial: "nvme"},
			{Path: results, Size: 512 << 20, Serial: ResultsSerial},
			// The scenarios' filesystems (scenario.ScratchSerial; the
			// guests' /tmp is in memory): a disk whose writeback falls
			// behind a buffered writer, as a real disk's does.
			{Path: filepath.Join(work, "scratch.img"), Size: 2 << 30, Serial: "scratch", BPS: 32 << 20},
		},
	}
	c.Log("%s: booting %s", k.Name, u.Release)
	start := time.Now()
	boot, err := m.Run(ctx)
	res.Boot = boot
	if boot != nil {
		os.WriteFile(filepath.Join(res.Dir, "console.log"), boot.Console, 0o644)
	}
	if err != nil {
		return fail(err)
	}
	c.Log("%s: guest ran %s", k.Name, time.Since(start).Round(time.Second))
	if xerr := ExtractResults(results, res.Dir); xerr != nil && boot.Done {
		return fail(xerr)
	}
	return c.judge(res, u)
}

// judge fails a run that timed out, never booted, or had a step fail.
func (c *Config) judge(res KernelResult, u *Unpacked) KernelResult {
	b := res.Boot
	switch {
	case b.TimedOut:
		res.Err = fmt.Errorf("guest %s hung: no power-off within %s (see %s)", u.Release, c.Timeout, filepath.Join(res.Dir, "console.log"))
		return res
	case b.Release == "":
		res.Err = fmt.Errorf("guest %s never reached /init (see %s)", u.Release, filepath.Join(res.Dir, "console.log"))
		return res
	case b.Release != u.Release:
		res.Err = fmt.Errorf("guest runs %s, want %s", b.Release, u.Release)
		return res
	case !b.Done:
		res.Err = fmt.Errorf("guest %s stopped before the end of its steps (see %s)", u.Release, filepath.Join(res.Dir, "console.log"))
		return res
	case len(b.InsmodFailed) > 0:
		// The tests would skip or fail for want of the module (bcache):
		// the run tests less than it says.
		res.Err = fmt.Errorf("guest %s could not load %s (see %s)", u.Release, strings.Join(b.InsmodFailed, ", "), filepath.Join(res.Dir, "console.log"))
		return res
	}
	var failed []string
	for _, s := range guestSteps(c.Select) {
		code := -1
		for _, r := range b.Steps {
			if r.Name == s.Name {
				code = r.Code
			}
		}
		if code != 0 {
			failed = append(failed, fmt.Sprintf("%s (exit %d, %s)", s.Name, code, filepath.Join(res.Dir, s.Name+".log")))
			continue
		}
		// Everything the tests need is in the guest: a test that skipped
		// there did not run where it must.
		log, _ := os.ReadFile(filepath.Join(res.Dir, s.Name+".log"))
		if skips := forbiddenSkips(log); len(skips) > 0 {
			failed = append(failed, fmt.Sprintf("%s (skipped %s, %s)", s.Name, strings.Join(skips, ", "), filepath.Join(res.Dir, s.Name+".log")))
		}
	}
	if len(failed) > 0 {
		res.Err = fmt.Errorf("%s: failed: %s", u.Release, strings.Join(failed, "; "))
	}
	return res
}

// allowedSkip is what the reason of a test allowed to skip in the guest
// says: a variant for a kernel function this kernel does not have
// (TestDirectProgramsLoadOnEveryFunction tries every candidate of every
// kernel).
const allowedSkip = "not on this kernel"

// forbiddenSkips returns the tests a `go test -v` log shows skipped, except
// those whose reason says allowedSkip. go test -v streams a test's log
// lines after its "=== RUN" (or "=== CONT") line, and prints "--- SKIP"
// when it ends.
func forbiddenSkips(log []byte) []string {
	logs := map[string][]string{}
	var out []string
	cur := ""
	for _, l := range strings.Split(strings.ReplaceAll(string(log), "\r", ""), "\n") {
		t := strings.TrimSpace(l)
		if f := strings.Fields(t); len(f) == 3 && (f[0]+" "+f[1] == "=== RUN" || f[0]+" "+f[1] == "=== CONT") {
			cur = f[2]
			continue
		}
		if name, ok := strings.CutPrefix(t, "--- SKIP: "); ok {
			name, _, _ = strings.Cut(name, " (")
			if !strings.Contains(strings.Join(logs[name], "\n"), allowedSkip) {
				out = append(out, name)
			}
			continue
		}
		if cur != "" && strings.HasPrefix(l, "    ") {
			logs[cur] = append(logs[cur], t)
		}
	}
	return out
}

// FailedTests names, step by step, the tests a failed run's logs report as
// failed ("probes: TestA, TestB/sub"), or the failed steps themselves when no
// test is named. It is short enough to stand at the very end of the output,
// where a CI that keeps only the tail still shows it.
func FailedTests(r KernelResult) []string {
	var out []string
	if r.Boot == nil {
		return nil
	}
	for _, s := range r.Boot.Steps {
		if s.Code == 0 {
			continue
		}
		var names []string
		if data, err := os.ReadFile(filepath.Join(r.Dir, s.Name+".log")); err == nil {
			for _, l := range strings.Split(string(data), "\n") {
				if name, ok := strings.CutPrefix(strings.TrimSpace(l), "--- FAIL: "); ok {
					name, _, _ = strings.Cut(name, " (")
					names = append(names, name)
				}
			}
		}
		if len(names) == 0 {
			names = []string{fmt.Sprintf("exit %d, no test named", s.Code)}
		}
		out = append(out, s.Name+": "+strings.Join(names, ", "))
	}
	return out
}

// FailureSummary picks out of a failed run's logs what says why: the test
// failures and their messages from each failed step, else the end of the
// console. At most max lines.
func FailureSummary(r KernelResult, max int) string {
	var lines []string
	if r.Boot != nil {
		for _, s := range r.Boot.Steps {
			if s.Code == 0 {
				continue
			}
			data, err := os.ReadFile(filepath.Join(r.Dir, s.Name+".log"))
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(data), "\n") {
				t := strings.TrimSpace(l)
				if strings.HasPrefix(t, "--- FAIL") || strings.HasPrefix(t, "FAIL") || strings.HasPrefix(t, "panic:") ||
					(strings.Contains(t, "_test.go:") && !strings.Contains(t, "not on this kernel")) {
					lines = append(lines, s.Name+": "+l)
				}
			}
		}
		if len(lines) == 0 {
			lines = strings.Split(lastLines(string(r.Boot.Console), max), "\n")
		}
	}
	if len(lines) > max {
		lines = append(lines[:max], fmt.Sprintf("... (%d more lines in %s)", len(lines)-max, r.Dir))
	}
	return strings.Join(lines, "\n")
}
