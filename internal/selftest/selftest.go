// Package selftest is `whyslow selftest`: the CI step on a new kernel or
// machine. It reproduces the seed's incident on a loop device of its own
// (a udev rule that rewrites the queue's scheduler on "change" uevents, a
// daemon that runs `udevadm trigger` for the device periodically, a writer
// doing synced O_DIRECT writes), runs a diagnosis on it and says whether
// the causal chain was found: the periodic command, the uevents udev
// answers by freezing the queue, the writer stalled behind the freezes.
//
// It leaves nothing behind whatever happens: the loop device is attached
// over an unnamed file with autoclear (the kernel detaches it once the
// selftest's process is gone), the rule lives in /run/udev/rules.d, and a
// guard process of its own session undoes the rest (the rule, the queue
// settings, a udevd it started, the trigger) if the selftest dies before it
// could.
package selftest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/diagnose"
	"github.com/whyslow/whyslow/internal/blockqueue"
	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/udevd"
	"github.com/whyslow/whyslow/probes"
	"github.com/whyslow/whyslow/rules"
)

// Defaults of Options.
const (
	DefaultDuration = 20 * time.Second
	DefaultPeriod   = 2 * time.Second
	DefaultSize     = 256 << 20
)

// The story's rule writes these; before checking that the rule works the
// selftest sets others.
const (
	ruleScheduler  = "mq-deadline"
	ruleNrRequests = 64
	checkNr        = 32
)

// Chain is the causal chain the selftest must find, first cause first:
// the steps of its top finding.
var Chain = []string{"periodic-trigger", "uevent-freeze", "queue-freeze-stall"}

// Options configure a selftest.
type Options struct {
	// Duration is how long the diagnosis observes; Period how often the
	// trigger runs (the chain needs at least 3 runs).
	Duration, Period time.Duration
	// Size is the loop device's size in bytes.
	Size int64
	// Rules, BTF, Kernel and Mechanism are diagnose.Options'.
	Rules     *rules.Set
	BTF       string
	Kernel    *btf.Spec
	Mechanism probes.MechanismChoice
	// Guard is the command that runs the guard (Guard reading its stdin),
	// e.g. {"/usr/local/bin/whyslow", "selftest", "--guard"}; nil runs
	// none.
	Guard []string
	// Log is told what the selftest does, step by step.
	Log io.Writer
}

func (o *Options) defaults() {
	if o.Duration <= 0 {
		o.Duration = DefaultDuration
	}
	if o.Period <= 0 {
		o.Period = DefaultPeriod
	}
	if o.Size <= 0 {
		o.Size = DefaultSize
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
}

// Result is what a selftest found.
type Result struct {
	Kernel string
	Device string // the loop device, e.g. "loop3"
	// Probes are the probes of the diagnosis: the mechanism each ran on,
	// or why it could not run.
	Probes []event.ProbeStatus
	// Found is true when the top finding is Chain on Device.
	Found bool
	// Steps are the top finding's steps (rule: title); Missing says what
	// is missing from the chain when it was not found.
	Steps   []string
	Missing string
	// Diagnosis is the diagnosis's result.
	Diagnosis *diagnose.Result
}

// Run runs a selftest. An error means it could not run (not root, no
// udevd, no loop device): not that the chain was missing (Result.Found).
// Whatever happens, what it set up is undone before it returns; the error
// says what could not be.
func Run(ctx context.Context, opts Options) (res *Result, err error) {
	opts.defaults()
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("selftest needs root (euid %d): it attaches a loop device, installs a udev rule and loads BPF programs", os.Geteuid())
	}
	for _, tool := range []string{"udevadm", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("selftest needs %s: %w", tool, err)
		}
	}
	u := &undoer{log: opts.Log}
	if len(opts.Guard) > 0 {
		g, err := startGuard(opts.Guard)
		if err != nil {
			return nil, err
		}
		u.guard = g
	}
	defer func() {
		if uerr := u.run(); uerr != nil {
			err = errors.Join(err, fmt.Errorf("cleaning up: %w", uerr))
		} else {
			fmt.Fprintln(opts.Log, "selftest: cleaned up: trigger stopped, rule removed, queue restored, loop device detached")
		}
	}()
	for _, f := range removeStaleRules() {
		fmt.Fprintf(opts.Log, "selftest: removed %s, left by a selftest that was killed\n", f)
	}

	// udevd: the one running, or one of ours.
	if pid := udevd.Find(); pid != 0 {
		fmt.Fprintf(opts.Log, "selftest: udevd runs (pid %d)\n", pid)
	} else {
		pid, err := startUdevd()
		if err != nil {
			return nil, err
		}
		u.add(action(fmt.Sprintf("udevd %d", pid)))
		fmt.Fprintf(opts.Log, "selftest: started udevd (pid %d); it is stopped at the end\n", pid)
	}

	loop, err := attachLoop(opts.Size)
	if err != nil {
		return nil, err
	}
	defer func() {
		if derr := loop.detach(); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	dev := loop.name
	orig, err := blockqueue.Read(dev)
	if err != nil {
		return nil, err
	}
	u.add(action(fmt.Sprintf("queue %s %s %d", dev, orig.Scheduler, orig.NrRequests)))
	fmt.Fprintf(opts.Log, "selftest: attached /dev/%s (%d MiB, scheduler %s, nr_requests %d)\n", dev, opts.Size>>20, orig.Scheduler, orig.NrRequests)
	if err := installRule(u, dev, orig, opts.Log); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	res = &Result{Kernel: diagnose.KernelRelease(), Device: dev}
	// The trigger starts before the diagnosis, as a daemon that has been
	// running for a while: a command the diagnosis saw start would own
	// its udevadm runs (facts: Command.Under), and a one-off is no
	// periodic trigger.
	stop, err := startLoad(u, loop, opts.Period, opts.Log)
	if err != nil {
		return nil, err
	}
	var stopOnce sync.Once
	stopLoad := func() { stopOnce.Do(stop) }
	defer stopLoad()
	dopts := diagnose.Options{
		Duration: opts.Duration, MinLatency: time.Millisecond, Devices: []string{dev}, Rules: opts.Rules,
		BTF: opts.BTF, Kernel: opts.Kernel, Mechanism: opts.Mechanism,
		Observed: stopLoad,
	}
	fmt.Fprintf(opts.Log, "selftest: diagnosing /dev/%s for %s while `udevadm trigger` runs every %s and a synced writer writes\n", dev, opts.Duration, opts.Period)
	d, err := diagnose.Storage(ctx, dopts)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res.Diagnosis = d
	res.Probes = d.Timeline.Probes
	res.check()
	return res, nil
}

// check says whether the diagnosis found the chain.
func (r *Result) check() {
	fs := r.Diagnosis.Findings
	if len(fs) == 0 {
		r.Missing = "no finding at all"
		return
	}
	top := fs[0]
	var rules []string
	for _, s := range top.Steps {
		rules = append(rules, s.Rule)
		r.Steps = append(r.Steps, s.Rule+": "+s.Title)
	}
	switch {
	case top.Rule != Chain[len(Chain)-1]:
		r.Missing = fmt.Sprintf("the top finding is %s (%s), not %s", top.Rule, top.Title, Chain[len(Chain)-1])
	case !slices.Contains(top.Devices, r.Device):
		r.Missing = fmt.Sprintf("the top finding names %v, not %s", top.Devices, r.Device)
	case !slices.Equal(rules, Chain):
		var miss []string
		for _, c := range Chain {
			if !slices.Contains(rules, c) {
				miss = append(miss, c)
			}
		}
		r.Missing = fmt.Sprintf("the chain is %s: %s missing", strings.Join(rules, " → "), strings.Join(miss, ", "))
	case top.Trigger == nil:
		r.Missing = "the chain names no trigger"
	case top.Trigger.Comm != "udevadm":
		r.Missing = fmt.Sprintf("the chain's trigger is %s (pid %d) run by %s (pid %d), not the selftest's udevadm", top.Trigger.Comm, top.Trigger.Pid, top.Trigger.ParentComm, top.Trigger.PPid)
	default:
		r.Found = true
	}
}

// installRule installs the story's udev rule for dev and checks udevd
// applies it: after other values are set, a "change" uevent must bring the
// rule's back.
func installRule(u *undoer, dev string, orig blockqueue.Queue, log io.Writer) error {
	sched := ruleScheduler
	// The scheduler is reset to none first, as two rules fighting over it
	// would: kernels before 6.17 return before freezing when the value
	// written is the current one. A device without mq-deadline gets its
	// nr_requests changed twice instead.
	writes := fmt.Sprintf(`ATTR{queue/scheduler}="none", ATTR{queue/scheduler}="%s", ATTR{queue/nr_requests}="%d"`, sched, ruleNrRequests)
	if !orig.Offers(ruleScheduler) {
		sched = ""
		writes = fmt.Sprintf(`ATTR{queue/nr_requests}="%d", ATTR{queue/nr_requests}="%d"`, 48, ruleNrRequests)
	}
	mark := ruleMark(os.Getpid())
	path := filepath.Join(rulesDir, rulePrefix+dev+".rules")
	text := fmt.Sprintf("# whyslow selftest's rule, removed when it ends: %s\nACTION==\"change\", SUBSYSTEM==\"block\", KERNEL==\"%s\", %s\n", mark, dev, writes)
	if _, err := os.Stat(rulesDir); os.IsNotExist(err) {
		if err := os.MkdirAll(rulesDir, 0o755); err != nil {
			return err
		}
		u.add(action("rmdir " + rulesDir))
	}
	u.add(action(fmt.Sprintf("rule %s %s", path, mark)))
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		return err
	}
	if err := reloadRules(); err != nil {
		return err
	}
	checkSched := "none"
	if sched == "" {
		checkSched = orig.Scheduler
	}
	if err := blockqueue.Set(dev, checkSched, checkNr); err != nil {
		return fmt.Errorf("preparing %s: %w", dev, err)
	}
	// A uevent sent while udevd is starting or reloading can go untaken:
	// one more is sent when the first has not applied the rule in 5 s.
	var q blockqueue.Queue
	var err error
	for try, wait := range []time.Duration{5 * time.Second, 10 * time.Second} {
		if try > 0 {
			fmt.Fprintf(log, "selftest: the rule did not apply within 5 s (scheduler %q, nr_requests %d); triggering again\n", q.Scheduler, q.NrRequests)
		}
		if err := trigger(dev); err != nil {
			return err
		}
		if err := settle(); err != nil {
			return err
		}
		deadline := time.Now().Add(wait)
		for {
			q, err = blockqueue.Read(dev)
			if err == nil && (sched == "" || q.Scheduler == sched) && q.NrRequests == ruleNrRequests {
				fmt.Fprintf(log, "selftest: installed %s: udevd rewrites the queue of %s on every change uevent\n", path, dev)
				return nil
			}
			if time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return fmt.Errorf("udevd does not apply the selftest's rule %s: after two change uevents %s has scheduler %q, nr_requests %d (err %v), want %q, %d",
		path, dev, q.Scheduler, q.NrRequests, err, sched, ruleNrRequests)
}

// startLoad starts the trigger (a shell that runs `udevadm trigger` for
// the device every period, in a process group of its own) and the writer
// (two threads of synced 4 KiB O_DIRECT writes at random offsets). stop
// ends both.
func startLoad(u *undoer, loop *loopDevice, period time.Duration, log io.Writer) (stop func(), err error) {
	script := fmt.Sprintf("while :; do udevadm trigger --action=change /sys/block/%s; sleep %.3f; done", loop.name, period.Seconds())
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the trigger: %w", err)
	}
	pgid := cmd.Process.Pid
	u.add(action(fmt.Sprintf("kill-group %d", pgid)))
	waited := make(chan struct{})
	go func() { cmd.Wait(); close(waited) }()

	f, err := os.OpenFile("/dev/"+loop.name, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		syscall.Kill(-pgid, syscall.SIGKILL)
		return nil, fmt.Errorf("opening /dev/%s for the writer: %w", loop.name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	blocks := loop.sizeBlocks()
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			writer(ctx, f, blocks)
		}()
	}
	fmt.Fprintf(log, "selftest: trigger (sh, pid %d) and writer started\n", pgid)
	return func() {
		cancel()
		wg.Wait()
		f.Close()
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-waited
	}, nil
}

// sizeBlocks is the device's size in 4 KiB blocks.
func (l *loopDevice) sizeBlocks() int64 {
	n, err := unix.IoctlGetUint64(int(l.f.Fd()), unix.BLKGETSIZE64)
	if err != nil || n < 4096 {
		return 1
	}
	return int64(n / 4096)
}

// writer writes 4 KiB at random offsets with O_DIRECT, each followed by
// fdatasync, like a journal, until ctx ends.
func writer(ctx context.Context, f *os.File, blocks int64) {
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return
	}
	defer unix.Munmap(buf)
	for i := range buf {
		buf[i] = byte(i)
	}
	for ctx.Err() == nil {
		if _, err := f.WriteAt(buf, rand.Int64N(blocks)*4096); err != nil {
			return
		}
		unix.Fdatasync(int(f.Fd()))
	}
}

// startGuard starts the guard in a session of its own and returns the
// pipe to its stdin.
func startGuard(argv []string) (io.WriteCloser, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	w, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the selftest's guard %s: %w", argv[0], err)
	}
	go cmd.Wait()
	return w, nil
}
