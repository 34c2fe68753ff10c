package scenario

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Fio is a running fio, as Writer, StartJob, BufferedWriter and
// StartNamedJob start it.
type Fio struct {
	// Pid is fio's pid. StartJob's jobs run as threads (--thread), so
	// every thread writing to the device has this tgid and the comm Name.
	Pid    int
	Name   string // the process's name: "fio", or the Job's Name
	Output string // fio's JSON report, complete once it exits; "" for a NamedJob's

	cmd      *exec.Cmd
	stopped  atomic.Bool // Stop interrupted it: its exit status is fio's answer to SIGINT
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
	Reads    int64         // read I/Os completed
	ReadMean time.Duration // mean read latency, submission to completion
	ReadMax  time.Duration
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
// threads with psync, like a Ceph journal (one report for both threads),
// as the process fio (tests and recorded traces name it so). It keeps the device busy, so a
// queue freeze has in-flight I/O to drain and new submissions block in
// queue enter. It needs the fio package; it fails the test if fio is
// missing. Durations under a second run for a second. The cleanup kills
// fio if it still runs.
func Writer(t testing.TB, dev string, dur time.Duration) *Fio {
	t.Helper()
	return StartJob(t, Job{Dev: dev, RW: "randwrite", Direct: true, Fdatasync: 1,
		NumJobs: 2, GroupReporting: true, Duration: dur})
}

// WriterIn is Writer run in cgroup c from its start (fio's first write is
// already charged to c).
func WriterIn(t testing.TB, c *Cgroup, dev string, dur time.Duration) *Fio {
	t.Helper()
	return StartJob(t, Job{Dev: dev, RW: "randwrite", Direct: true, Fdatasync: 1,
		NumJobs: 2, GroupReporting: true, Duration: dur, Cgroup: c})
}

// RateWriter is Writer with each thread held to iops writes a second, as a
// journal under a steady load is: it leaves the CPUs mostly idle, so that a
// fast device's writers wait for nothing but what the scenario does.
func RateWriter(t testing.TB, dev string, dur time.Duration, iops int) *Fio {
	t.Helper()
	if iops <= 0 {
		t.Fatalf("writer: rate %d writes a second must be positive", iops)
	}
	return StartJob(t, Job{Dev: dev, RW: "randwrite", Direct: true, Fdatasync: 1,
		NumJobs: 2, GroupReporting: true, RateIOPS: iops, Duration: dur})
}

// Job is an fio job a scenario runs on a block device, as one process
// (its jobs are threads: --thread).
type Job struct {
	// Name is the job's name and the process's: fio runs through a link
	// of that name (at most 15 bytes: the kernel's comm), so that probes
	// see it under this name; "" or "fio" runs fio itself.
	Name string
	Dev  string // the device, e.g. "loop3"
	// File, if set, is the path of a file fio writes in place of Dev
	// (with Extra's --size when fio must create it).
	File      string
	RW        string // --rw: randread, randwrite, read, write, randrw
	BS        string // --bs; default 4k
	Engine    string // --ioengine; default psync (libaio, io_uring, sync, ...)
	IODepth   int    // --iodepth, for the asynchronous engines; 0: fio's default
	Direct    bool   // --direct=1: O_DIRECT
	Fdatasync int    // --fdatasync: an fdatasync after every so many writes; 0: none
	NumJobs   int    // --numjobs; 0: 1
	// GroupReporting reports the jobs as one (--group_reporting), so that
	// the result has the percentiles of all of them.
	GroupReporting bool
	// RateIOPS caps each job's I/Os per second (--rate_iops); 0: no cap.
	RateIOPS int
	Duration time.Duration // --runtime, time-based; under a second runs a second
	// Cgroup runs the process in that cgroup from its start; nil: in the
	// test's.
	Cgroup *Cgroup
	// Extra are more fio arguments.
	Extra []string
}

// StartJob starts fio for job j and returns it running. It needs the fio
// package; it fails the test if fio is missing. The cleanup kills fio if it
// still runs.
func StartJob(t testing.TB, j Job) *Fio {
	t.Helper()
	RequireRoot(t)
	hold(t)
	bin, err := lookPath("fio", "fio")
	if err != nil {
		t.Fatalf("fio job: %v", err)
	}
	filename := j.File
	if filename == "" {
		if err := checkDev(j.Dev); err != nil {
			t.Fatalf("fio job: %v", err)
		}
		filename = "/dev/" + j.Dev
	}
	name := j.Name
	if name == "" {
		name = "fio"
	}
	if name != "fio" {
		if len(name) > 15 || strings.ContainsAny(name, "/ \x00") {
			t.Fatalf("fio job: bad process name %q (at most 15 bytes, no slash or space)", name)
		}
		link := filepath.Join(t.TempDir(), name)
		if err := os.Symlink(bin, link); err != nil {
			t.Fatalf("fio job: %v", err)
		}
		bin = link
	}
	dur := max(j.Duration, time.Second)
	args := []string{
		"--name=" + name,
		"--filename=" + filename,
		"--rw=" + cmp.Or(j.RW, "randwrite"),
		"--bs=" + cmp.Or(j.BS, "4k"),
		"--ioengine=" + cmp.Or(j.Engine, "psync"),
		fmt.Sprintf("--numjobs=%d", max(j.NumJobs, 1)), "--thread",
		"--time_based", fmt.Sprintf("--runtime=%dms", dur.Milliseconds()),
	}
	if j.Direct {
		args = append(args, "--direct=1")
	}
	if j.IODepth > 0 {
		args = append(args, fmt.Sprintf("--iodepth=%d", j.IODepth))
	}
	if j.Fdatasync > 0 {
		args = append(args, fmt.Sprintf("--fdatasync=%d", j.Fdatasync))
	}
	if j.RateIOPS > 0 {
		args = append(args, fmt.Sprintf("--rate_iops=%d", j.RateIOPS))
	}
	if j.GroupReporting {
		args = append(args, "--group_reporting")
	}
	args = append(args, j.Extra...)
	output := filepath.Join(t.TempDir(), "fio.json")
	args = append(args, "--output-format=json", "--output="+output)
	argv := append([]string{bin}, args...)
	if j.Cgroup != nil {
		argv = j.Cgroup.Command(argv...)
	}
	return startFio(t, fioRun{what: "fio job", name: name, argv: argv, timeout: dur + 2*time.Minute, output: output})
}

// fioRun is how startFio runs fio.
type fioRun struct {
	what    string        // the starter, in its errors: "fio job", "writer", "job bulk"
	name    string        // the process's name (Fio.Name), in errors too
	argv    []string      // the program (fio, or a link or copy of it) and its arguments
	timeout time.Duration // fio's process group is killed after it; 0: fio's --runtime bounds it
	output  string        // fio's JSON report (--output), which Wait parses; "": none
	// started, if set, is called with fio's pid once it runs (to move it
	// into a cgroup); an error kills fio and fails the test.
	started func(pid int) error
	// reap, if set, kills at cleanup what of fio may outlive its process
	// group, after the group is killed and before fio is waited for.
	reap func()
}

// startFio starts fio as r says, in a process group of its own killed with
// the test process, and returns it running. A goroutine waits for it (Done,
// Wait); the cleanup kills its process group if it still runs, reaps what r
// says and waits for it.
func startFio(t testing.TB, r fioRun) *Fio {
	t.Helper()
	f := &Fio{Name: r.name, Output: r.output, done: make(chan struct{}), cancel: func() {}}
	ctx := context.Background()
	if r.timeout > 0 {
		ctx, f.cancel = context.WithTimeout(ctx, r.timeout)
	}
	f.cmd = exec.CommandContext(ctx, r.argv[0], r.argv[1:]...)
	f.cmd.Stderr = &f.stderr
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	f.cmd.Cancel = func() error { return syscall.Kill(-f.cmd.Process.Pid, syscall.SIGKILL) }
	f.cmd.WaitDelay = 5 * time.Second
	if err := f.cmd.Start(); err != nil {
		f.cancel()
		t.Fatalf("%s: starting %s: %v", r.what, r.name, err)
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
		if r.reap != nil {
			r.reap()
		}
		f.Wait()
	})
	if r.started != nil {
		if err := r.started(f.Pid); err != nil {
			syscall.Kill(-f.Pid, syscall.SIGKILL)
			t.Fatalf("%s: %v", r.what, err)
		}
	}
	return f
}

// Stop ends fio before its time (SIGINT: it writes its report) and waits
// for it.
func (f *Fio) Stop() (*FioResult, error) {
	select {
	case <-f.done:
	default:
		f.stopped.Store(true)
		_ = syscall.Kill(-f.Pid, syscall.SIGCONT)
		_ = syscall.Kill(f.Pid, syscall.SIGINT)
	}
	return f.Wait()
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
		if f.stopped.Load() {
			f.err = nil // interrupted: its report is what counts
		}
		if f.err != nil {
			f.err = fmt.Errorf("fio: %w: %s", f.err, bytes.TrimSpace(f.stderr.Bytes()))
			return
		}
		if f.Output == "" {
			return // no report asked for
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
		Read  struct {
			TotalIOs int64   `json:"total_ios"`
			Lat      fioStat `json:"lat_ns"`
		} `json:"read"`
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
	var latSum, syncSum, readSum float64
	for _, job := range j.Jobs {
		r.Reads += job.Read.TotalIOs
		r.ReadMax = max(r.ReadMax, time.Duration(job.Read.Lat.Max))
		readSum += job.Read.Lat.Mean * float64(job.Read.Lat.N)
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
	var latN, readN int64
	for _, job := range j.Jobs {
		latN += job.Write.Lat.N
		readN += job.Read.Lat.N
	}
	if readN > 0 {
		r.ReadMean = time.Duration(readSum / float64(readN))
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
	return fmt.Sprintf("%d reads (lat mean %v, max %v), %d writes (lat mean %v, max %v; slat max %v), %d fdatasyncs (mean %v, max %v)",
		r.Reads, r.ReadMean.Round(time.Microsecond), r.ReadMax.Round(time.Microsecond), r.Writes, r.LatMean.Round(time.Microsecond), r.LatMax.Round(time.Microsecond), r.SlatMax.Round(time.Microsecond),
		r.Syncs, r.SyncMean.Round(time.Microsecond), r.SyncMax.Round(time.Microsecond))
}
