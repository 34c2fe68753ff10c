package probes

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

	"github.com/whyslow/whyslow/internal/event"
)

// execProbe records every successful execve with its parent, uid, file
// name and arguments: the commands (a monitoring daemon's, udev's) whose
// side effects the other probes see; and, asked to (Config.FailedExecs),
// every failed one with its error.
type execProbe struct{}

func init() { register(execProbe{}) }

// Decl implements Probe.
func (execProbe) Decl() Decl {
	return Decl{
		Name:       event.ProbeExec,
		Mechanisms: []Rung{{Mech: event.MechTPBTF}},
		Describe:   "every program executed (sched_process_exec): command line, parent and uid; and when each process ends",
		Attach:     "tp_btf `sched_process_exec`, `sched_process_exit`; for `trace exec` also tracepoints `syscalls:sys_{enter,exit}_execve{,at}`, or, while the syscall probe runs on tp_btf, programs its `sys_enter`/`sys_exit` programs tail-call instead",
		Records:    "every exec with pid, parent, uid, file, argv; process ends; for `trace exec`, failed execs with their error",
	}
}

func (p execProbe) Start(cfg Config, sink Sink) (Running, event.ProbeStatus) {
	r, err := startExec(cfg, sink)
	if err != nil {
		return nil, unavailableStatus(p.Decl().Name, err)
	}
	st := p.Decl().started()
	if cfg.FailedExecs {
		if err := r.attachFailed(); err != nil {
			// The part of the probe that sees failed execs is skipped:
			// callers tell from Skipped, the Reason says it to people.
			st.Reason = "failed execs not seen: " + errReason(err)
			st.Skipped = []event.Skip{{Mechanism: event.MechTracepoint, Reason: st.Reason}}
		} else {
			st.Reason = "failed execs from the tracepoints syscalls:sys_exit_execve and sys_exit_execveat"
			if r.chained {
				st.Reason += "; " + chainedNote
			}
		}
	}
	return r, st
}

// attachFailed loads and attaches the syscall tracepoint programs that
// report failed execs (execveat's are optional), on the probe's ring buffer.
func (r *execRunning) attachFailed() error {
	if _, err := ensureTracefs(); err != nil {
		return err
	}
	var fail struct {
		Execing           *ebpf.Map     `ebpf:"execing"`
		ExecEnterExecve   *ebpf.Program `ebpf:"exec_enter_execve"`
		ExecEnterExecveat *ebpf.Program `ebpf:"exec_enter_execveat"`
		ExecExitExecve    *ebpf.Program `ebpf:"exec_exit_execve"`
		ExecExitExecveat  *ebpf.Program `ebpf:"exec_exit_execveat"`
	}
	opts := collectionOptions(r.kernel)
	opts.MapReplacements = map[string]*ebpf.Map{"events": r.objs.Events, "losses": r.objs.Losses}
	if err := r.spec.LoadAndAssign(&fail, opts); err != nil {
		return fmt.Errorf("loading objects: %w", err)
	}
	r.objs.Execing, r.objs.ExecEnterExecve, r.objs.ExecEnterExecveat, r.objs.ExecExitExecve, r.objs.ExecExitExecveat =
		fail.Execing, fail.ExecEnterExecve, fail.ExecEnterExecveat, fail.ExecExitExecve, fail.ExecExitExecveat
	// Each side's own way: its tracepoints (again, when the chain lets
	// its program go).
	exitTPs := []syscallTP{{r.objs.ExecExitExecve, "sys_exit_execve", true}, {r.objs.ExecExitExecveat, "sys_exit_execveat", false}}
	enterTPs := []syscallTP{{r.objs.ExecEnterExecve, "sys_enter_execve", true}, {r.objs.ExecEnterExecveat, "sys_enter_execveat", false}}
	ownExit, ownEnter := attachSyscallTPs(exitTPs...), attachSyscallTPs(enterTPs...)
	// The same on sys_enter/sys_exit, tail-called behind the syscall
	// probe's programs there while it runs on tp_btf (rqchain.go),
	// straight into their slots when it runs already (or is starting:
	// chainwait.go); the tracepoints otherwise. A kernel that will not
	// load them keeps the tracepoints.
	var btfProgs struct {
		ExecBtfEnter *ebpf.Program `ebpf:"exec_btf_enter"`
		ExecBtfExit  *ebpf.Program `ebpf:"exec_btf_exit"`
	}
	opts.MapReplacements["execing"] = r.objs.Execing
	chained := false
	if r.spec.LoadAndAssign(&btfProgs, opts) == nil {
		r.objs.ExecBtfEnter, r.objs.ExecBtfExit = btfProgs.ExecBtfEnter, btfProgs.ExecBtfExit
		if err := requireSyscallTPs(append(exitTPs, enterTPs...)...); err != nil {
			return err
		}
		chained = true
	}
	r.ways = func() error { return r.attachFailedWays(chained, ownExit, ownEnter) }
	if err := r.ways(); err != nil {
		r.ways = nil
		return err
	}
	return nil
}

// attachFailedWays puts the failed-exec programs where they run: on
// sys_exit's and sys_enter's chains (chained), else on their syscall
// tracepoints (ownExit, ownEnter). Exits first, so that no entry misses
// its exit.
func (r *execRunning) attachFailedWays(chained bool, ownExit, ownEnter func() (func() error, error)) error {
	if chained {
		var err error
		if r.exit, err = chainSysExit.joinWith(rankExecCall, r.objs.ExecBtfExit, nil, false, ownExit, nil); err != nil {
			return err
		}
		if r.enter, err = chainSysEnter.joinWith(rankExecCall, r.objs.ExecBtfEnter, nil, false, ownEnter, nil); err != nil {
			r.leaveChains()
			return err
		}
		r.chained = true
		return nil
	}
	clExit, err := ownExit()
	if err != nil {
		return err
	}
	clEnter, err := ownEnter()
	if err != nil {
		clExit()
		return err
	}
	r.ownClose = []func() error{clEnter, clExit}
	return nil
}

// leaveChains takes the failed-exec programs off sys_enter's and
// sys_exit's chains, entries first; and detaches their tracepoints when
// they had no chain.
func (r *execRunning) leaveChains() error {
	err := errors.Join(chainSysEnter.leave(r.enter), chainSysExit.leave(r.exit))
	for _, m := range []*rqMember{r.enter, r.exit} {
		if m != nil {
			r.armst.keepSkips(m.prog, m.inherited)
		}
	}
	r.enter, r.exit = nil, nil
	for _, cl := range r.ownClose {
		cl()
	}
	r.ownClose = nil
	return err
}

// skips are the skipped runs of the failed-exec programs on the chains,
// their own and those of the programs they ran behind.
func (r *execRunning) skips() (m map[*ebpf.Program]uint64) {
	r.armst.mu.Lock()
	defer r.armst.mu.Unlock()
	m = map[*ebpf.Program]uint64{}
	defer func() { m = r.armst.withPast(m) }()
	if r.enter != nil {
		m[r.enter.prog] = chainSysEnter.skips(r.enter)
	}
	if r.exit != nil {
		m[r.exit.prog] = chainSysExit.skips(r.exit)
	}
	return m
}

type execRunning struct {
	sink   Sink
	objs   execObjects // what is loaded of it
	spec   *ebpf.CollectionSpec
	kernel *btf.Spec
	links  []link.Link
	// enter and exit are exec_btf_enter and exec_btf_exit on sys_enter's
	// and sys_exit's chains (rqchain.go), for failed execs; chained says
	// they are. ownClose detaches the failed-exec tracepoints when not.
	enter, exit *rqMember
	chained     bool
	ownClose    []func() error
	// ways puts the failed-exec programs where they run (again, in armed
	// mode: nil when there are none); armst is its armed-mode state.
	ways  func() error
	armst armState
	// left: disarm took them off (arm puts them back).
	left bool
	ring

	stopOnce sync.Once
	stopErr  error
}

func startExec(cfg Config, sink Sink) (_ *execRunning, err error) {
	kernel, err := kernelSpec(cfg)
	if err != nil {
		return nil, err
	}
	spec, err := loadSpec(loadExec, nil)
	if err != nil {
		return nil, err
	}
	r := &execRunning{sink: sink, spec: spec, kernel: kernel}
	// The failed-exec programs are loaded only when asked for
	// (attachFailed): a kernel that rejects them keeps the rest.
	var core struct {
		Events   *ebpf.Map     `ebpf:"events"`
		Losses   *ebpf.Map     `ebpf:"losses"`
		ExecExec *ebpf.Program `ebpf:"exec_exec"`
		ExecExit *ebpf.Program `ebpf:"exec_exit"`
	}
	if err := spec.LoadAndAssign(&core, collectionOptions(kernel)); err != nil {
		return nil, fmt.Errorf("loading objects: %w", err)
	}
	r.objs.Events, r.objs.Losses, r.objs.ExecExec, r.objs.ExecExit = core.Events, core.Losses, core.ExecExec, core.ExecExit
	defer func() {
		if err != nil {
			closeAll(r.links)
			if r.rd != nil {
				r.rd.Close()
			}
			r.objs.Close()
		}
	}()
	if err = r.openRing(r.objs.Events); err != nil {
		return nil, fmt.Errorf("opening ring buffer: %w", err)
	}
	if r.links, err = attachTPBTF(r.objs.ExecExec, r.objs.ExecExit); err != nil {
		return nil, err
	}
	r.readAll(r.sink, event.ProbeExec, r.handle)
	return r, nil
}

func (r *execRunning) handle(raw []byte) {
	if len(raw) < 4 {
		r.decode++
		return
	}
	// Every record starts with its kind, a u32 (TestGoMirrorsC checks).
	switch execExecKind(binary.NativeEndian.Uint32(raw)) {
	case execExecKindEXEC_EXEC, execExecKindEXEC_FAIL:
		var e execExecEvent
		if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
			r.decode++
			return
		}
		r.sink.Event(execEvent(&e))
	case execExecKindEXEC_EXIT:
		var e execExitEvent
		if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
			r.decode++
			return
		}
		r.sink.Event(event.Exit{Time: event.Mono(e.TimeNs), Pid: e.Pid, ExitCode: e.ExitCode})
	default:
		r.decode++
	}
}

func execEvent(e *execExecEvent) event.Exec {
	return event.Exec{
		Time:          event.Mono(e.TimeNs),
		Forked:        event.Mono(e.ForkedNs),
		Task:          event.Task{Pid: e.Pid, Tgid: e.Tgid, Comm: cString(e.Comm[:])},
		PPid:          e.Ppid,
		ParentComm:    cString(e.ParentComm[:]),
		UID:           e.Uid,
		Filename:      cString(e.Filename[:]),
		Args:          splitArgs(e.Args[:min(int(e.ArgsLen), len(e.Args))]),
		ArgsTruncated: e.ArgsTruncated != 0,
		Ret:           e.Ret,
	}
}

// splitArgs splits the NUL-separated argv area of a process. The area ends
// with a NUL; a truncated one ends inside the last argument, which is kept.
func splitArgs(b []int8) []string {
	var sb strings.Builder
	for _, c := range b {
		sb.WriteByte(byte(c))
	}
	all := strings.TrimSuffix(sb.String(), "\x00")
	if all == "" {
		return nil
	}
	return strings.Split(all, "\x00")
}

// Checkpoint implements Checkpointer.
func (r *execRunning) Checkpoint(sink Sink) error {
	deliverLossesWith(sink, event.ProbeExec, r.objs.Losses, &r.objs, r.skips())
	return nil
}

// Stop detaches the program, delivers the buffered execs and the loss
// counts, and frees everything.
func (r *execRunning) Stop() error {
	r.stopOnce.Do(func() {
		r.armst.mu.Lock()
		r.armst.stopped = true
		leaveErr := r.leaveChains()
		r.armst.mu.Unlock()
		closeAll(r.links)
		r.drain()
		deliverLossesWith(r.sink, event.ProbeExec, r.objs.Losses, &r.objs, r.skips())
		r.undecodable(r.sink, event.ProbeExec)
		if err := r.objs.Close(); err != nil {
			r.stopErr = fmt.Errorf("closing objects: %w", err)
		} else if leaveErr != nil {
			r.stopErr = leaveErr
		}
	})
	return r.stopErr
}

// armRank implements armable: its failed-exec programs are last on
// sys_enter's and sys_exit's chains.
func (r *execRunning) armRank() int { return rankExecCall }

// gates says whether the probe has programs on the hot hooks: its
// failed-exec ones, only with Config.FailedExecs.
func (r *execRunning) gates() bool {
	r.armst.mu.Lock()
	defer r.armst.mu.Unlock()
	return r.ways != nil
}

// disarm takes the failed-exec programs off sys_enter and sys_exit: in
// slots they stay there (the syscall probe, disarmed first, and the
// programs before them run them no more); else they leave the chains or
// their syscall tracepoints. Failed execs meanwhile are not seen
// (successful ones are: sched_process_exec stays).
func (r *execRunning) disarm() error {
	r.armst.mu.Lock()
	defer r.armst.mu.Unlock()
	if r.armst.stopped || r.armst.disarmedNow() || r.ways == nil {
		return nil
	}
	r.armst.markDisarmed()
	if r.enter != nil && r.exit != nil && chainSysEnter.inSlot(r.enter) && chainSysExit.inSlot(r.exit) {
		return nil // run by the syscall probe's programs, disarmed first
	}
	r.left = true
	return r.leaveChains()
}

// arm puts back what disarm took off.
func (r *execRunning) arm() error {
	r.armst.mu.Lock()
	defer r.armst.mu.Unlock()
	if r.armst.stopped || !r.armst.disarmedNow() || r.ways == nil {
		return nil
	}
	if r.left {
		if err := r.ways(); err != nil {
			return err
		}
		r.left = false
	}
	r.armst.markArmed()
	return nil
}
