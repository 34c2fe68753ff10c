package main

// whyslow selftest for real: it must find the chain on this kernel, fail
// when the chain cannot be there, and leave the machine as it found it
// whether it ends, is stopped by a signal, or is killed.

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/scenario"
)

// machineState is what the selftest may change: its udev rules, loop
// devices and their queues, udevd, the processes it starts.
type machineState struct {
	Rules     []string          // /run/udev/rules.d/99-whyslow-selftest-*
	RulesDir  bool              // /run/udev/rules.d exists
	Loops     map[string]string // attached loop device -> backing file
	Queues    map[string]string // loop device -> "scheduler nr_requests"
	Udevd     []string          // live udevd processes: "pid comm"
	Selftests []string          // live processes of the selftest's trigger or guard
}

func snapshot(t *testing.T) machineState {
	t.Helper()
	s := machineState{Loops: map[string]string{}, Queues: map[string]string{}}
	s.Rules, _ = filepath.Glob("/run/udev/rules.d/99-whyslow-selftest-*")
	_, err := os.Stat("/run/udev/rules.d")
	s.RulesDir = err == nil
	devs, _ := filepath.Glob("/sys/block/loop*")
	for _, d := range devs {
		name := filepath.Base(d)
		if b, err := os.ReadFile(filepath.Join(d, "loop", "backing_file")); err == nil {
			s.Loops[name] = strings.TrimSpace(string(b))
		}
		sched, _ := os.ReadFile(filepath.Join(d, "queue", "scheduler"))
		nr, _ := os.ReadFile(filepath.Join(d, "queue", "nr_requests"))
		s.Queues[name] = strings.TrimSpace(string(sched)) + " " + strings.TrimSpace(string(nr))
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(st), ") Z ") {
			continue
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		c := strings.TrimSpace(string(comm))
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		line := strings.ReplaceAll(string(cmdline), "\x00", " ")
		switch {
		case c == "systemd-udevd" || c == "udevd":
			s.Udevd = append(s.Udevd, fmt.Sprintf("%d %s", pid, c))
		case strings.Contains(line, "udevadm trigger --action=change /sys/block/loop") || strings.Contains(line, "selftest --guard"):
			s.Selftests = append(s.Selftests, fmt.Sprintf("%d %s", pid, line))
		}
	}
	return s
}

// leftBehind waits up to d for the machine to be as before; it reports
// what differs still.
func leftBehind(t *testing.T, before machineState, d time.Duration) string {
	t.Helper()
	var now machineState
	if waitUntil(d, func() bool { now = snapshot(t); return reflect.DeepEqual(before, now) }) {
		return ""
	}
	return fmt.Sprintf("before: %+v\nafter:  %+v", before, now)
}

// probeLine is a line of the selftest's probe table.
var probeLine = regexp.MustCompile(`(?m)^(\w+)\s+(\S+)\s+(ok|unavailable.*)$`)

// The selftest finds the chain here and says which probe ran on which
// mechanism; the machine is as before.
func TestSelftestFindsTheChain(t *testing.T) {
	scenario.RequireRoot(t)
	scenario.Hold(t)
	before := snapshot(t)
	report := filepath.Join(t.TempDir(), "selftest.json")
	r := run(t, "selftest", "--report", report, "--format", "json")
	t.Logf("stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("selftest exited %d", r.code)
	}
	if !strings.Contains(r.stdout, "PASS: the chain periodic-trigger → uevent-freeze → queue-freeze-stall was found on /dev/loop") {
		t.Errorf("no PASS line")
	}
	if !strings.Contains(r.stdout, "periodic-trigger: sh runs udevadm every") {
		t.Errorf("the chain does not start with the selftest's trigger")
	}
	probes := map[string]string{}
	for _, m := range probeLine.FindAllStringSubmatch(r.stdout, -1) {
		probes[m[1]] = m[2]
	}
	for _, p := range []string{"freeze", "offcpu", "exec", "uevent"} {
		if probes[p] == "" || probes[p] == "-" {
			t.Errorf("probe %s: no mechanism in the table (%v)", p, probes)
		}
	}
	if b, err := os.ReadFile(report); err != nil || !strings.Contains(string(b), `"queue-freeze-stall"`) {
		t.Errorf("--report: %v, %.200s", err, b)
	}
	if diff := leftBehind(t, before, 15*time.Second); diff != "" {
		t.Errorf("the selftest left the machine changed:\n%s", diff)
	}
}

// A run too short for a periodic trigger (3 runs) cannot find the chain:
// the selftest says what is missing and exits 1, leaving nothing.
func TestSelftestFailsWithoutTheChain(t *testing.T) {
	scenario.RequireRoot(t)
	scenario.Hold(t)
	before := snapshot(t)
	r := run(t, "selftest", "--duration", "6s", "--period", "4s")
	t.Logf("stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	if r.code != 1 {
		t.Fatalf("selftest exited %d, want 1", r.code)
	}
	if !strings.Contains(r.stdout, "FAIL: ") || !strings.Contains(r.stderr, "periodic-trigger missing") && !strings.Contains(r.stderr, "FAIL: the top finding") {
		t.Errorf("the failure does not say what is missing")
	}
	if !strings.Contains(r.stderr, "fewer than 3 times") {
		t.Errorf("no warning that --period is too long for --duration")
	}
	if diff := leftBehind(t, before, 15*time.Second); diff != "" {
		t.Errorf("the selftest left the machine changed:\n%s", diff)
	}
}

// Stopped by SIGTERM while it diagnoses, the selftest cleans up and exits
// 143; killed (SIGKILL), its guard cleans up after it.
func TestSelftestStoppedOrKilled(t *testing.T) {
	scenario.RequireRoot(t)
	scenario.Hold(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			before := snapshot(t)
			r := start(t, "selftest", "--duration", "60s")
			if !waitUntil(60*time.Second, func() bool { return strings.Contains(r.errb.String(), "selftest: diagnosing") }) {
				t.Fatalf("the selftest did not start its diagnosis; stderr %s", r.errb.String())
			}
			if during := snapshot(t); len(during.Rules) == 0 || len(during.Selftests) == 0 {
				t.Fatalf("while it runs, no rule or trigger of the selftest is seen: %+v", during)
			}
			time.Sleep(2 * time.Second)
			r.cmd.Process.Signal(sig)
			select {
			case <-r.done:
			case <-time.After(60 * time.Second):
				t.Fatalf("still running 60s after %v; stderr %s", sig, r.errb.String())
			}
			t.Logf("stderr:\n%s", r.errb.String())
			if sig == syscall.SIGTERM {
				if r.code != 128+int(sig) || !strings.Contains(r.errb.String(), "stopped by SIGTERM") {
					t.Errorf("after SIGTERM: exit %d, want %d, and a word of it", r.code, 128+int(sig))
				}
			} else if r.signaled != syscall.SIGKILL {
				t.Errorf("not killed: exit %d", r.code)
			}
			if diff := leftBehind(t, before, 30*time.Second); diff != "" {
				t.Errorf("after %v the machine is changed:\n%s", sig, diff)
			}
		})
	}
}
