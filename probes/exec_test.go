package probes

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
)

func TestSplitArgs(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"empty", "", nil},
		{"one", "/bin/true\x00", []string{"/bin/true"}},
		{"several", "/bin/echo\x00hello\x00world\x00", []string{"/bin/echo", "hello", "world"}},
		{"empty argument", "/bin/echo\x00\x00x\x00", []string{"/bin/echo", "", "x"}},
		{"truncated inside the last", "/bin/echo\x00hel", []string{"/bin/echo", "hel"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := make([]int8, len(tt.in))
			for i := range len(tt.in) {
				b[i] = int8(tt.in[i])
			}
			if got := splitArgs(b); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("splitArgs(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// TestExecLive runs a shell that forks and executes echo, and expects both
// execs with their exact file names, arguments and parents.
func TestExecLive(t *testing.T) {
	schedRequireRoot(t)
	sink := &schedProcSink{}
	run, st := execProbe{}.Start(Config{ProcFS: "/proc", SysFS: "/sys"}, sink)
	if run == nil {
		t.Fatalf("start: %+v", st)
	}
	if st.Mechanism != event.MechTPBTF {
		t.Errorf("status %+v", st)
	}
	defer run.Stop()

	// "; true" keeps dash from exec'ing echo in place of itself.
	script := "/bin/echo hello world; true"
	long := strings.Repeat("x", 300)
	sh := exec.Command("/bin/sh", "-c", script)
	if out, err := sh.CombinedOutput(); err != nil || string(out) != "hello world\n" {
		t.Fatalf("sh: %q %v", out, err)
	}
	if out, err := exec.Command("/bin/echo", long).Output(); err != nil || len(out) != 301 {
		t.Fatalf("echo: %v", err)
	}
	shPid := uint32(sh.Process.Pid)
	me := uint32(os.Getpid())
	comm, _ := os.ReadFile("/proc/self/comm")
	myComm := strings.TrimSpace(string(comm))

	isExec := func(file string, arg0 ...string) func(event.Event) bool {
		return func(e event.Event) bool {
			x, ok := e.(event.Exec)
			return ok && x.Filename == file && len(x.Args) > len(arg0)-1 && reflect.DeepEqual(x.Args[:len(arg0)], arg0)
		}
	}
	wait := func(m func(event.Event) bool) event.Exec {
		t.Helper()
		e, ok := sink.waitFor(5*time.Second, m)
		if !ok {
			t.Fatalf("exec not seen; got %+v", sink.events)
		}
		return e.(event.Exec)
	}

	shExec := wait(isExec("/bin/sh", "/bin/sh", "-c", script))
	want := event.Exec{
		Time: shExec.Time, Forked: shExec.Forked, Task: event.Task{Pid: shPid, Tgid: shPid, Comm: "sh"},
		PPid: me, ParentComm: myComm, UID: 0, Filename: "/bin/sh",
		Args: []string{"/bin/sh", "-c", script},
	}
	if !reflect.DeepEqual(shExec, want) {
		t.Errorf("sh exec\n got %+v\nwant %+v", shExec, want)
	}

	echo := wait(isExec("/bin/echo", "/bin/echo", "hello", "world"))
	if echo.PPid != shPid || echo.ParentComm != "sh" || echo.Task.Comm != "echo" ||
		echo.Task.Pid == shPid || echo.Task.Pid != echo.Task.Tgid || echo.ArgsTruncated ||
		!reflect.DeepEqual(echo.Args, []string{"/bin/echo", "hello", "world"}) {
		t.Errorf("echo exec %+v, want child of sh %d", echo, shPid)
	}
	if echo.Forked == 0 || echo.Forked > echo.Time || echo.Time-echo.Forked > event.Mono(time.Second) || echo.Forked < shExec.Time {
		t.Errorf("echo forked at %d, want between sh's exec at %d and its own exec at %d", echo.Forked, shExec.Time, echo.Time)
	}
	if echo.Time <= shExec.Time {
		t.Errorf("echo at %d not after sh at %d", echo.Time, shExec.Time)
	}

	// Each process's end is seen after its exec, with its exit status.
	exit3 := exec.Command("/bin/sh", "-c", "exit 3")
	if err := exit3.Run(); err == nil {
		t.Fatal("sh -c 'exit 3' succeeded")
	}
	ex3, ok := sink.waitFor(5*time.Second, func(e event.Event) bool {
		x, ok := e.(event.Exit)
		return ok && x.Pid == uint32(exit3.Process.Pid)
	})
	if !ok {
		t.Fatalf("exit of pid %d not seen", exit3.Process.Pid)
	}
	if got := ex3.(event.Exit).ExitCode; got != 3<<8 {
		t.Errorf("exit status %#x, want %#x", got, 3<<8)
	}
	echoExit, ok := sink.waitFor(5*time.Second, func(e event.Event) bool {
		x, ok := e.(event.Exit)
		return ok && x.Pid == echo.Task.Pid
	})
	if !ok || echoExit.(event.Exit).Time <= echo.Time {
		t.Errorf("echo's exit %+v not seen after its exec at %d", echoExit, echo.Time)
	}

	// argv longer than the 256 bytes copied: flagged, prefix kept.
	trunc := wait(isExec("/bin/echo", "/bin/echo", long[:256-len("/bin/echo\x00")]))
	if !trunc.ArgsTruncated || len(trunc.Args) != 2 || trunc.PPid != me {
		t.Errorf("long exec %+v", trunc)
	}

	if err := run.Stop(); err != nil {
		t.Fatal(err)
	}
	if len(sink.losses) != 0 {
		t.Errorf("losses %+v", sink.losses)
	}
}

// Asked for failed execs, the probe reports an execve that fails with its
// error, the caller as the task and what it asked to run; an exec that
// runs is reported once, with Ret 0.
func TestExecFailed(t *testing.T) {
	schedRequireRoot(t)
	sink := &schedProcSink{}
	run, st := execProbe{}.Start(Config{ProcFS: "/proc", SysFS: "/sys", FailedExecs: true}, sink)
	if run == nil {
		t.Fatalf("start: %+v", st)
	}
	defer run.Stop()
	if !strings.HasPrefix(st.Reason, "failed execs from the tracepoints") {
		t.Fatalf("status %+v: the syscall tracepoints work on every kernel whyslow runs on", st)
	}
	noExec := filepath.Join(t.TempDir(), "not-executable")
	if err := os.WriteFile(noExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const missing = "/nonexistent/whyslow-missing"
	// "; true" keeps the shell from exec'ing the last command in its place.
	script := missing + " one two; " + noExec + "; /bin/true three; true"
	sh := exec.Command("/bin/sh", "-c", script)
	if out, err := sh.CombinedOutput(); err != nil {
		t.Fatalf("sh: %v: %s", err, out)
	}
	shPid := uint32(sh.Process.Pid)
	find := func(file string, ret int32) event.Exec {
		t.Helper()
		e, ok := sink.waitFor(5*time.Second, func(e event.Event) bool {
			x, ok := e.(event.Exec)
			return ok && x.Filename == file && x.PPid == shPid && x.Ret == ret
		})
		if !ok {
			t.Fatalf("no exec of %s by a child of sh %d with ret %d; got %+v", file, shPid, ret, sink.events)
		}
		return e.(event.Exec)
	}
	e := find(missing, -int32(unix.ENOENT))
	if e.Task.Comm != "sh" || e.Task.Pid == shPid || e.ParentComm != "sh" || !reflect.DeepEqual(e.Args, []string{missing, "one", "two"}) || e.Forked != 0 {
		t.Errorf("failed exec %+v: want sh's child, args [%s one two]", e, missing)
	}
	e = find(noExec, -int32(unix.EACCES))
	if !reflect.DeepEqual(e.Args, []string{noExec}) {
		t.Errorf("failed exec %+v: want args [%s]", e, noExec)
	}
	find("/bin/true", 0)
	if err := run.Stop(); err != nil {
		t.Fatal(err)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	for _, ev := range sink.events {
		if x, ok := ev.(event.Exec); ok && x.Filename == "/bin/true" && x.PPid == shPid && x.Ret != 0 {
			t.Errorf("/bin/true ran but is reported failed: %+v", x)
		}
	}
}
