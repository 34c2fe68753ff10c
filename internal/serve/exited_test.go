package serve_test

// serve for real with many short-lived processes that make storage calls:
// the window's sums of the processes that exited are folded past their
// bound (flight.WindowSums), and what a user reads still counts them.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/flight"
	"github.com/whyslow/whyslow/internal/metrics"
	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/scenario"
	"github.com/whyslow/whyslow/internal/serve"
	"github.com/whyslow/whyslow/probes"
	"github.com/whyslow/whyslow/rules"
)

// The bound of a window's sums in this test: small, so that some
// thousands of processes pass it many times over. Each helper below makes
// at least two calls on the device (a write and an fsync: two call
// histograms), so at most Stats/2 helpers' sums are left unfolded at a
// window's end (a stream is folded whenever it holds more than its bound).
var testBound = flight.SumsBound{Stats: 256, Blocked: 1024, MemStalls: 256, IOUsage: 256}

const (
	testWindow     = 20 * time.Second
	testCheckpoint = time.Second
	// helpersPerSecond paces the helpers below what the syscall probe's
	// map holds between two drains (2048 keys a second), so that no call
	// is lost in the kernel; any that is, is counted and allowed for.
	helpersPerSecond = 400
)

// Thousands of short-lived processes, each writing one block to a device
// and fsyncing it (dd), in one window of serve: the window's report counts
// their calls (the exited processes folded under one process of their
// command: every write but those of at most the bound's worth of helpers
// left unfolded, which the report's ten processes may not list), the fold
// is counted in whyslow_lost_events_total and in the report, the sums the
// window holds once they are folded are within the bound, and the devices'
// blocked time grew. Then hundreds of processes with a command each, which
// no fold can merge: their sums are dropped past the bound and counted.
func TestServeFoldsExitedProcesses(t *testing.T) {
	scenario.RequireRoot(t)
	dd, err := exec.LookPath("dd")
	if err != nil {
		t.Fatalf("dd (coreutils) not found: %v", err)
	}
	dev := scenario.MemLoopDevice(t, 64<<20)
	srv := startServe(t)

	// Phase 1: one command, many processes.
	const n = 2000
	h := &helpers{t: t, dd: dd, dev: dev, dir: t.TempDir()}
	before := srv.waitWindow()
	stagesBefore := srv.metrics()[`whyslow_stage_seconds_total`]
	run := h.run(n, func(int) string { return "wsfold" }, 10*time.Second)
	// Every helper has exited and been pruned two checkpoints after the
	// last: the window's sums are folded, within their bound.
	time.Sleep(3 * testCheckpoint)
	m := srv.metrics()
	srv.sameWindow(before, "the helpers ran and their sums were read")
	// Other processes of the host with storage calls that are still
	// running are never folded: at most some hundreds here.
	const otherRunning = 1024
	limit := float64(testBound.Stats + testBound.Blocked + testBound.MemStalls + testBound.IOUsage + otherRunning)
	if held := m["whyslow_window_sums"]; held == 0 || held > limit {
		t.Errorf("the window's sums held after %d helpers exited: %v, want between 1 and %v (the bound %+v and %d running processes' sums)",
			run.done, held, limit, testBound, otherRunning)
	}
	t.Logf("%d helpers in %.1fs; window sums held after: %v (%.0f bytes)", run.done, run.end.Sub(run.start).Seconds(),
		m["whyslow_window_sums"], m["whyslow_window_sums_bytes"])

	rep, winStart, winEnd := srv.nextReport(before)
	if run.start.Before(winStart) || run.end.After(winEnd) {
		t.Fatalf("the helpers ran from %s to %s, outside the window of the report (%s to %s)", run.start, run.end, winStart, winEnd)
	}
	writes, fsyncs, procs, top := callsOf(rep, "wsfold")
	lost := callLosses(rep)
	unfolded := uint64(testBound.Stats / 2)
	t.Logf("report: %d writes and %d fsyncs of wsfold in %d processes listed (the first: %d writes); calls lost from the sums: %d; losses %+v",
		writes, fsyncs, procs, top, lost, rep.Losses)
	for _, c := range []struct {
		name string
		got  uint64
	}{{"write", writes}, {"fsync", fsyncs}} {
		if c.got > uint64(run.done) || c.got+unfolded+lost < uint64(run.done) {
			t.Errorf("the report counts %d %s calls of wsfold, want %d (one per helper) less at most %d (helpers left unfolded, not all listed) and %d (lost)",
				c.got, c.name, run.done, unfolded, lost)
		}
	}
	// Each folded helper merged at least one sum into another.
	foldedSums := lossCount(rep, "syscall", flight.FoldedLoss)
	if foldedSums+unfolded < uint64(run.done) {
		t.Errorf("the report counts %d sums folded, want at least %d (one per helper, less %d left unfolded)", foldedSums, run.done, unfolded)
	}
	m = srv.metrics()
	if got := m[lostSeries("syscall", flight.FoldedLoss)]; got < float64(foldedSums) {
		t.Errorf("whyslow_lost_events_total of the fold = %v, want at least the window's %d", got, foldedSums)
	}
	if got := m[lostSeries("submit", flight.FoldedLoss)]; got == 0 {
		t.Errorf("whyslow_lost_events_total{probe=\"submit\"} of the fold = 0: the %d helpers' I/O sums were not folded", run.done)
	}
	if got := m[`whyslow_stage_seconds_total`]; got <= stagesBefore {
		t.Errorf("whyslow_stage_seconds_total did not grow over %d fsyncs (%v to %v)", run.done, stagesBefore, got)
	}

	// Phase 2: a command each, nothing to fold into: dropped past the
	// bound, and counted.
	const distinct = 600
	before = srv.waitWindow()
	run = h.run(distinct, func(i int) string { return fmt.Sprintf("wsd%04d", i) }, 10*time.Second)
	time.Sleep(3 * testCheckpoint)
	srv.sameWindow(before, "the helpers ran and their sums were read")
	rep, winStart, winEnd = srv.nextReport(before)
	if run.start.Before(winStart) || run.end.After(winEnd) {
		t.Fatalf("the helpers ran from %s to %s, outside the window of the report (%s to %s)", run.start, run.end, winStart, winEnd)
	}
	dropped := lossCount(rep, "syscall", flight.DroppedSumsLoss)
	t.Logf("%d helpers of a command each: %d sums dropped", run.done, dropped)
	// 2 call histograms each (write, fsync), at most Stats kept.
	if want := 2*run.done - testBound.Stats; int(dropped) < want {
		t.Errorf("the report counts %d sums dropped, want at least %d (2 per helper past the bound of %d)", dropped, want, testBound.Stats)
	}
	if got := srv.metrics()[lostSeries("syscall", flight.DroppedSumsLoss)]; got < float64(dropped) {
		t.Errorf("whyslow_lost_events_total of the drop = %v, want at least the window's %d", got, dropped)
	}
}

// served is serve running in this test.
type served struct {
	t    *testing.T
	base string
}

// startServe runs serve with the test's windows, checkpoints and bound,
// stopped at the end of the test.
func startServe(t *testing.T) *served {
	t.Helper()
	kernel, err := probes.Prepare(probes.DefaultBTF)
	if err != nil {
		t.Fatalf("probes.Prepare: %v", err)
	}
	set, err := rules.Default()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var log scenario.Buffer
	go func() {
		done <- serve.Run(ctx, ln, serve.Options{Window: testWindow, CheckpointEvery: testCheckpoint, Rules: set, Kernel: kernel,
			WindowSums: testBound, Version: "test", Log: &log,
			Ready: func(net.Addr, []event.ProbeStatus) { close(ready) }})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(time.Minute):
			t.Errorf("serve did not stop within a minute of its context's end")
		}
		if t.Failed() {
			t.Logf("serve's log:\n%s", log.String())
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("serve ended before it served: %v; log: %s", err, log.String())
	case <-time.After(2 * time.Minute):
		t.Fatalf("serve did not serve within 2 minutes; log: %s", log.String())
	}
	return &served{t: t, base: "http://" + ln.Addr().String()}
}

// lastWindow is the report of the last window evaluated and its ends
// (zero times before the first).
func (s *served) lastWindow() (rep *report.Report, start, end time.Time) {
	s.t.Helper()
	resp, err := http.Get(s.base + "/report?format=json")
	if err != nil {
		s.t.Fatalf("/report: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("/report: %v", err)
	}
	if resp.StatusCode == http.StatusServiceUnavailable {
		return nil, time.Time{}, time.Time{}
	}
	if resp.StatusCode != 200 {
		s.t.Fatalf("/report: HTTP %d: %s", resp.StatusCode, body)
	}
	rep = new(report.Report)
	if err := json.Unmarshal(body, rep); err != nil {
		s.t.Fatalf("/report: %v", err)
	}
	start, err1 := time.Parse(time.RFC3339Nano, resp.Header.Get("X-Whyslow-Window-Start"))
	end, err2 := time.Parse(time.RFC3339Nano, resp.Header.Get("X-Whyslow-Window-End"))
	if err1 != nil || err2 != nil {
		s.t.Fatalf("/report: window headers: %v, %v", err1, err2)
	}
	return rep, start, end
}

// waitWindow waits for a window to end and returns its end: what runs
// right after it is in the next window.
func (s *served) waitWindow() time.Time {
	s.t.Helper()
	_, _, first := s.lastWindow()
	deadline := time.Now().Add(testWindow + time.Minute)
	for time.Now().Before(deadline) {
		if _, _, end := s.lastWindow(); end.After(first) {
			return end
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.t.Fatalf("no window ended within %v", testWindow+time.Minute)
	return time.Time{}
}

// sameWindow fails the test when a window ended after prev: what happened
// since did not fit in one window on this machine.
func (s *served) sameWindow(prev time.Time, what string) {
	s.t.Helper()
	if _, _, end := s.lastWindow(); end.After(prev) {
		s.t.Fatalf("a window ended (%s) before %s, in the window after %s: the window (%v) is too short for this machine", end, what, prev, testWindow)
	}
}

// nextReport waits for the window after prev and returns its report and
// ends.
func (s *served) nextReport(prev time.Time) (*report.Report, time.Time, time.Time) {
	s.t.Helper()
	deadline := time.Now().Add(testWindow + time.Minute)
	for time.Now().Before(deadline) {
		if rep, start, end := s.lastWindow(); end.After(prev) {
			return rep, start, end
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("no window ended after %s within %v", prev, testWindow+time.Minute)
	return nil, time.Time{}, time.Time{}
}

// metrics scrapes /metrics: each series (name and labels) and, for a name
// with labels, the sum of its series under the name alone.
func (s *served) metrics() map[string]float64 {
	s.t.Helper()
	resp, err := http.Get(s.base + "/metrics")
	if err != nil {
		s.t.Fatalf("/metrics: %v", err)
	}
	defer resp.Body.Close()
	sums, out, err := metrics.ParseText(resp.Body)
	if err != nil {
		s.t.Fatalf("/metrics: %v", err)
	}
	maps.Copy(out, sums) // a name alone: its series summed
	return out
}

// lostSeries is the whyslow_lost_events_total series of a probe and cause.
func lostSeries(probe, reason string) string {
	return fmt.Sprintf("whyslow_lost_events_total{probe=%q,reason=%q}", probe, reason)
}

// helpers runs short-lived dd processes, each writing one 4 KiB block to
// the device and fsyncing it: a write and an fsync on the device, at least
// (coreutils' dd also reads its libraries). Each is exec'd through a
// symbolic link of the name asked for, its command (comm).
type helpers struct {
	t        *testing.T
	dd       string
	dev, dir string
	next     int // the next helper's block
}

// burst is what one run of helpers did.
type burst struct {
	done       int // helpers that ran and exited 0
	start, end time.Time
}

// run runs n helpers from 4 workers at helpersPerSecond, for at most
// max; name gives each its command.
func (h *helpers) run(n int, name func(int) string, max time.Duration) burst {
	h.t.Helper()
	const workers = 4
	var (
		wg    sync.WaitGroup
		done  atomic.Int64
		next  atomic.Int64
		mu    sync.Mutex
		first error
	)
	b := burst{start: time.Now()}
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || time.Since(b.start) > max {
					return
				}
				// Paced: the i-th helper no sooner than its time.
				if wait := time.Duration(i)*time.Second/helpersPerSecond - time.Since(b.start); wait > 0 {
					time.Sleep(wait)
				}
				if err := h.one(name(i), h.next+i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					continue
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	b.end = time.Now()
	h.next += n
	if first != nil {
		h.t.Fatalf("helper: %v", first)
	}
	b.done = int(done.Load())
	if b.done < n {
		h.t.Logf("%d of %d helpers ran within %v", b.done, n, max)
	}
	return b
}

// one runs one helper named comm, writing block i of the device.
func (h *helpers) one(comm string, i int) error {
	link := filepath.Join(h.dir, comm)
	if _, err := os.Lstat(link); err != nil {
		if err := os.Symlink(h.dd, link); err != nil && !os.IsExist(err) {
			return err
		}
	}
	cmd := &exec.Cmd{Path: link, Args: []string{"dd", "if=/dev/zero", "of=/dev/" + h.dev, "bs=4096", "count=1",
		fmt.Sprintf("seek=%d", i%(64<<20/4096)), "conv=fsync", "status=none"}}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v: %s", comm, err, out)
	}
	return nil
}

// callsOf sums the writes and fsyncs of the processes of command comm the
// report lists, and says how many it lists and the writes of the first.
func callsOf(rep *report.Report, comm string) (writes, fsyncs uint64, procs int, top uint64) {
	for _, a := range rep.Affected {
		if a.Comm != comm {
			continue
		}
		procs++
		for _, c := range a.Calls {
			switch c.Syscall {
			case "write":
				writes += c.Count
				if procs == 1 {
					top += c.Count
				}
			case "fsync":
				fsyncs += c.Count
			}
		}
	}
	return writes, fsyncs, procs, top
}

// callLosses are the syscall probe's losses of the report that take calls
// out of its sums: calls not counted for want of room in the kernel's
// histogram map, and sums dropped past the window's bound (each of a
// helper's sums holds one call). Its other losses (its ring's records of
// single slow calls, stacks) leave the sums whole, and the fold loses no
// call.
func callLosses(rep *report.Report) uint64 {
	var n uint64
	for _, l := range rep.Losses {
		if l.Probe == "syscall" && (strings.HasPrefix(l.What, "call histogram map full") || l.What == flight.DroppedSumsLoss) {
			n += l.Count
		}
	}
	return n
}

// lossCount is the report's loss of a probe and cause.
func lossCount(rep *report.Report, probe, what string) uint64 {
	var n uint64
	for _, l := range rep.Losses {
		if l.Probe == probe && l.What == what {
			n += l.Count
		}
	}
	return n
}
