package main

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// emptyPrograms attaches a program that does nothing (r0 = 0; exit) to each
// of the raw tracepoints named, the way whyslow attaches its own there
// (tp_btf, else a raw tracepoint): what the attach points cost by
// themselves, the floor under any program on them. The returned func
// detaches them.
func emptyPrograms(tracepoints ...string) (func() error, error) {
	var closers []func() error
	closeAll := func() error {
		var errs []error
		for i := len(closers) - 1; i >= 0; i-- {
			errs = append(errs, closers[i]())
		}
		closers = nil
		return errors.Join(errs...)
	}
	for _, tp := range tracepoints {
		prog, l, err := attachEmpty(tp)
		if err != nil {
			return nil, errors.Join(err, closeAll())
		}
		closers = append(closers, prog.Close, l.Close)
	}
	return closeAll, nil
}

var emptyBody = asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}

func attachEmpty(tp string) (*ebpf.Program, link.Link, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "floor", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp, AttachTo: tp,
		License: "GPL", Instructions: emptyBody,
	})
	if err == nil {
		l, lerr := link.AttachTracing(link.TracingOptions{Program: prog})
		if lerr == nil {
			return prog, l, nil
		}
		prog.Close()
		err = lerr
	}
	btfErr := err
	prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "floor", Type: ebpf.RawTracepoint, License: "GPL", Instructions: emptyBody,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("empty program on %s: tp_btf: %v; raw_tp: %w", tp, btfErr, err)
	}
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: tp, Program: prog})
	if err != nil {
		prog.Close()
		return nil, nil, fmt.Errorf("empty program on %s: tp_btf: %v; raw_tp: %w", tp, btfErr, err)
	}
	return prog, l, nil
}
