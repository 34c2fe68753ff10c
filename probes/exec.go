package probes

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"

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
		Attach:     "tp_btf `sched_process_exec`, `sched_process_exit`; for `trace exec` also tracepoints `syscalls:sys_{enter,exit}_execve{,at}`",
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
	var links []link.Link
	for _, tp := range []struct {
		prog     *ebpf.Program
		name     string
		required bool
	}{
		// Exits first, so that no entry misses its exit.
		{r.objs.ExecExitExecve, "sys_exit_execve", true},
		{r.objs.ExecExitExecveat, "sys_exit_execveat", false},
		{r.objs.ExecEnterExecve, "sys_enter_execve", true},
		{r.objs.ExecEnterExecveat, "sys_enter_execveat", false},
	} {
		l, err := link.Tracepoint("syscalls", tp.name, tp.prog, nil)
		if err != nil {
			if !tp.required && errors.Is(err, os.ErrNotExist) {
				continue
			}
			closeAll(links)
			return fmt.Errorf("attaching tracepoint syscalls/%s: %w", tp.name, err)
		}
		links = append(links, l)
	}
	r.links = append(r.links, links...)
	return nil
}

type execRunning struct {
	sink   Sink
	objs   execObjects // what is loaded of it
	spec   *ebpf.CollectionSpec
	kernel *btf.Spec
	links  []link.Link
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
	if r.rd, err = ringbuf.NewReader(r.objs.Events); err != nil {
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
	deliverLosses(sink, event.ProbeExec, r.objs.Losses, &r.objs)
	return nil
}

// Stop detaches the program, delivers the buffered execs and the loss
// counts, and frees everything.
func (r *execRunning) Stop() error {
	r.stopOnce.Do(func() {
		closeAll(r.links)
		r.drain()
		deliverLosses(r.sink, event.ProbeExec, r.objs.Losses, &r.objs)
		r.undecodable(r.sink, event.ProbeExec)
		if err := r.objs.Close(); err != nil {
			r.stopErr = fmt.Errorf("closing objects: %w", err)
		}
	})
	return r.stopErr
}
