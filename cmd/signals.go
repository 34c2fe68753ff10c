package cmd

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// stopSignals end an observation early: Ctrl-C, kill, and the hang-up of
// the terminal or ssh session the run was started from.
var stopSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP}

// exit ends the process; tests replace it.
var exit = os.Exit

// interrupts handles the stop signals of a command. While it observes, the
// first one ends the observation early (its context is cancelled) and the
// command goes on to analyze and write its report and trace. Then SIGINT
// or SIGTERM (a second Ctrl-C, or one during the analysis) aborts at once:
// the outputs in progress are given up (their temporary files removed;
// those complete stay), one line says so on stderr, and the process exits
// with 128 + the signal's number (130, 143). SIGHUP then changes nothing:
// a session that hangs up asks for nothing, and the shell it ran in sends
// it a second one as it goes. A signal the process was started with
// ignored (nohup, a background job of a script) stays ignored.
type interrupts struct {
	ch     chan os.Signal
	cancel context.CancelFunc
	ios    *IO
	abort  func()

	mu        sync.Mutex
	observing bool
	stopped   chan struct{}
}

// handleInterrupts starts handling the stop signals. observing says the
// command starts by observing (diagnose); abort gives up its outputs. The
// returned context ends at the first signal while observing.
func handleInterrupts(ctx context.Context, ios *IO, observing bool, abort func()) (context.Context, *interrupts) {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithCancel(ctx)
	in := &interrupts{ch: make(chan os.Signal, 4), cancel: cancel, ios: ios, abort: abort, observing: observing, stopped: make(chan struct{})}
	for _, sig := range stopSignals {
		if !signal.Ignored(sig) {
			signal.Notify(in.ch, sig)
		}
	}
	go in.loop()
	return ctx, in
}

func (in *interrupts) loop() {
	for {
		select {
		case <-in.stopped:
			return
		case sig := <-in.ch:
			in.mu.Lock()
			observing := in.observing
			in.observing = false
			in.mu.Unlock()
			switch {
			case observing:
				if in.ios.ErrTTY {
					fmt.Fprintf(in.ios.ErrOut, "\r\033[Kwhyslow: %s: ending the observation early, then writing the report; Ctrl-C again aborts\n", sigName(sig))
				}
				in.cancel()
			case sig == syscall.SIGHUP:
				// The run goes on to write what it observed.
			default:
				if in.abort != nil {
					in.abort()
				}
				fmt.Fprintf(in.ios.ErrOut, "whyslow: %s: aborted at once; the outputs not yet complete were not written\n", sigName(sig))
				exit(128 + int(sig.(syscall.Signal)))
				return
			}
		}
	}
}

// observed says the observation is over: a signal now aborts.
func (in *interrupts) observed() {
	in.mu.Lock()
	in.observing = false
	in.mu.Unlock()
}

// stop stops handling the signals: the default actions apply again.
func (in *interrupts) stop() {
	signal.Stop(in.ch)
	close(in.stopped)
	in.cancel()
}

// sigName names a signal as kill -l does, with what it usually means.
func sigName(sig os.Signal) string {
	s, ok := sig.(syscall.Signal)
	if !ok {
		return sig.String()
	}
	return fmt.Sprintf("%s (%s)", unix.SignalName(s), s)
}
