package scenario

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Fio is a running writer started by Writer.
type Fio struct {
	// Pid is fio's pid. The jobs run as threads (--thread), so every
	// thread writing to the device has this tgid and comm "fio".
	Pid    int
	Output string // fio's JSON report, complete once it exits

	cmd      *exec.Cmd
	cancel   context.CancelFunc
	done     chan struct{}
	stderr   bytes.Buffer
	waitOnce sync.Once
	res      *FioResult
	err      error
}

// FioResult is what fio measured for the writes, over all its jobs.
type FioResult struct {
	Jobs     int
	Writes   int64         // write I/Os completed
	Syncs    int64         // fdatasync calls completed
	LatMax   time.Duration // longest write, submission to completion
	LatMean  time.Duration
	SlatMax  time.Duration // longest submission; zero for psync (fio folds it into clat)
	ClatMax  time.Duration
	SyncMax  time.Duration // longest fdatasync
	SyncMean time.Duration
	// ClatP50 and ClatP99 are the writes' completion-latency percentiles,
	// SyncP50 and SyncP99 the fdatasyncs', over every job: set when the
	// report has one job for all (fio --group_reporting, as Writer runs
	// it), else zero. With the psync engine a write's clat is the whole
	// pwrite64 call as fio times it from user space.
	ClatP50, ClatP99 time.Duration
	SyncP50, SyncP99 time.Duration
}

// Writer starts a journal-like writer on /dev/<dev> for dur: fio doing
// 4 KiB random O_DIRECT writes, each followed by fdatasync, from two
// threads with psync, like a Ceph journal (one report for both threads). It keeps the device busy, so a
// queue freeze has in-flight I/O to drain and new submissions block in
// queue enter. It needs the fio package; it fails the test if fio is
// missing. Durations under a second run for a second. The cleanup kills
// fio if it still runs.
func Writer(t testing.TB, dev string, dur time.Duration) *Fio {
	t.Helper()
	return writer(t, dev, dur, nil)
}

// WriterIn is Writer run in cgroup c from its start (fio's first write is
// already charged to c).
func WriterIn(t testing.TB, c *Cgroup, dev string, dur time.Duration) *Fio {
	t.Helper()
	return writer(t, dev, dur, c)
}

// RateWriter is Writer with each thread held to iops writes a second, as a
// journal under a steady load is: it leaves the CPUs mostly idle, so that a
// fast device's writers wait for nothing but what the scenario does.
func RateWriter(t testing.TB, dev string, dur time.Duration, iops int) *Fio {
	t.Helper()
	if iops <= 0 {
		t.Fatalf("writer: rate %d writes a second must be positive", iops)
	}
	return writer(t, dev, dur, nil, fmt.Sprintf("--rate_iops=%d", iops))
}

func writer(t testing.TB, dev string, dur time.Duration, c *Cgroup, extra ...string) *Fio {
	t.Helper()
	RequireRoot(t)
	hold(t)
	bin, err := lookPath("fio", "fio")
	if err != nil {
		t.Fatalf("writer: %v", err)
	}
	if err := checkDev(dev); err != nil {
		t.Fatalf("writer: %v", err)
	}
	if dur < time.Second {
		dur = time.Second
	}
	f := &Fio{Output: filepath.Join(t.TempDir(), "fio.json"), done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), dur+2*time.Minute)
	f.cancel = cancel
	args := append([]string{
		"--name=journal",
		"--filename=/dev/" + dev,
		"--rw=randwrite", "--bs=4k", "--direct=1", "--fdatasync=1",
		"--ioengine=psync", "--numjobs=2", "--thread", "--group_reporting",
		"--time_based", fmt.Sprintf("--runtime=%dms", dur.Milliseconds()),
		"--output-format=json", "--output=" + f.Output,
	}, extra...)
	argv := append([]string{bin}, args...)
	if c != nil {
		argv = c.Command(argv...)
	}
	f.cmd = exec.CommandContext(ctx, argv[0], argv[1:]...)
	f.cmd.Stderr = &f.stderr
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	f.cmd.Cancel = func() error { return syscall.Kill(-f.cmd.Process.Pid, syscall.SIGKILL) }
	f.cmd.WaitDelay = 5 * time.Second
	if err := f.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("writer: starting fio: %v", err)
	}
	f.Pid = f.cmd.Process.Pid
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

// Pause stops fio (SIGSTOP to its process group) until Resume: under qemu's
// emulation a busy writer makes a diagnosis start and analyze several
// times slower, so tests run it only while the diagnosis observes.
func (f *Fio) Pause() error { return f.signal(syscall.SIGSTOP) }

// Resume lets a paused fio go on (SIGCONT).
func (f *Fio) Resume() error { return f.signal(syscall.SIGCONT) }

func (f *Fio) signal(sig syscall.Signal) error {
	if err := syscall.Kill(-f.Pid, sig); err != nil {
		return fmt.Errorf("fio (pid %d): %v: %w", f.Pid, sig, err)
	}
	return nil
}

// Done is closed when fio has exited.
func (f *Fio) Done() <-chan struct{} { return f.done }

// Wait waits for fio to finish and returns what it measured. It may be
// called more than once.
func (f *Fio) Wait() (*FioResult, error) {
	f.waitOnce.Do(func() {
		<-f.done
		f.cancel()
		if f.err != nil {
			f.err = fmt.Errorf("fio: %w: %s", f.err, bytes.TrimSpace(f.stderr.Bytes()))
			return
		}
		b, err := os.ReadFile(f.Output)
		if err != nil {
			f.err = fmt.Errorf("fio: %w", err)
			return
		}
		f.res, f.err = parseFio(b)
	})
	return f.res, f.err
}

// fioJSON is the part of fio's JSON report that FioResult needs.
type fioJSON struct {
	Jobs []struct {
		Error int `json:"error"`
		Write struct {
			TotalIOs int64   `json:"total_ios"`
			Lat      fioStat `json:"lat_ns"`
			Slat     fioStat `json:"slat_ns"`
			Clat     fioStat `json:"clat_ns"`
		} `json:"write"`
		Sync struct {
			Lat fioStat `json:"lat_ns"`
		} `json:"sync"`
	} `json:"jobs"`
}

type fioStat struct {
	Max        int64            `json:"max"`
	Mean       float64          `json:"mean"`
	N          int64            `json:"N"`
	Percentile map[string]int64 `json:"percentile"`
}

// pct returns a percentile fio reported ("50.000000"), or 0.
func (s fioStat) pct(p string) time.Duration { return time.Duration(s.Percentile[p]) }

// parseFio reads fio's --output-format=json report. Lines fio prints before
// the JSON object (notes, warnings) are skipped.
func parseFio(b []byte) (*FioResult, error) {
	i := bytes.IndexByte(b, '{')
	if i < 0 {
		return nil, fmt.Errorf("parsing fio report: no JSON object in %d bytes", len(b))
	}
	var j fioJSON
	if err := json.Unmarshal(b[i:], &j); err != nil {
		return nil, fmt.Errorf("parsing fio report: %w", err)
	}
	if len(j.Jobs) == 0 {
		return nil, fmt.Errorf("parsing fio report: no jobs")
	}
	r := &FioResult{Jobs: len(j.Jobs)}
	var latSum, syncSum float64
	for _, job := range j.Jobs {
		if job.Error != 0 {
			return nil, fmt.Errorf("fio job failed with error %d", job.Error)
		}
		w := job.Write
		r.Writes += w.TotalIOs
		r.Syncs += job.Sync.Lat.N
		r.LatMax = max(r.LatMax, time.Duration(w.Lat.Max))
		r.SlatMax = max(r.SlatMax, time.Duration(w.Slat.Max))
		r.ClatMax = max(r.ClatMax, time.Duration(w.Clat.Max))
		r.SyncMax = max(r.SyncMax, time.Duration(job.Sync.Lat.Max))
		latSum += w.Lat.Mean * float64(w.Lat.N)
		syncSum += job.Sync.Lat.Mean * float64(job.Sync.Lat.N)
	}
	var latN int64
	for _, job := range j.Jobs {
		latN += job.Write.Lat.N
	}
	if latN > 0 {
		r.LatMean = time.Duration(latSum / float64(latN))
	}
	if r.Syncs > 0 {
		r.SyncMean = time.Duration(syncSum / float64(r.Syncs))
	}
	if len(j.Jobs) == 1 {
		w, sy := j.Jobs[0].Write.Clat, j.Jobs[0].Sync.Lat
		r.ClatP50, r.ClatP99 = w.pct("50.000000"), w.pct("99.000000")
		r.SyncP50, r.SyncP99 = sy.pct("50.000000"), sy.pct("99.000000")
	}
	return r, nil
}

// String summarises the result on one line.
func (r *FioResult) String() string {
	return fmt.Sprintf("%d writes (lat mean %v, max %v; slat max %v), %d fdatasyncs (mean %v, max %v)",
		r.Writes, r.LatMean.Round(time.Microsecond), r.LatMax.Round(time.Microsecond), r.SlatMax.Round(time.Microsecond),
		r.Syncs, r.SyncMean.Round(time.Microsecond), r.SyncMax.Round(time.Microsecond))
}
