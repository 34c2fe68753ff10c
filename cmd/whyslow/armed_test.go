package main

// Armed mode auto (--armed-mode=auto, experimental): the programs on the
// hot hooks start detached, the first trouble signal attaches them, and
// the report's coverage section says when they were (docs/report-schema.md
// "coverage").

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"

	"github.com/whyslow/whyslow/internal/metrics"
	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/scenario"
)

// hotHooks are the hooks armed mode gates.
var hotHooks = []string{"sys_enter", "sys_exit", "sched_switch", "sched_waking"}

// hotLinks counts the BPF links process pid holds on the hot hooks, read
// from its descriptors (/proc/PID/fdinfo: a tp_btf link names its
// tracepoint as tp_name on recent kernels, as the BTF id of
// btf_trace_<name> on older ones), and the links it holds in all.
func hotLinks(t *testing.T, pid int) (hot, all int) {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("reading %s: %v", dir, err)
	}
	var kernel *btf.Spec
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		var kind, tp string
		var btfID int
		for _, line := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(line, ":")
			v = strings.TrimSpace(v)
			switch k {
			case "link_type":
				kind = v
			case "tp_name":
				tp = v
			case "target_btf_id":
				btfID, _ = strconv.Atoi(v)
			}
		}
		if kind == "" {
			continue
		}
		all++
		if tp == "" && kind == "tracing" && btfID > 0 {
			if kernel == nil {
				if kernel, err = btf.LoadKernelSpec(); err != nil {
					t.Fatalf("kernel BTF: %v", err)
				}
			}
			if ty, err := kernel.TypeByID(btf.TypeID(btfID)); err == nil {
				tp = strings.TrimPrefix(ty.TypeName(), "btf_trace_")
			}
		}
		if slices.Contains(hotHooks, tp) || strings.HasPrefix(tp, "sys_enter_") || strings.HasPrefix(tp, "sys_exit_") {
			hot++
		}
	}
	return hot, all
}

// stopDiagnose ends a diagnosis with sig and returns its JSON report,
// written as for a full run.
func stopDiagnose(t *testing.T, r *running, sig syscall.Signal) *report.Report {
	t.Helper()
	if err := r.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("whyslow still runs 60s after %v; stderr %s", sig, r.errb.String())
	}
	if r.code != 0 {
		t.Fatalf("whyslow after %v: exit %d; stderr %s", sig, r.code, r.errb.String())
	}
	var rep report.Report
	if err := json.Unmarshal([]byte(r.out.String()), &rep); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, r.out.String())
	}
	logTrouble(t, &rep)
	b, _ := json.Marshal(rep.Coverage)
	t.Logf("coverage: %s", b)
	return &rep
}

// psiArmed says whether a run was armed by PSI alone, which is host-wide
// (not scoped to --device): on a shared host another's I/O can arm any
// run.
func psiArmed(rep *report.Report) bool {
	if rep.Coverage == nil || len(rep.Coverage.Armed) == 0 {
		return false
	}
	for _, a := range rep.Coverage.Armed {
		if a.By != "psi_io" && a.By != "psi_memory" {
			return false
		}
	}
	return true
}

// checkGated checks the coverage section's probes: the syscall and
// off-CPU probes gated, the block path's not.
func checkGated(t *testing.T, c *report.Coverage) {
	t.Helper()
	gated := map[string]bool{}
	for _, p := range c.Probes {
		gated[p.Probe] = p.Gated
		if p.Gated && p.NotSeenOff == "" {
			t.Errorf("probe %s is gated, but the coverage does not say what it did not see", p.Probe)
		}
	}
	for probe, want := range map[string]bool{"syscall": true, "offcpu": true, "submit": false, "service": false} {
		if g, ok := gated[probe]; !ok || g != want {
			t.Errorf("coverage: probe %s gated %v (listed %v), want %v", probe, g, ok, want)
		}
	}
}

// quietRun runs a run of armed mode auto until one is not armed by PSI
// (host-wide: another's I/O on a shared host), at most 3 times; it skips
// the test, saying so, when every run was.
func quietRun(t *testing.T, run func() *report.Report) *report.Report {
	t.Helper()
	for i := 0; i < 3; i++ {
		rep := run()
		if !psiArmed(rep) {
			return rep
		}
		t.Logf("run %d armed by PSI alone (host-wide, not scoped to --device): the host is not quiet; again", i+1)
	}
	scenario.Skip(t, "every run was armed by PSI, which is host-wide: this host is not quiet enough to show a run that stays disarmed")
	return nil
}

// On a quiet device, a run in armed mode auto stays disarmed: the kernel
// has no link of whyslow on the hot hooks once it is ready, the report's
// coverage says disarmed all the run with the syscall and off-CPU probes
// gated, and the text report says so. A signal (SIGINT) ends it with its
// report. The run is scoped to a quiet device with --device: PSI, which
// is host-wide, may still arm it on a shared host (then it runs again).
func TestArmedAutoQuiet(t *testing.T) {
	scenario.RequireRoot(t)
	dev := scenario.MemLoopDevice(t, 64<<20)
	trace := filepath.Join(t.TempDir(), "quiet.trace.gz")
	rep := quietRun(t, func() *report.Report {
		r := startDiagnose(t, "--armed-mode", "auto", "--device", dev, "--duration", "1h", "--format", "json", "--record", trace)
		hot, all := hotLinks(t, r.cmd.Process.Pid)
		armed := strings.Contains(r.errb.String(), "armed by")
		t.Logf("ready: %d links on the hot hooks, %d in all; armed by then: %v", hot, all, armed)
		if all == 0 {
			t.Fatalf("no link of whyslow's found in /proc/%d/fdinfo", r.cmd.Process.Pid)
		}
		if hot != 0 && !armed {
			t.Errorf("disarmed at the start, but the kernel has %d links of whyslow on %v", hot, hotHooks)
		}
		time.Sleep(3 * time.Second)
		if !strings.Contains(r.errb.String(), "armed by") {
			if hot, _ := hotLinks(t, r.cmd.Process.Pid); hot != 0 {
				t.Errorf("never armed, but after 3 s the kernel has %d links of whyslow on %v", hot, hotHooks)
			}
		}
		return stopDiagnose(t, r, syscall.SIGINT)
	})
	c := rep.Coverage
	if c == nil {
		t.Fatal("a run in armed mode auto has no coverage section")
	}
	if c.ArmedMode != "auto" {
		t.Errorf("coverage armed_mode %q, want auto", c.ArmedMode)
	}
	checkGated(t, c)
	if rep.Trouble == nil || rep.Trouble.Mode != "auto" {
		t.Errorf("trouble section %+v, want mode auto", rep.Trouble)
	}
	if rep.Trouble != nil && !slices.Equal(rep.Trouble.Devices, []string{dev}) {
		t.Errorf("trouble devices %v, want the scope [%s]", rep.Trouble.Devices, dev)
	}
	if len(c.Armed) != 0 || c.ArmedSeconds != 0 {
		t.Fatalf("a quiet device, but the run armed: %+v (signals %+v)", c.Armed, rep.Trouble)
	}
	if c.DisarmedSeconds < 2.5 {
		t.Errorf("disarmed %.3f s of a run of over 3 s", c.DisarmedSeconds)
	}
	for _, l := range rep.Losses {
		// The removed "ms disarmed (armed mode): ..." line; a count of
		// D sleeps in progress as the probe disarmed is a real loss.
		if strings.HasPrefix(l.What, "ms disarmed") {
			t.Errorf("the time disarmed is counted as lost events: %+v", l)
		}
	}
	// Its trace gives the same coverage, and the text report says it
	// plainly.
	a := run(t, "analyze", trace)
	if a.code != 0 {
		t.Fatalf("whyslow analyze %s: exit %d; stderr %s", trace, a.code, a.stderr)
	}
	for _, want := range []string{"coverage    armed mode auto: DISARMED ALL THE RUN", "not seen while disarmed, syscall: storage system calls", "not seen while disarmed, offcpu: off-CPU waits"} {
		if !strings.Contains(a.stdout, want) {
			t.Errorf("the text report of its trace does not say %q:\n%s", want, a.stdout)
		}
	}
}

// A reader that a cgroup's read limit throttles on the device starts
// once a run of armed mode auto is ready: the run arms (by the throttled
// bios on that device, or PSI), the report's top finding is
// cgroup-throttle on the device, the coverage shows the armed time, and
// the reader's storage calls, which only the armed programs see, are in
// affected[]. A signal ends the run while armed, with its report.
func TestArmedAutoArmsOnThrottle(t *testing.T) {
	scenario.RequireRoot(t)
	dev := limitDisk(t)
	c := scenario.IOCgroup(t, "armed")
	if err := c.LimitReadBPS(dev, 64<<10); err != nil {
		t.Fatal(err)
	}
	r := startDiagnose(t, "--armed-mode", "auto", "--device", dev, "--duration", "1h", "--format", "json")
	readyAt := time.Now()
	argv := c.Command("dd", "if=/dev/"+dev, "of=/dev/null", "bs=4k", "count=100000", "iflag=direct", "status=none")
	dd := exec.Command(argv[0], argv[1:]...)
	if err := dd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dd.Process.Kill()
		dd.Wait()
	})
	// Armed: the kernel has whyslow's links on the hot hooks.
	if !waitUntil(30*time.Second, func() bool { return strings.Contains(r.errb.String(), "armed by") }) {
		t.Fatalf("a throttled reader for 30 s, and the run never armed; stderr %s", r.errb.String())
	}
	t.Logf("armed %v after the reader started", time.Since(readyAt).Round(time.Millisecond))
	if hot, _ := hotLinks(t, r.cmd.Process.Pid); hot == 0 && !strings.Contains(r.errb.String(), "disarmed") {
		t.Errorf("armed, but the kernel has no link of whyslow on %v", hotHooks)
	}
	time.Sleep(4 * time.Second)
	rep := stopDiagnose(t, r, syscall.SIGINT)
	t.Logf("findings:\n%saffected:\n%s", summary(rep), affectedSummary(rep))
	cov := rep.Coverage
	if cov == nil {
		t.Fatal("a run in armed mode auto has no coverage section")
	}
	checkGated(t, cov)
	if len(cov.Armed) == 0 || cov.ArmedSeconds < 2 {
		t.Fatalf("coverage armed %+v, %.3f s: want the time from the arming to the end (over 4 s)", cov.Armed, cov.ArmedSeconds)
	}
	if by := cov.Armed[0].By; by != "throttle_wait" && by != "psi_io" && by != "slow_submit" {
		t.Errorf("armed by %q, want the throttled bios (throttle_wait), their submission (slow_submit) or the I/O stall (psi_io)", by)
	}
	if rep.Trouble != nil {
		if at, ok := rep.Trouble.FirstSignalSeconds[cov.Armed[0].By]; ok {
			t.Logf("arming: first %s signal at %.3f s, armed at %.3f s (%.1f ms later)", cov.Armed[0].By, at, cov.Armed[0].FromSeconds, 1000*(cov.Armed[0].FromSeconds-at))
		}
	}
	f, ok := findingOf(rep, "cgroup-throttle")
	if !ok {
		t.Fatalf("no cgroup-throttle finding:\n%s", summary(rep))
	}
	if !slices.Contains(f.Devices, dev) || !strings.Contains(f.Title+f.Explanation, c.Path) {
		t.Errorf("cgroup-throttle does not name %s and %s: %s / %v", dev, c.Path, f.Title, f.Devices)
	}
	// Its reads after the arming were seen by the syscall probe.
	if a, ok := findAffected(rep, dd.Process.Pid); !ok || len(a.Calls) == 0 || !slices.Contains(a.Devices, dev) {
		t.Errorf("the throttled reader (pid %d) is not in affected[] with its reads of %s: %+v", dd.Process.Pid, dev, a)
	}
}

// Control: a load that keeps another device busy does not arm a run
// scoped with --device to a quiet one: its signals are counted out of
// scope, with its disk, none is a signal of the run, and nothing but PSI
// (host-wide: on a shared host, another's I/O stalls) armed it; without
// a PSI signal, the coverage says disarmed all the run.
func TestArmedAutoScopedControl(t *testing.T) {
	scenario.RequireRoot(t)
	// A device whose every request takes a while: busy all the time
	// under a few asynchronous reads, whatever the CPUs do (a loop
	// device over memory was busy only 77% of the time under fio here,
	// under the 90% of a disk_busy signal).
	var busy string
	if scenario.InMatrix() {
		busy = scenario.NullBlk(t, 256<<20, time.Millisecond, 64)
	} else {
		busy = scenario.DiskLoop(t, 256<<20)
	}
	quiet := scenario.MemLoopDevice(t, 64<<20)
	rep := func() *report.Report {
		r := startDiagnose(t, "--armed-mode", "auto", "--device", quiet, "--duration", "1h", "--format", "json")
		// Asynchronous reads a few deep: the device is busy all the
		// time, and the reader waits in io_getevents, not in I/O wait.
		// Large reads: the disk's io_ticks, in jiffies, count the time
		// of small fast ones short (some 80% busy under 16 4k reads).
		load := scenario.StartJob(t, scenario.Job{Dev: busy, RW: "randread", BS: "1M", Engine: "libaio", IODepth: 4, Direct: true, Duration: 4 * time.Second})
		res, err := load.Wait()
		t.Logf("load on %s: %v %v", busy, res, err)
		return stopDiagnose(t, r, syscall.SIGTERM)
	}()
	tr, cov := rep.Trouble, rep.Coverage
	if tr == nil || cov == nil {
		t.Fatalf("trouble %v, coverage %v: want both", tr, cov)
	}
	var out uint64
	for _, n := range tr.OutOfScopeCounts {
		out += n
	}
	if out == 0 || !slices.Contains(tr.OutOfScopeDisks, busy) {
		t.Errorf("a busy %s, but no signal of it was counted out of scope: %d signals of %v", busy, out, tr.OutOfScopeDisks)
	}
	for _, s := range tr.Signals {
		if strings.HasPrefix(s.Detail, busy+" ") {
			t.Errorf("a signal of %s, out of the scope %s: %+v", busy, quiet, s)
		}
	}
	// PSI is host-wide: on a shared host another's I/O stalls may arm
	// the run; nothing else may.
	for _, a := range cov.Armed {
		if a.By != "psi_io" && a.By != "psi_memory" {
			t.Errorf("the load on %s armed a run scoped to %s: %+v", busy, quiet, a)
		}
	}
	if psi := tr.SignalCounts["psi_io"] + tr.SignalCounts["psi_memory"]; psi == 0 && len(cov.Armed) != 0 {
		t.Errorf("no PSI signal, yet the run scoped to %s armed: %+v", quiet, cov.Armed)
	} else if psi > 0 {
		t.Logf("%d PSI signals (host-wide, not scoped) armed it %.3f s", psi, cov.ArmedSeconds)
	}
}

// armedState is what serve's /metrics says of its armed mode.
type armedState struct{ armed, seconds, armings float64 }

// armedMetrics scrapes serve's /metrics for the armed mode's series,
// each of which must be there.
func armedMetrics(t *testing.T, base string) armedState {
	t.Helper()
	code, b := get(t, base+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, b)
	}
	_, series, err := metrics.ParseText(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	var st armedState
	for name, v := range map[string]*float64{"whyslow_armed": &st.armed, "whyslow_armed_seconds_total": &st.seconds, "whyslow_armings_total": &st.armings} {
		x, ok := series[name]
		if !ok {
			t.Fatalf("/metrics of serve in armed mode auto has no %s", name)
		}
		*v = x
	}
	return st
}

// serve in armed mode auto: it starts disarmed (the kernel has no link of
// it on the hot hooks, unless PSI, host-wide, armed it already), arms when
// a throttled reader starts on its device, and a window's report then has
// the cgroup-throttle finding on the device and a coverage section with
// the armed time and the gated probes. SIGTERM while armed stops it
// cleanly, every probe detached.
func TestServeArmedAuto(t *testing.T) {
	scenario.RequireRoot(t)
	dev := limitDisk(t)
	c := scenario.IOCgroup(t, "serve-armed")
	if err := c.LimitReadBPS(dev, 64<<10); err != nil {
		t.Fatal(err)
	}
	srv, base := startServe(t, "--window", "2s", "--device", dev, "--armed-mode", "auto")
	if !strings.Contains(srv.errb.String(), "armed mode auto (experimental)") {
		t.Errorf("serve does not say it runs in armed mode auto: %s", srv.errb.String())
	}
	hot, all := hotLinks(t, srv.cmd.Process.Pid)
	t.Logf("serving: %d links on the hot hooks, %d in all", hot, all)
	if hot != 0 && !strings.Contains(srv.errb.String(), "armed by") {
		t.Errorf("disarmed at the start, but the kernel has %d links of serve on %v", hot, hotHooks)
	}
	// /metrics says it: disarmed, unless PSI armed it already.
	m0 := armedMetrics(t, base)
	t.Logf("metrics before the reader: %+v", m0)
	if !strings.Contains(srv.errb.String(), "armed by") && (m0.armed != 0 || m0.armings != 0 || m0.seconds != 0) {
		t.Errorf("never armed yet, but /metrics says armed %v, %v armings, %v s armed", m0.armed, m0.armings, m0.seconds)
	}
	argv := c.Command("dd", "if=/dev/"+dev, "of=/dev/null", "bs=4k", "count=100000", "iflag=direct", "status=none")
	dd := exec.Command(argv[0], argv[1:]...)
	if err := dd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dd.Process.Kill()
		dd.Wait()
	})
	if !waitUntil(30*time.Second, func() bool { return strings.Contains(srv.errb.String(), "armed by") }) {
		t.Fatalf("a throttled reader for 30 s, and serve never armed; stderr %s", srv.errb.String())
	}
	if hot, _ := hotLinks(t, srv.cmd.Process.Pid); hot == 0 && !strings.Contains(srv.errb.String(), "disarmed") {
		t.Errorf("armed, but the kernel has no link of serve on %v", hotHooks)
	}
	// Armed by the throttled reader, which goes on: /metrics says armed,
	// counts the arming, and the armed time grows.
	m1 := armedMetrics(t, base)
	time.Sleep(time.Second)
	m2 := armedMetrics(t, base)
	t.Logf("metrics while the reader runs: %+v, a second later %+v", m1, m2)
	if !strings.Contains(srv.errb.String(), "disarmed") {
		if m1.armed != 1 || m2.armed != 1 || m1.armings < 1 || m2.seconds <= m1.seconds {
			t.Errorf("armed (never disarmed), but /metrics says armed %v then %v, %v armings, armed seconds %v then %v", m1.armed, m2.armed, m1.armings, m1.seconds, m2.seconds)
		}
	}
	if m2.armings < m0.armings+1 && !(m0.armed == 1 && m2.armed == 1) {
		t.Errorf("armed by the reader, but whyslow_armings_total went from %v to %v", m0.armings, m2.armings)
	}
	var last report.Report
	ok := waitUntil(40*time.Second, func() bool {
		code, b := get(t, base+"/report?format=json")
		if code != 200 {
			return false
		}
		last = report.Report{}
		if err := json.Unmarshal(b, &last); err != nil {
			t.Fatalf("/report?format=json: %v", err)
		}
		f, ok := findingOf(&last, "cgroup-throttle")
		return ok && slices.Contains(f.Devices, dev) && last.Coverage != nil && last.Coverage.ArmedSeconds > 0
	})
	b, _ := json.Marshal(last.Coverage)
	t.Logf("findings:\n%scoverage: %s", summary(&last), b)
	if !ok {
		t.Fatalf("no window of serve found cgroup-throttle on %s with armed time; serve's stderr: %s", dev, srv.errb.String())
	}
	checkGated(t, last.Coverage)
	if last.Coverage.ArmedMode != "auto" {
		t.Errorf("coverage armed_mode %q, want auto", last.Coverage.ArmedMode)
	}
	if a, ok := findAffected(&last, dd.Process.Pid); !ok || len(a.Calls) == 0 {
		t.Errorf("the throttled reader (pid %d) is not in the window's affected[]: the armed syscall probe did not see its reads", dd.Process.Pid)
	}
	// A /trace dump carries the coverage of its stretch.
	code, b := get(t, base+"/trace?seconds=10")
	if code != 200 {
		t.Fatalf("/trace: %d %s", code, b)
	}
	trace := filepath.Join(t.TempDir(), "serve.trace.gz")
	if err := os.WriteFile(trace, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if a := run(t, "analyze", trace); a.code != 0 || !strings.Contains(a.stdout, "coverage    armed mode auto") {
		t.Errorf("the report of serve's /trace dump has no coverage line: exit %d, stderr %s\n%s", a.code, a.stderr, a.stdout)
	}
	stopServe(t, srv, syscall.SIGTERM)
}

// pressureScope returns the cgroup v2 directory whose io.pressure counts
// the stalls of the processes in c, and a command maker that runs argv in
// c and in it: c itself on cgroup v2 (the guests), else (cgroup v1's
// blkio, this project's host) a cgroup v2 made beside it.
func pressureScope(t *testing.T, c *scenario.Cgroup, name string) (string, func(argv ...string) []string) {
	t.Helper()
	if !c.V1 {
		return c.Dir, c.Command
	}
	p := scenario.PressureCgroup(t, name)
	return p.Dir, func(argv ...string) []string {
		return append([]string{"/bin/sh", "-c", `echo $$ > "$0" && echo $$ > "$1" && shift && exec "$@"`,
			filepath.Join(c.Dir, "cgroup.procs"), filepath.Join(p.Dir, "cgroup.procs")}, argv...)
	}
}

// startReader starts argv (a throttled reader) and kills it at the end.
func startReader(t *testing.T, argv []string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

// --cgroup scopes PSI to a cgroup v2. A reader throttled outside the
// cgroup stalls tasks on the host (host-wide PSI far over its trigger):
// the run, scoped to an empty cgroup and a quiet disk, stays disarmed,
// and the host-wide stalls are counted out of scope. A reader throttled
// inside the cgroup then arms it, by psi_io: its disk is out of the
// --device scope, so nothing else can.
func TestArmedAutoCgroupScope(t *testing.T) {
	scenario.RequireRoot(t)
	dev := limitDisk(t)
	quiet := scenario.MemLoopDevice(t, 64<<20)
	out, in := scenario.IOCgroup(t, "psi-out"), scenario.IOCgroup(t, "psi-in")
	for _, c := range []*scenario.Cgroup{out, in} {
		if err := c.LimitReadBPS(dev, 64<<10); err != nil {
			t.Fatal(err)
		}
	}
	scope, inCommand := pressureScope(t, in, "psi-in-v2")
	r := startDiagnose(t, "--armed-mode", "auto", "--device", quiet, "--cgroup", scope, "--duration", "1h", "--format", "json")
	dd := []string{"dd", "if=/dev/" + dev, "of=/dev/null", "bs=4k", "count=100000", "iflag=direct", "status=none"}

	outside := startReader(t, out.Command(dd...))
	time.Sleep(4 * time.Second)
	armedByOutside := strings.Contains(r.errb.String(), "armed by")
	if armedByOutside {
		t.Errorf("a reader throttled outside cgroup %s armed the run scoped to it; stderr %s", scope, r.errb.String())
	} else if hot, _ := hotLinks(t, r.cmd.Process.Pid); hot != 0 {
		t.Errorf("never armed, but the kernel has %d links of whyslow on %v", hot, hotHooks)
	}
	outside.Process.Kill()
	outside.Wait()

	inside := startReader(t, inCommand(dd...))
	if !waitUntil(30*time.Second, func() bool { return strings.Contains(r.errb.String(), "armed by") }) {
		t.Fatalf("a reader throttled inside cgroup %s for 30 s, and the run scoped to it never armed; stderr %s", scope, r.errb.String())
	}
	time.Sleep(time.Second)
	rep := stopDiagnose(t, r, syscall.SIGINT)
	tr, cov := rep.Trouble, rep.Coverage
	if tr == nil || cov == nil {
		t.Fatalf("trouble %v, coverage %v: want both", tr, cov)
	}
	if tr.Cgroup != scope {
		t.Errorf("trouble cgroup %q, want the scope %s", tr.Cgroup, scope)
	}
	if tr.CgroupPSI == nil || tr.CgroupPSI.IOSomeMs <= 0 {
		t.Errorf("cgroup_psi %+v: want the I/O stall of the reader inside it", tr.CgroupPSI)
	}
	if tr.OutOfScopeCounts["psi_io"] == 0 {
		t.Errorf("a reader throttled outside the cgroup for 4 s, but no host-wide I/O stall was counted out of scope: %v (host-wide stall %+v)", tr.OutOfScopeCounts, tr.PSI)
	}
	if !armedByOutside && (len(cov.Armed) == 0 || cov.Armed[0].By != "psi_io") {
		t.Errorf("coverage armed %+v: want armed by psi_io, the stall of the reader (pid %d) inside the cgroup", cov.Armed, inside.Process.Pid)
	}
	for _, s := range tr.Signals {
		if strings.HasPrefix(s.Source, "psi_") && !strings.Contains(s.Detail, "cgroup "+scope) {
			t.Errorf("a PSI signal not of the cgroup %s: %+v", scope, s)
		}
	}
}
