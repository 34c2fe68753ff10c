package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// StormResult is whyslow under an event storm: uevents and execs as fast as
// asked (or as this machine manages) plus the I/O load, at once.
type StormResult struct {
	Seconds       float64     `json:"seconds"`
	TargetUevents int         `json:"target_uevents_per_s"`
	TargetExecs   int         `json:"target_execs_per_s"`
	Uevents       float64     `json:"uevents_per_s"`
	Execs         float64     `json:"execs_per_s"`
	IOPS          float64     `json:"iops"`
	RSSMiB        []RSSSample `json:"rss_mib"`
	PeakRSSMiB    float64     `json:"peak_rss_mib"`
	CPUSeconds    float64     `json:"cpu_seconds"`
	ReportSeconds float64     `json:"report_seconds"` // SIGINT to exit
	LostEvents    uint64      `json:"lost_events"`
	Losses        []LossLine  `json:"losses"`
	UeventsSeen   int         `json:"uevents_seen"` // in the report, for the loop device
}

// RSSSample is whyslow's resident set at a time of the storm.
type RSSSample struct {
	At  float64 `json:"at_s"`
	MiB float64 `json:"mib"`
}

func (b *bench) storm() error {
	tag := "storm"
	ps, err := b.startWhyslow(tag)
	if err != nil {
		stopAll(ps)
		return err
	}
	ws := ps[0]
	d := b.o.stormTime
	res := &StormResult{Seconds: d.Seconds(), TargetUevents: b.o.uevents, TargetExecs: b.o.execs}

	load, err := b.startStormLoad(d)
	if err != nil {
		stopAll(ps)
		return err
	}
	t0 := time.Now()
	// fio ramps up for 1 s before its runtime.
	for time.Since(t0) < d+time.Second {
		time.Sleep(500 * time.Millisecond)
		res.RSSMiB = append(res.RSSMiB, RSSSample{At: time.Since(t0).Seconds(), MiB: float64(statusKB(ws.pid(), "VmRSS")) / (1 << 20)})
	}
	achieved, fioErr, ueventErr, stuckErr := load.stop(loadStopTimeout)
	res.Uevents, res.Execs, res.IOPS = achieved.uevents, achieved.execs, achieved.iops
	if stuckErr != nil {
		stopAll(ps)
		return stuckErr
	}
	hwm := statusKB(ws.pid(), "VmHWM")
	t1 := time.Now()
	err = ws.stop(5 * time.Minute)
	res.ReportSeconds = time.Since(t1).Seconds()
	res.PeakRSSMiB = float64(max(hwm, ws.maxRSS())) / (1 << 20)
	res.CPUSeconds = ws.cpuTime().Seconds()
	if err == nil {
		err = fioErr
	}
	if err == nil {
		err = ueventErr
	}
	if err != nil {
		return err
	}
	rep, err := readReport(filepath.Join(b.dir, tag+".json"))
	if err != nil {
		return err
	}
	res.LostEvents = rep.LostEvents
	res.Losses = addLosses(nil, rep)
	sort.Slice(res.Losses, func(i, j int) bool { return res.Losses[i].Count > res.Losses[j].Count })
	for _, dv := range rep.Devices {
		if dv.Name == filepath.Base(b.loop) {
			res.UeventsSeen = dv.Uevents.Count
		}
	}
	b.logf("storm: %.0f uevents/s, %.0f execs/s, %.0f IOPS; whyslow peak RSS %.0f MiB, %d events lost, report after %.1fs",
		res.Uevents, res.Execs, res.IOPS, res.PeakRSSMiB, res.LostEvents, res.ReportSeconds)
	b.res.Storm = res
	return nil
}

// stormLoad is the storm's load running: uevents, execs and fio.
type stormLoad struct {
	t0               time.Time
	stopCh           chan struct{}
	wg               sync.WaitGroup
	nUevents, nExecs atomic.Int64
	fr               fioRun

	mu                sync.Mutex
	running           map[string]int // workers not ended yet, by kind
	fioErr, ueventErr error
}

// achieved is what a storm load achieved, per second.
type achieved struct{ uevents, execs, iops float64 }

// loadStopTimeout bounds how long the storm's load may take to end once
// told to (fio: once its runtime is over): a worker still running then is
// named in the error, not waited for.
const loadStopTimeout = 2 * time.Minute

// startStormLoad starts the storm's load for d: change uevents of the loop
// device from 2 threads, fork+exec of a tiny binary from 4 (forks take the
// CPU from everything else on a small machine), and fio.
func (b *bench) startStormLoad(d time.Duration) (*stormLoad, error) {
	if b.fio.Engine == "" {
		b.fio = fioConfig{Engine: "libaio", Depth: 32, Jobs: 2}
	}
	exe := filepath.Join(b.dir, "exit0")
	if err := os.WriteFile(exe, tinyELF(), 0o755); err != nil {
		return nil, err
	}
	l := &stormLoad{t0: time.Now(), stopCh: make(chan struct{}), running: map[string]int{}}
	l.goWorker("fio", func() {
		fr, err := b.runFio(b.fio, d)
		l.mu.Lock()
		l.fr, l.fioErr = fr, err
		l.mu.Unlock()
	})
	const ueventWriters = 2
	for range ueventWriters {
		l.goWorker("uevent writer", func() {
			err := ueventStorm(filepath.Join("/sys/block", filepath.Base(b.loop), "uevent"), b.o.uevents/ueventWriters, l.stopCh, &l.nUevents)
			l.mu.Lock()
			if err != nil && l.ueventErr == nil {
				l.ueventErr = err
			}
			l.mu.Unlock()
		})
	}
	const execWorkers = 4
	for range execWorkers {
		l.goWorker("exec worker", func() { execStorm(exe, b.o.execs/execWorkers, l.stopCh, &l.nExecs) })
	}
	return l, nil
}

// goWorker runs f as a worker of kind, counted in running until it ends.
func (l *stormLoad) goWorker(kind string, f func()) {
	l.mu.Lock()
	l.running[kind]++
	l.mu.Unlock()
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer func() {
			l.mu.Lock()
			l.running[kind]--
			l.mu.Unlock()
		}()
		f()
	}()
}

// stop ends the load (fio ends by itself at its runtime) and says what it
// achieved. It waits at most timeout: a worker that has not ended by then
// is named in stuckErr (and left running: the benchmark's process ends
// with it).
func (l *stormLoad) stop(timeout time.Duration) (a achieved, fioErr, ueventErr, stuckErr error) {
	close(l.stopCh)
	elapsed := time.Since(l.t0).Seconds()
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		l.mu.Lock()
		var stuck []string
		for _, kind := range []string{"fio", "uevent writer", "exec worker"} {
			if n := l.running[kind]; n > 0 {
				stuck = append(stuck, fmt.Sprintf("%d %s", n, kind))
			}
		}
		l.mu.Unlock()
		stuckErr = fmt.Errorf("the storm's load did not end within %v of its stop: still running: %s", timeout, strings.Join(stuck, ", "))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return achieved{float64(l.nUevents.Load()) / elapsed, float64(l.nExecs.Load()) / elapsed, l.fr.IOPS}, l.fioErr, l.ueventErr, stuckErr
}

// ueventStorm writes "change" to a device's uevent file at rate per second
// (or as fast as this machine manages) until stop. It checks stop before
// every write and never owes more than maxBacklog of writes: a writer that
// falls behind its rate (one TCG vCPU manages some thousands a second, not
// 50000) once caught up in one batch of everything it owed, checking stop
// only between batches, and each batch lasted rate/achieved times as long
// as all before it, so a stop came hours late (the guest of make
// bench-vm-serve that did not end after its hour).
func ueventStorm(path string, rate int, stop <-chan struct{}, n *atomic.Int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	start := time.Now()
	change := []byte("change")
	maxBacklog := max(int64(rate)/10, 1) // 100 ms of writes
	var sent int64
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		due := int64(time.Since(start).Seconds() * float64(rate))
		if due-sent > maxBacklog {
			sent = due - maxBacklog // what this machine cannot write is not owed
		}
		if sent >= due {
			time.Sleep(200 * time.Microsecond)
			continue
		}
		if _, err := f.Write(change); err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
		sent++
		n.Add(1)
	}
}

// execStorm forks and execs exe at rate per second (or as fast as it can)
// until stop.
func execStorm(exe string, rate int, stop <-chan struct{}, n *atomic.Int64) {
	start := time.Now()
	var done int64
	for {
		select {
		case <-stop:
			return
		default:
		}
		if due := int64(time.Since(start).Seconds() * float64(rate)); done >= due {
			time.Sleep(time.Millisecond)
			continue
		}
		pid, err := syscall.ForkExec(exe, []string{"exit0"}, &syscall.ProcAttr{})
		if err != nil {
			time.Sleep(time.Millisecond)
			continue
		}
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(pid, &ws, 0, nil)
		done++
		n.Add(1)
	}
}

// tinyELF returns a static x86-64 executable that exits 0: one load
// segment, nine bytes of code (exit(0)), no libc. Exec of it costs what the
// kernel's exec costs, nothing more.
func tinyELF() []byte {
	const base = 0x400000
	code := []byte{0xb8, 0x3c, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05} // mov eax,60; xor edi,edi; syscall
	const ehsize, phsize = 64, 56
	size := uint64(ehsize + phsize + len(code))
	var b bytes.Buffer
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	le := binary.LittleEndian
	w := func(v any) { _ = binary.Write(&b, le, v) }
	w(uint16(2))                      // ET_EXEC
	w(uint16(0x3e))                   // EM_X86_64
	w(uint32(1))                      // EV_CURRENT
	w(uint64(base + ehsize + phsize)) // entry
	w(uint64(ehsize))                 // program headers
	w(uint64(0))                      // no section headers
	w(uint32(0))                      // flags
	w(uint16(ehsize))
	w(uint16(phsize))
	w(uint16(1)) // one program header
	w(uint16(64))
	w(uint16(0))
	w(uint16(0))
	w(uint32(1))    // PT_LOAD
	w(uint32(5))    // R+X
	w(uint64(0))    // offset
	w(uint64(base)) // vaddr
	w(uint64(base)) // paddr
	w(size)         // filesz
	w(size)         // memsz
	w(uint64(0x1000))
	b.Write(code)
	return b.Bytes()
}
