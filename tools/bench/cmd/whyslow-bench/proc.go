package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a tracing tool run by the benchmark: started, waited for until
// its probes are attached, stopped with SIGINT like a user would.
type proc struct {
	name  string
	cmd   *exec.Cmd
	start time.Time

	mu       sync.Mutex
	readyAt  time.Duration // from start; 0 until ready
	ready    chan struct{}
	tail     []string // the last lines of output
	exited   chan struct{}
	waitErr  error
	readyPat *regexp.Regexp
	readyF   string
	// signalOnce: SIGINT is sent once, not again every half second.
	// whyslow ends a run with its report on the first signal and aborts
	// at once, without the report, on a second.
	signalOnce bool
}

// readiness says how to tell that a tool has attached its probes: a file
// that appears (whyslow --ready-file) or a line it prints.
type readiness struct {
	file string
	line *regexp.Regexp
}

// startWhyslowProc starts whyslow (argv without the binary) like startProc,
// to be stopped by one SIGINT so that it writes its report.
func startWhyslowProc(name string, ready readiness, bin string, args ...string) (*proc, error) {
	p, err := startProc(name, ready, append([]string{bin}, args...)...)
	if p != nil {
		p.signalOnce = true
	}
	return p, err
}

// startProc starts argv; stdout and stderr are watched for the ready line
// and their last lines kept for error messages.
func startProc(name string, ready readiness, argv ...string) (*proc, error) {
	p := &proc{name: name, ready: make(chan struct{}), exited: make(chan struct{}), readyPat: ready.line, readyF: ready.file}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	// Its own process group (signals reach it alone); SIGTERM if the bench
	// dies first, so that no tracer or fio outlives it (an orphaned one
	// kept the heavy lock's descriptor and held every other job off).
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p.cmd.Stderr = p.cmd.Stdout
	p.start = time.Now()
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go p.watch(stdout)
	if ready.file != "" {
		go p.pollFile(ready.file)
	}
	return p, nil
}

func (p *proc) markReady() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.readyAt == 0 {
		p.readyAt = time.Since(p.start)
		close(p.ready)
	}
}

func (p *proc) watch(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if p.readyPat != nil && p.readyPat.MatchString(line) {
			p.markReady()
		}
		p.mu.Lock()
		p.tail = append(p.tail, line)
		if len(p.tail) > 20 {
			p.tail = p.tail[1:]
		}
		p.mu.Unlock()
	}
	_, _ = io.Copy(io.Discard, r)
	p.waitErr = p.cmd.Wait()
	close(p.exited)
}

func (p *proc) pollFile(path string) {
	for {
		if _, err := os.Stat(path); err == nil {
			p.markReady()
			return
		}
		select {
		case <-p.exited:
			return
		case <-time.After(time.Millisecond):
		}
	}
}

// waitReady waits until the tool is ready, exits, or timeout passes.
func (p *proc) waitReady(timeout time.Duration) error {
	select {
	case <-p.ready:
		return nil
	case <-p.exited:
		return fmt.Errorf("%s exited before it was ready (%v): %s", p.name, p.waitErr, p.lastLines())
	case <-time.After(timeout):
		return fmt.Errorf("%s not ready after %v: %s", p.name, timeout, p.lastLines())
	}
}

func (p *proc) lastLines() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, " | ")
}

// readyTime is how long the tool took from launch to ready.
func (p *proc) readyTime() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.readyAt
}

// stop sends SIGINT and waits for the exit; after timeout it kills the
// process group. SIGINT is sent again every half second (unless signalOnce):
// a tool that gets it between its ready line and its wait (biolatency sets a
// flag, then sleeps) only sees the next one.
func (p *proc) stop(timeout time.Duration) error {
	select {
	case <-p.exited:
		return p.exitErr()
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	deadline := time.After(timeout)
	again := time.NewTicker(500 * time.Millisecond)
	defer again.Stop()
	for {
		select {
		case <-p.exited:
			return p.exitErr()
		case <-again.C:
			if !p.signalOnce {
				_ = p.cmd.Process.Signal(syscall.SIGINT)
			}
		case <-deadline:
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.exited
			return fmt.Errorf("%s did not end within %v of SIGINT: killed", p.name, timeout)
		}
	}
}

// exitErr is the exit error, except for an exit by the SIGINT we sent or
// the exit code 130 tools use for it.
func (p *proc) exitErr() error {
	var ee *exec.ExitError
	if errors.As(p.waitErr, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && (ws.Signaled() && ws.Signal() == syscall.SIGINT || ws.ExitStatus() == 130) {
			return nil
		}
		return fmt.Errorf("%s: %v: %s", p.name, p.waitErr, p.lastLines())
	}
	return p.waitErr
}

// maxRSS is the peak resident set of the exited process, in bytes.
func (p *proc) maxRSS() int64 {
	if p.cmd.ProcessState == nil {
		return 0
	}
	if ru, ok := p.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss * 1024
	}
	return 0
}

// cpuTime is the user and system time of the exited process.
func (p *proc) cpuTime() time.Duration {
	if p.cmd.ProcessState == nil {
		return 0
	}
	return p.cmd.ProcessState.UserTime() + p.cmd.ProcessState.SystemTime()
}

// pid is the process id.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// statusKB reads a field (VmRSS, VmHWM) of /proc/PID/status in bytes.
func statusKB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field+":") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				return n * 1024
			}
		}
	}
	return 0
}

// progIDs returns the ids of the BPF programs a process holds open
// (/proc/PID/fdinfo/*: prog_id).
func progIDs(pid int) map[int]bool {
	ids := map[int]bool{}
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return ids
	}
	for _, e := range ents {
		b, err := os.ReadFile(dir + "/" + e.Name())
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "prog_id:"); ok {
				if id, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
					ids[id] = true
				}
			}
		}
	}
	return ids
}
