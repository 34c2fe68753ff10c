package probes

import (
	"errors"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// The direct probes on the running kernel. Where a mechanism works (a host,
// or the Debian guests of the qemu matrix) they attach for real and must
// see real events; where it is absent the test says why and skips. On every
// kernel the ladder must end on a working rung and say why it skipped the
// better ones.

var directProbes = []Probe{queueEnterProbe{}, freezeProbe{}, submitFnProbe{}}

// startDirectOn starts a direct probe forced onto mech, or skips the test
// with the reason the mechanism is not available here.
func startDirectOn(t *testing.T, p Probe, mech event.Mechanism, minLatency time.Duration) (*blkSink, Running) {
	t.Helper()
	sink := new(blkSink)
	cfg := Config{MinLatency: minLatency, SysFS: "/sys", ProcFS: "/proc",
		Mechanism: MechanismChoice{Per: map[string]event.Mechanism{p.Decl().Name: mech}}}
	r, st := p.Start(cfg, sink)
	if r == nil {
		if expectedMechanism(mech) {
			t.Fatalf("%s on %s must work on this kernel (WHYSLOW_EXPECT_MECHANISMS) but: %s", p.Decl().Name, mech, st.Reason)
		}
		t.Skipf("%s on %s not available here: %s", p.Decl().Name, mech, st.Reason)
	}
	if st.Mechanism != mech {
		t.Fatalf("forced %s, started on %q", mech, st.Mechanism)
	}
	t.Cleanup(func() { r.Stop() })
	return sink, r
}

// kernelAllows asks the running kernel, without the ladder's code, what
// the direct mechanisms need: a kprobe PMU (or kprobe_events), and an
// fentry program on submit_bio_noacct that loads (nil) or the error.
func kernelAllows(t *testing.T) (kprobes bool, fentry error) {
	t.Helper()
	for _, p := range []string{"/sys/bus/event_source/devices/kprobe/type", "/sys/kernel/tracing/kprobe_events", "/sys/kernel/debug/tracing/kprobe_events"} {
		if _, err := os.Stat(p); err == nil {
			kprobes = true
		}
	}
	kernel, err := kernelSpec(Config{})
	if err != nil {
		t.Fatal(err)
	}
	prog, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFEntry, AttachTo: "submit_bio_noacct", License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	}, ebpf.ProgramOptions{KernelTypes: kernel})
	if err == nil {
		prog.Close()
	}
	return kprobes, err
}

// Every direct probe starts on some rung, and each rung above the one it
// runs on is listed with a reason. Where fentry programs load (the qemu
// matrix's kernels), every direct probe runs on fentry. Where the kernel
// denies them (this project's 6.18: EPERM) and has no kprobes, each falls
// back to the probe that infers, naming exactly those two reasons.
func TestDirectProbesLadder(t *testing.T) {
	blkNeedRoot(t)
	kprobes, fentryErr := kernelAllows(t)
	t.Logf("this kernel: kprobe PMU %v, fentry load: %v", kprobes, fentryErr)
	for _, p := range directProbes {
		t.Run(p.Decl().Name, func(t *testing.T) {
			r, st := p.Start(Config{MinLatency: time.Millisecond, SysFS: "/sys", ProcFS: "/proc"}, new(blkSink))
			if r == nil || st.Status != event.StatusOK {
				t.Fatalf("not started: %+v", st)
			}
			defer r.Stop()
			t.Logf("%s: %s (%s), skipped %+v", p.Decl().Name, st.Mechanism, st.Reason, st.Skipped)
			order := p.Decl().Mechs()
			if expectedMechanism(order[0]) && st.Mechanism != order[0] {
				t.Fatalf("%s runs on %s, but %s must work on this kernel (WHYSLOW_EXPECT_MECHANISMS); skipped: %+v", p.Decl().Name, st.Mechanism, order[0], st.Skipped)
			}
			var above []event.Mechanism
			for _, m := range order {
				if m == st.Mechanism {
					break
				}
				above = append(above, m)
			}
			if len(st.Skipped) != len(above) {
				t.Fatalf("skipped %+v, want one entry for each of %v", st.Skipped, above)
			}
			for i, s := range st.Skipped {
				if s.Mechanism != above[i] || s.Reason == "" {
					t.Errorf("skip %d = %+v, want %s with a reason", i, s, above[i])
				}
			}
			if st.Mechanism == event.MechTPBTF && !strings.Contains(st.Reason, "probe") {
				t.Errorf("fallback reason %q does not say which probe measures instead", st.Reason)
			}
			want := map[event.Mechanism]string{}
			switch {
			case fentryErr == nil:
				if st.Mechanism != event.MechFentry {
					t.Errorf("fentry programs load here, but %s runs on %s", p.Decl().Name, st.Mechanism)
				}
			case errors.Is(fentryErr, unix.EPERM):
				want[event.MechFentry] = "load denied (EPERM)"
				if !kprobes {
					want[event.MechKprobe] = "CONFIG_KPROBES not set (no kprobe PMU)"
					if st.Mechanism != event.MechTPBTF {
						t.Errorf("neither fentry nor kprobes here, but %s runs on %s", p.Decl().Name, st.Mechanism)
					}
				}
			}
			for _, s := range st.Skipped {
				if w, ok := want[s.Mechanism]; ok && s.Reason != w {
					t.Errorf("%s skipped: %q, want %q", s.Mechanism, s.Reason, w)
				}
				delete(want, s.Mechanism)
			}
			if len(want) > 0 {
				t.Errorf("skips %+v lack %v", st.Skipped, want)
			}
		})
	}
}

// On a kernel without kprobes (this lab: CONFIG_KPROBES off) the kprobe
// programs still go through the verifier: only the attach may fail, and the
// reason must say kprobes are missing. Where kprobes exist they attach. The
// same for fentry: a load refusal (EPERM here) is recorded as such.
func TestDirectProgramsLoadOnEveryFunction(t *testing.T) {
	blkNeedRoot(t)
	kernel, err := kernelSpec(Config{})
	if err != nil {
		t.Fatal(err)
	}
	caps := newHostCaps(Config{}, kernel)
	type variant struct {
		probe string
		fns   []string
		start func(mech event.Mechanism, fns []string) (Running, error)
	}
	cfg := Config{MinLatency: time.Millisecond, SysFS: "/sys", ProcFS: "/proc"}
	var variants []variant
	for _, fn := range queueEnterFuncs {
		variants = append(variants, variant{"queueenter", []string{fn}, func(m event.Mechanism, fns []string) (Running, error) {
			return startQueueEnter(cfg, kernel, new(blkSink), m, fns[0])
		}})
	}
	for _, fn := range submitFnFuncs {
		variants = append(variants, variant{"submitfn", []string{fn}, func(m event.Mechanism, fns []string) (Running, error) {
			return startSubmitFn(cfg, kernel, new(blkSink), m, fns[0], "")
		}})
		for _, bio := range submitFnBioFuncs {
			variants = append(variants, variant{"submitfn", []string{fn, bio}, func(m event.Mechanism, fns []string) (Running, error) {
				return startSubmitFn(cfg, kernel, new(blkSink), m, fns[0], fns[1])
			}})
		}
	}
	starts := slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(freezeStartFuncs), freezeStartCallers...))))
	ends := slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(unfreezeFuncs), unfreezeCallers...))))
	for _, s := range starts {
		for _, u := range ends {
			variants = append(variants, variant{"freeze", []string{s, u}, func(m event.Mechanism, fns []string) (Running, error) {
				return startFreeze(cfg, kernel, new(blkSink), m, fns[:1], fns[1:])
			}})
		}
	}
	for _, v := range variants {
		for _, mech := range []event.Mechanism{event.MechFentry, event.MechKprobe} {
			t.Run(v.probe+"/"+string(mech)+"/"+strings.Join(v.fns, ","), func(t *testing.T) {
				fns, why := resolveFuncs(ladderRung{funcs: [][]string{v.fns[:1], v.fns[1:]}[:len(v.fns)]}, caps)
				if why != "" {
					t.Skipf("not on this kernel: %s", why)
				}
				if len(v.fns) == 2 {
					if _, why := resolveFuncs(ladderRung{funcs: [][]string{v.fns[1:]}}, caps); why != "" {
						t.Skipf("not on this kernel: %s", why)
					}
				}
				r, err := v.start(mech, v.fns)
				if err == nil {
					t.Logf("attached on %v", fns)
					if err := r.Stop(); err != nil {
						t.Errorf("Stop: %v", err)
					}
					return
				}
				var se *stageError
				if !errors.As(err, &se) {
					t.Fatalf("error without a stage: %v", err)
				}
				reason := skipReason(mech, err, caps)
				switch {
				case mech == event.MechKprobe && se.stage == "load":
					t.Fatalf("kprobe programs must load on every kernel; got %s", reason)
				case mech == event.MechKprobe && !caps.KprobePMU():
					if reason != "CONFIG_KPROBES not set (no kprobe PMU)" {
						t.Errorf("reason %q", reason)
					}
					// The programs passed the verifier: that is what this
					// kernel can check. Attaching is tested on the qemu kernels.
					t.Logf("loaded through the verifier; attach: %s", reason)
				case mech == event.MechFentry && se.stage == "load" && errors.Is(err, unix.EPERM):
					if reason != "load denied (EPERM)" {
						t.Errorf("reason %q", reason)
					}
					if expectedMechanism(mech) {
						t.Fatalf("fentry must load on this kernel (WHYSLOW_EXPECT_MECHANISMS): %s", reason)
					}
					t.Skipf("fentry: %s", reason)
				default:
					t.Fatalf("%s failed where it should work: %s", mech, reason)
				}
			})
		}
	}
}

// flipScheduler makes n changes of a freezing queue attribute of the loop
// device (see freezingWrite) from one locked OS thread, alternating values
// so that every write changes it (kernels before 6.17 do not freeze for an
// unchanged value), and returns that thread's id and a channel closed at
// the end.
func flipScheduler(t *testing.T, name string, n int, gap time.Duration) (tid int, done <-chan struct{}) {
	t.Helper()
	path, vals := freezingWrite(t, name)
	tidc := make(chan int, 1)
	d := make(chan struct{})
	go func() {
		defer close(d)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tidc <- unix.Gettid()
		for i := 0; i < n; i++ {
			_ = os.WriteFile(path, []byte(vals[i%2]), 0)
			time.Sleep(gap)
		}
	}()
	return <-tidc, d
}

// expectedMechanism reports whether the environment says mech works on
// this kernel: the qemu kernel matrix sets WHYSLOW_EXPECT_MECHANISMS (e.g.
// "fentry,kprobe"), so that a probe failing there is a failure, not a skip.
func expectedMechanism(mech event.Mechanism) bool {
	for _, m := range strings.Split(os.Getenv("WHYSLOW_EXPECT_MECHANISMS"), ",") {
		if strings.TrimSpace(m) == string(mech) {
			return true
		}
	}
	return false
}

func directEvents[E event.Event](s *blkSink) []E {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []E
	for _, e := range s.events {
		if v, ok := e.(E); ok {
			out = append(out, v)
		}
	}
	return out
}

// Writing queue/scheduler freezes the queue: the freeze probe sees each
// freeze of the loop device with the writer as the freezer, its stacks, and
// a duration.
func TestFreezeSeesSchedulerWrites(t *testing.T) {
	blkNeedRoot(t)
	for _, mech := range []event.Mechanism{event.MechFentry, event.MechKprobe} {
		t.Run(string(mech), func(t *testing.T) {
			loop := newBlkLoop(t, 16<<20)
			sink, r := startDirectOn(t, freezeProbe{}, mech, 0)
			tid, done := flipScheduler(t, loop.name, 6, 20*time.Millisecond)
			<-done
			if err := r.Stop(); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			var mine []event.Freeze
			for _, f := range directEvents[event.Freeze](sink) {
				if f.Dev.Name == loop.name {
					mine = append(mine, f)
				}
			}
			if len(mine) == 0 {
				t.Fatalf("no freeze of %s seen (%d freeze events in all)", loop.name, len(directEvents[event.Freeze](sink)))
			}
			for _, f := range mine {
				if f.Task.Pid != uint32(tid) || f.Task.Tgid != uint32(os.Getpid()) {
					t.Errorf("freezer %+v, want the writer tid %d", f.Task, tid)
				}
				if f.Dev.Major != loop.major || f.Dev.Minor != loop.minor {
					t.Errorf("device %s, want %d:%d", f.Dev.ID(), loop.major, loop.minor)
				}
				if f.Duration <= 0 || f.Mechanism != mech || f.Func == "" {
					t.Errorf("freeze %+v", f)
				}
				if len(f.KernelStack) == 0 {
					t.Errorf("freeze without a kernel stack")
				}
			}
		})
	}
}

// A writer submitting to a loop device while its queue is frozen again and
// again waits in queue enter; the queueenter probe times those waits on the
// device, naming the writer.
func TestQueueEnterSeesFrozenQueue(t *testing.T) {
	blkNeedRoot(t)
	for _, mech := range []event.Mechanism{event.MechFentry, event.MechKprobe} {
		t.Run(string(mech), func(t *testing.T) {
			const size = 64 << 20
			loop := newBlkLoop(t, size)
			sink, r := startDirectOn(t, queueEnterProbe{}, mech, 0)
			stop := make(chan struct{})
			tid, wdone, _ := directWriter(t, loop.path, size, 0, stop)
			_, fdone := flipScheduler(t, loop.name, 40, 25*time.Millisecond)
			<-fdone
			close(stop)
			<-wdone
			if err := r.Stop(); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			var mine int
			for _, q := range directEvents[event.QueueEnter](sink) {
				if q.Task.Pid != uint32(tid) {
					continue
				}
				mine++
				if q.Dev.Name != loop.name || q.Dev.Major != loop.major || q.Dev.Minor != loop.minor {
					t.Errorf("wait on %s (%s), want %s", q.Dev.Name, q.Dev.ID(), loop.name)
				}
				if q.Mechanism != mech || (q.Func != "__bio_queue_enter" && q.Func != "blk_queue_enter") {
					t.Errorf("wait %+v", q)
				}
			}
			if mine == 0 {
				t.Fatalf("no queue-enter wait by the writer (tid %d); %d events in all", tid, len(directEvents[event.QueueEnter](sink)))
			}
		})
	}
}

// Every O_DIRECT write goes through submit_bio_noacct once: the submitfn
// probe counts each in the device's histogram and, with no threshold,
// streams each with the writer.
func TestSubmitFnTimesEveryWrite(t *testing.T) {
	blkNeedRoot(t)
	for _, mech := range []event.Mechanism{event.MechFentry, event.MechKprobe} {
		t.Run(string(mech), func(t *testing.T) {
			const size, writes = 64 << 20, 200
			loop := newBlkLoop(t, size)
			sink, r := startDirectOn(t, submitFnProbe{}, mech, 0)
			tid, done, _ := directWriter(t, loop.path, size, writes, nil)
			<-done
			if err := r.Stop(); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			h, ok := sink.hist(timeline.HistSubmitCall, loop.name)
			if !ok || h.h.Count < writes {
				t.Fatalf("submit-call histogram of %s: %+v (found %v), want >= %d calls", loop.name, h.h.Count, ok, writes)
			}
			var mine int
			for _, c := range directEvents[event.SubmitCall](sink) {
				if c.Task.Pid == uint32(tid) && c.Dev.Name == loop.name {
					mine++
				}
			}
			if mine < writes {
				t.Errorf("%d submit calls by the writer on %s, want >= %d", mine, loop.name, writes)
			}
		})
	}
}
