package selftest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/whyslow/whyslow/internal/blockqueue"
)

// An action undoes one thing the selftest did to the machine. The selftest
// undoes its actions itself, newest first, as it ends; it also writes each
// to its guard (Guard), a process of its own session that undoes them if
// the selftest dies before it could (SIGKILL, a crash).
//
// Actions are lines of text: "kill-group PGID", "rule PATH MARK",
// "queue DEV SCHEDULER NR_REQUESTS", "udevd PID", "rmdir PATH"; "done"
// says every action was undone.
type action string

// undo undoes a. A guard (guard true) runs after the selftest's process is
// gone, with every file it held closed: its loop device has detached.
func undo(a action, guard bool) error {
	f := strings.Fields(string(a))
	if len(f) == 0 {
		return nil
	}
	switch {
	case f[0] == "kill-group" && len(f) == 2:
		pgid, err := strconv.Atoi(f[1])
		if err != nil || pgid <= 1 {
			return fmt.Errorf("bad action %q", a)
		}
		if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("stopping the trigger (process group %d): %w", pgid, err)
		}
		return nil
	case f[0] == "rule" && len(f) == 3:
		return removeRule(f[1], f[2])
	case f[0] == "queue" && len(f) == 4:
		nr, err := strconv.Atoi(f[3])
		if err != nil {
			return fmt.Errorf("bad action %q", a)
		}
		if guard && !waitDetached(f[1], 10*time.Second) {
			return fmt.Errorf("%s is attached again: its queue is someone else's now, left as it is", f[1])
		}
		return blockqueue.Set(f[1], f[2], nr)
	case f[0] == "udevd" && len(f) == 2:
		pid, err := strconv.Atoi(f[1])
		if err != nil || pid <= 1 {
			return fmt.Errorf("bad action %q", a)
		}
		return stopUdevd(pid)
	case f[0] == "rmdir" && len(f) == 2:
		if err := os.Remove(f[1]); err != nil && !os.IsNotExist(err) && !errors.Is(err, syscall.ENOTEMPTY) {
			return err
		}
		return nil
	}
	return fmt.Errorf("bad action %q", a)
}

// waitDetached waits until the loop device dev has no backing file.
func waitDetached(dev string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if _, err := os.Stat(filepath.Join("/sys/block", dev, "loop", "backing_file")); os.IsNotExist(err) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// undoer undoes the selftest's actions and keeps its guard told.
type undoer struct {
	actions []action
	guard   io.WriteCloser // nil when no guard runs
	log     io.Writer
}

// add records an action, and tells the guard.
func (u *undoer) add(a action) {
	u.actions = append(u.actions, a)
	if u.guard != nil {
		fmt.Fprintln(u.guard, a)
	}
}

// run undoes every action, newest first, and says what failed; then
// releases the guard.
func (u *undoer) run() error {
	var errs []error
	for i := len(u.actions) - 1; i >= 0; i-- {
		if err := undo(u.actions[i], false); err != nil {
			errs = append(errs, err)
		}
	}
	u.actions = nil
	if u.guard != nil {
		fmt.Fprintln(u.guard, "done")
		u.guard.Close()
		u.guard = nil
	}
	return errors.Join(errs...)
}

// Guard is the guard process: it reads actions from r until the selftest
// says "done" or is gone (r ends), and in that case undoes them, newest
// first, saying so on log.
func Guard(r io.Reader, log io.Writer) error {
	var actions []action
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "done" {
			return nil
		}
		if line != "" {
			actions = append(actions, action(line))
		}
	}
	if len(actions) == 0 {
		return nil
	}
	fmt.Fprintf(log, "whyslow selftest guard: the selftest ended before it cleaned up; undoing %d actions\n", len(actions))
	var errs []error
	for i := len(actions) - 1; i >= 0; i-- {
		if err := undo(actions[i], true); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
