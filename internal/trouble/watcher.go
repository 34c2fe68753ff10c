package trouble

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/diskstat"
	"github.com/whyslow/whyslow/internal/event"
)

// Config configures a Watcher; zero fields take the defaults below.
type Config struct {
	// ProcFS and SysFS are the roots of /proc and /sys ("/proc", "/sys").
	ProcFS, SysFS string
	// Stall within Window is the PSI trigger: HostStall in 1 s for
	// host-wide PSI, CgroupStall in 1 s for a cgroup's (Cgroup).
	Stall, Window time.Duration
	// Busy is the share of an interval a disk must be busy (io_ticks) for
	// a signal (0.9); BusyEvery the interval (1 s); a negative BusyEvery
	// turns the disk-busy source off.
	Busy      float64
	BusyEvery time.Duration
	// Hold is how long the state stays armed after the last signal (5 s).
	Hold time.Duration
	// KeepSignals is how many of the first signals the summary keeps (20).
	KeepSignals int
	// Devices, when set (--device), scopes the signals of the block path
	// and of busy disks to these disks (names as in /sys/block): a signal
	// of another disk is counted out of scope (Summary.OutOfScope) and
	// arms nothing. An event whose disk has no name is kept (it cannot be
	// told apart). PSI is not a disk's: Cgroup scopes it.
	Devices []string
	// Cgroup, when set (--cgroup), is the cgroup v2 directory PSI is
	// scoped to (CgroupDir): the triggers are on its io.pressure and
	// memory.pressure, which count its tasks' stalls alone. The
	// host-wide triggers are set too, at HostStall: their events arm
	// nothing, and those the cgroup's own stall does not account for
	// (its total grew by less than its trigger's stall since the last
	// one) are counted out of scope (Summary.OutOfScope). Empty: PSI is
	// host-wide.
	Cgroup string
	// OnSignal, when set, is called with each signal, from the watcher's
	// goroutines or from Observe's caller; it must not block.
	OnSignal func(Signal)
}

func (c *Config) defaults() {
	if c.ProcFS == "" {
		c.ProcFS = "/proc"
	}
	if c.SysFS == "" {
		c.SysFS = "/sys"
	}
	if c.Stall <= 0 {
		c.Stall = HostStall
		if c.Cgroup != "" {
			c.Stall = CgroupStall
		}
	}
	if c.Window <= 0 {
		c.Window = time.Second
	}
	if c.Busy <= 0 {
		c.Busy = 0.9
	}
	if c.BusyEvery == 0 {
		c.BusyEvery = time.Second
	}
	if c.Hold <= 0 {
		c.Hold = 5 * time.Second
	}
	if c.KeepSignals <= 0 {
		c.KeepSignals = 20
	}
}

// The default PSI triggers' stalls, within a 1 s window.
const (
	// HostStall is host-wide PSI's: 100 ms of "some" I/O (or memory)
	// stall in 1 s. The 5 ms it was armed quiet runs on a shared host:
	// there other jobs' background I/O stalled up to 39 ms in a second
	// (BENCHMARKS.md, "Issue 16 (2026-12-08, wt-arm31)"), while a task
	// waiting on a throttled or slow disk stalls most of each second.
	// Another job's real trouble still crosses it: --cgroup scopes PSI.
	HostStall = 100 * time.Millisecond
	// CgroupStall is a cgroup's (Config.Cgroup): its stall is its own
	// tasks', without a host's floor.
	CgroupStall = 5 * time.Millisecond
)

// psiWatch is one PSI trigger the watcher polls.
type psiWatch struct {
	src    Source
	path   string        // the pressure file the trigger is on
	stall  time.Duration // the trigger's stall as set
	detail string
	// outside marks a host-wide trigger of a run scoped to a cgroup: its
	// events arm nothing; one the cgroup's stall (scoped, its pressure
	// file; scopedStall, its trigger's stall) does not account for is
	// counted out of scope.
	outside     bool
	scoped      string
	scopedStall time.Duration
	// last is the "some" total at the last confirmed event (or at
	// Start), scopedLast the cgroup's at the last event; dropped counts
	// the events not confirmed (confirm). Under Watcher.mu.
	last, scopedLast time.Duration
	dropped          uint64
}

// Watcher watches the sources of trouble signals and keeps the armed
// state. Start it, feed it the probes' events with Observe, ask Armed, and
// Stop it for the summary. Its methods are safe for concurrent use.
type Watcher struct {
	cfg Config

	mu      sync.Mutex
	arming  Arming
	signals []Signal
	counts  map[Source]uint64
	first   map[Source]event.Mono
	status  map[Source]SourceStatus
	start   event.Mono
	psi0    PSITotals
	cg0     PSITotals // the cgroup's (Config.Cgroup)
	// psi are the PSI triggers set.
	psi []*psiWatch
	// scope is Config.Devices as a set (nil: every disk), outOfScope the
	// signals of other disks, by source.
	scope      map[string]bool
	outOfScope map[Source]uint64
	outDisks   map[string]bool

	stopW   *os.File // closing it wakes the PSI poller
	psiFile []*os.File
	quit    chan struct{}
	wg      sync.WaitGroup
	started bool
}

// New returns a Watcher; nothing runs until Start.
func New(cfg Config) *Watcher {
	cfg.defaults()
	w := &Watcher{cfg: cfg, counts: map[Source]uint64{}, first: map[Source]event.Mono{}, status: map[Source]SourceStatus{}, quit: make(chan struct{})}
	w.arming.Hold = cfg.Hold
	if len(cfg.Devices) > 0 {
		w.scope = map[string]bool{}
		for _, d := range cfg.Devices {
			w.scope[d] = true
		}
	}
	w.outOfScope = map[Source]uint64{}
	for _, s := range []Source{SlowSubmit, ThrottleWait, QueueEnter, DeviceFault} {
		w.status[s] = SourceStatus{Source: s, On: true}
	}
	return w
}

// Start reads the PSI totals, sets the PSI triggers and starts the disk
// reader. A source that cannot work is left off with its reason
// (Summary.Sources); Start fails only when the clock cannot be read. ctx
// ending stops the sources as Stop does.
func (w *Watcher) Start(ctx context.Context) error {
	now, err := event.Now()
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.start, w.started = now, true
	w.mu.Unlock()
	w.psi0 = readTotals(filepath.Join(w.cfg.ProcFS, "pressure"), "")
	if w.cfg.Cgroup != "" {
		w.cg0 = readTotals(w.cfg.Cgroup, ".pressure")
	}

	var fds []*os.File
	var watches []*psiWatch
	for _, s := range []struct {
		src Source
		res string
	}{{PSIIO, "io"}, {PSIMemory, "memory"}} {
		host := filepath.Join(w.cfg.ProcFS, "pressure", s.res)
		in := &psiWatch{src: s.src, path: host}
		if w.cfg.Cgroup != "" {
			in.path = filepath.Join(w.cfg.Cgroup, s.res+".pressure")
		}
		f, trig, stall, note, err := psiTrigger(in.path, w.cfg.Stall, w.cfg.Window)
		if err != nil {
			w.setStatus(SourceStatus{Source: s.src, Reason: err.Error()})
			continue
		}
		in.stall = stall
		in.detail = fmt.Sprintf("%s some stall over the trigger (%s)", s.res, trig)
		if w.cfg.Cgroup != "" {
			in.detail = fmt.Sprintf("%s some stall of cgroup %s over the trigger (%s)", s.res, w.cfg.Cgroup, trig)
		}
		if some, _, err := readPSIFile(in.path); err == nil {
			in.last = some
		}
		fds, watches = append(fds, f), append(watches, in)
		if w.cfg.Cgroup != "" {
			// The host-wide trigger, for the stalls out of scope.
			out := &psiWatch{src: s.src, path: host, outside: true, scoped: in.path, scopedStall: stall, scopedLast: in.last}
			hf, htrig, hstall, _, err := psiTrigger(host, HostStall, w.cfg.Window)
			if err != nil {
				note = strings.TrimPrefix(note+"; host-wide stalls out of scope not counted: "+err.Error(), "; ")
			} else {
				out.stall = hstall
				out.detail = fmt.Sprintf("%s some stall over the host-wide trigger (%s)", s.res, htrig)
				if some, _, err := readPSIFile(host); err == nil {
					out.last = some
				}
				fds, watches = append(fds, hf), append(watches, out)
			}
		}
		w.setStatus(SourceStatus{Source: s.src, On: true, Reason: note})
	}
	w.psi = watches
	if len(fds) > 0 {
		r, wr, err := os.Pipe()
		if err != nil {
			for i, f := range fds {
				f.Close()
				w.setStatus(SourceStatus{Source: watches[i].src, Reason: "no pipe to stop the poller: " + err.Error()})
			}
		} else {
			w.stopW, w.psiFile = wr, fds
			w.wg.Add(1)
			go w.pollPSI(fds, watches, r)
		}
	}

	if w.cfg.BusyEvery < 0 {
		w.setStatus(SourceStatus{Source: DiskBusy, Reason: "turned off"})
	} else if _, err := os.ReadDir(filepath.Join(w.cfg.SysFS, "block")); err != nil {
		w.setStatus(SourceStatus{Source: DiskBusy, Reason: err.Error()})
	} else {
		w.setStatus(SourceStatus{Source: DiskBusy, On: true})
		w.wg.Add(1)
		go w.watchBusy()
	}
	if ctx != nil && ctx.Done() != nil {
		go func() {
			select {
			case <-ctx.Done():
				w.stopSources()
			case <-w.quit:
			}
		}()
	}
	return nil
}

func (w *Watcher) setStatus(s SourceStatus) {
	w.mu.Lock()
	w.status[s.Source] = s
	w.mu.Unlock()
}

// pollPSI waits for the PSI triggers in one poll(2) until the stop pipe
// closes.
func (w *Watcher) pollPSI(fds []*os.File, watches []*psiWatch, stop *os.File) {
	defer w.wg.Done()
	defer stop.Close()
	pfd := make([]unix.PollFd, len(fds)+1)
	for i, f := range fds {
		pfd[i] = unix.PollFd{Fd: int32(f.Fd()), Events: unix.POLLPRI}
	}
	pfd[len(fds)] = unix.PollFd{Fd: int32(stop.Fd()), Events: unix.POLLIN}
	for {
		for i := range pfd {
			pfd[i].Revents = 0
		}
		_, err := unix.Poll(pfd, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			for _, pw := range watches {
				w.setStatus(SourceStatus{Source: pw.src, Reason: "poll: " + err.Error()})
			}
			return
		}
		if pfd[len(fds)].Revents != 0 {
			return
		}
		for i := range fds {
			switch re := pfd[i].Revents; {
			case re&unix.POLLERR != 0:
				// A cgroup's trigger errs when the cgroup is removed.
				what := "the trigger was dropped (POLLERR)"
				if watches[i].outside {
					what = "the host-wide trigger counting stalls out of scope was dropped (POLLERR)"
				} else if w.cfg.Cgroup != "" {
					what = "the trigger was dropped (POLLERR: cgroup " + w.cfg.Cgroup + " removed?)"
				}
				w.setStatus(SourceStatus{Source: watches[i].src, On: watches[i].outside, Reason: what})
				pfd[i].Fd = -1
			case re&unix.POLLPRI != 0:
				if w.confirm(watches[i]) {
					w.signal(watches[i].src, watches[i].detail)
				}
			}
		}
	}
}

// confirm says whether a PSI trigger event is a signal: the pressure
// file's "some" total grew by at least the trigger's stall since the last
// confirmed event (or since Start). The kernel's first check of a new
// trigger counts stall from before it was set (up to a window of it), and
// on an idle host it fires on a stall the run never had; such events are
// counted (Summary.Sources' reason) and dropped. A host-wide event of a
// run scoped to a cgroup is never a signal: it is counted out of scope
// unless the cgroup's own total grew by its trigger's stall since the last
// one (then the cgroup's trigger says it).
func (w *Watcher) confirm(pw *psiWatch) bool {
	some, _, err := readPSIFile(pw.path)
	var cg time.Duration
	var cgErr error
	if pw.outside {
		cg, _, cgErr = readPSIFile(pw.scoped)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err == nil {
		if some-pw.last < pw.stall {
			pw.dropped++
			return false
		}
		pw.last = some
	} // else cannot tell: keep it
	if !pw.outside {
		return true
	}
	if cgErr != nil || cg-pw.scopedLast < pw.scopedStall {
		w.outOfScope[pw.src]++
	}
	if cgErr == nil {
		pw.scopedLast = cg
	}
	return false
}

// diskTicks reads io_ticks (ms busy) of every disk in /sys/block.
func diskTicks(sysfs string) map[string]uint64 {
	ents, err := os.ReadDir(filepath.Join(sysfs, "block"))
	if err != nil {
		return nil
	}
	out := make(map[string]uint64, len(ents))
	for _, e := range ents {
		if st, err := diskstat.Read(sysfs, e.Name()); err == nil {
			out[e.Name()] = st.IOTicks
		}
	}
	return out
}

// busyDisks returns the disks busy at least share of elapsed between two
// readings, sorted, with their busy share.
func busyDisks(before, after map[string]uint64, elapsed time.Duration, share float64) (names []string, pct []float64) {
	if elapsed <= 0 {
		return nil, nil
	}
	for d, t1 := range after {
		t0, ok := before[d]
		if !ok || t1 < t0 {
			continue
		}
		if b := float64(time.Duration(t1-t0)*time.Millisecond) / float64(elapsed); b >= share {
			names = append(names, d)
		}
	}
	sort.Strings(names)
	for _, d := range names {
		pct = append(pct, 100*float64(time.Duration(after[d]-before[d])*time.Millisecond)/float64(elapsed))
	}
	return names, pct
}

// watchBusy reads io_ticks every BusyEvery and signals the disks busy
// at least Busy of the interval.
func (w *Watcher) watchBusy() {
	defer w.wg.Done()
	tick := time.NewTicker(w.cfg.BusyEvery)
	defer tick.Stop()
	prev, at := diskTicks(w.cfg.SysFS), time.Now()
	for {
		select {
		case <-w.quit:
			return
		case <-tick.C:
		}
		cur, now := diskTicks(w.cfg.SysFS), time.Now()
		names, pct := busyDisks(prev, cur, now.Sub(at), w.cfg.Busy)
		for i, d := range names {
			if !w.inScope(DiskBusy, d) {
				continue
			}
			w.signal(DiskBusy, fmt.Sprintf("%s busy %.0f%% over %v", d, pct[i], now.Sub(at).Round(time.Millisecond)))
		}
		prev, at = cur, now
	}
}

// Observe takes one event of the probes: the block path's slow spans and
// device faults are signals, other events are ignored.
func (w *Watcher) Observe(e event.Event) {
	switch e := e.(type) {
	case event.SlowSubmit:
		if !w.inScope(SlowSubmit, e.Dev.Name) {
			return
		}
		w.signal(SlowSubmit, fmt.Sprintf("%s submission (Q2G) %v, %s", e.Dev, e.Latency.Round(time.Microsecond), e.Task.Comm))
	case event.ThrottleWait:
		if !w.inScope(ThrottleWait, e.Dev.Name) {
			return
		}
		w.signal(ThrottleWait, fmt.Sprintf("%s throttled %v, %s", e.Dev, e.Duration.Round(time.Microsecond), e.Task.Comm))
	case event.QueueEnter:
		if !w.inScope(QueueEnter, e.Dev.Name) {
			return
		}
		w.signal(QueueEnter, fmt.Sprintf("%s queue enter %v, %s", e.Dev, e.Duration.Round(time.Microsecond), e.Task.Comm))
	case event.DeviceFault:
		switch e.Kind {
		case event.FaultError, event.FaultTimeout, event.FaultSCSITimeout:
			if !w.inScope(DeviceFault, e.Dev.Name) {
				return
			}
			w.signal(DeviceFault, fmt.Sprintf("%s %s", e.Dev, e.Kind))
		}
	}
}

// maxOutDisks is how many disks out of scope a summary names.
const maxOutDisks = 20

// inScope says whether a signal of src on disk is in the watcher's scope
// (Config.Devices), and counts it out of scope if not.
func (w *Watcher) inScope(src Source, disk string) bool {
	if w.scope == nil || disk == "" || w.scope[disk] {
		return true
	}
	w.mu.Lock()
	w.outOfScope[src]++
	if w.outDisks == nil {
		w.outDisks = map[string]bool{}
	}
	if len(w.outDisks) < maxOutDisks {
		w.outDisks[disk] = true
	}
	w.mu.Unlock()
	return false
}

// signal records a signal now.
func (w *Watcher) signal(src Source, detail string) {
	now, err := event.Now()
	if err != nil {
		return
	}
	s := Signal{Source: src, At: now, Detail: detail}
	w.mu.Lock()
	if w.counts[src] == 0 {
		w.first[src] = now
	}
	w.counts[src]++
	if len(w.signals) < w.cfg.KeepSignals {
		w.signals = append(w.signals, s)
	}
	w.arming.Signal(src, now)
	w.mu.Unlock()
	if w.cfg.OnSignal != nil {
		w.cfg.OnSignal(s)
	}
}

// Armed says whether an armed mode would be armed at now.
func (w *Watcher) Armed(now event.Mono) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.arming.Armed(now)
}

// State says whether an armed mode would be armed at now; if so, until
// when it stays armed without another signal, and the source of the
// signal that armed it.
func (w *Watcher) State(now event.Mono) (armed bool, until event.Mono, by Source) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.arming.Armed(now) {
		return false, 0, ""
	}
	iv := w.arming.intervals[len(w.arming.intervals)-1]
	return true, w.arming.last.Add(w.arming.Hold), iv.By
}

// stopSources ends the goroutines and closes the triggers, once.
func (w *Watcher) stopSources() {
	w.mu.Lock()
	select {
	case <-w.quit:
		w.mu.Unlock()
		return
	default:
	}
	close(w.quit)
	stopW := w.stopW
	w.mu.Unlock()
	if stopW != nil {
		stopW.Close()
	}
	w.wg.Wait()
	for _, f := range w.psiFile {
		f.Close()
	}
}

// Stop stops the sources and returns what was seen from Start to end.
func (w *Watcher) Stop(end event.Mono) *Summary {
	w.stopSources()
	psi1 := readTotals(filepath.Join(w.cfg.ProcFS, "pressure"), "")
	var cg1 PSITotals
	if w.cfg.Cgroup != "" {
		cg1 = readTotals(w.cfg.Cgroup, ".pressure")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	s := &Summary{Start: w.start, End: end, Hold: w.cfg.Hold, Stall: w.cfg.Stall, Window: w.cfg.Window, Busy: w.cfg.Busy,
		Signals: append([]Signal(nil), w.signals...), Counts: map[Source]uint64{}, Intervals: w.arming.Intervals(end),
		Devices: append([]string(nil), w.cfg.Devices...), Cgroup: w.cfg.Cgroup}
	for k, v := range w.outOfScope {
		if s.OutOfScope == nil {
			s.OutOfScope = map[Source]uint64{}
		}
		s.OutOfScope[k] = v
	}
	for d := range w.outDisks {
		s.OutOfScopeDisks = append(s.OutOfScopeDisks, d)
	}
	sort.Strings(s.OutOfScopeDisks)
	s.First = map[Source]event.Mono{}
	for k, v := range w.counts {
		s.Counts[k] = v
		s.First[k] = w.first[k]
	}
	for _, src := range Sources {
		if st, ok := w.status[src]; ok {
			for _, pw := range w.psi {
				if pw.src == src && !pw.outside && pw.dropped > 0 {
					st.Reason = strings.TrimPrefix(st.Reason+fmt.Sprintf("; %d trigger events dropped: the stall total had not grown by %v since the last one (a new trigger's first check counts stall from before it was set)", pw.dropped, pw.stall), "; ")
				}
			}
			s.Sources = append(s.Sources, st)
		}
	}
	s.PSI = w.psi0.growth(psi1)
	if w.cfg.Cgroup != "" {
		s.CgroupPSI = w.cg0.growth(cg1)
	}
	return s
}

// growth is the stall from t0 to t1; Known only if both are.
func (t0 PSITotals) growth(t1 PSITotals) PSITotals {
	if !t0.Known || !t1.Known {
		return PSITotals{}
	}
	return PSITotals{Known: true, IOSome: t1.IOSome - t0.IOSome, IOFull: t1.IOFull - t0.IOFull,
		MemorySome: t1.MemorySome - t0.MemorySome, MemoryFull: t1.MemoryFull - t0.MemoryFull}
}

// readTotals reads the io and memory totals of dir/io<suffix> and
// dir/memory<suffix> (/proc/pressure/io, or a cgroup's io.pressure);
// Known only if both read.
func readTotals(dir, suffix string) PSITotals {
	ios, iof, err1 := readPSIFile(filepath.Join(dir, "io"+suffix))
	ms, mf, err2 := readPSIFile(filepath.Join(dir, "memory"+suffix))
	if err1 != nil || err2 != nil {
		return PSITotals{}
	}
	return PSITotals{Known: true, IOSome: ios, IOFull: iof, MemorySome: ms, MemoryFull: mf}
}
