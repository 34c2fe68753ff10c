package scenario

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/command"
	"github.com/whyslow/whyslow/internal/udevd"
)

// stateDir holds the lock files and the pid file through which test
// processes running at the same time (go test runs packages in parallel)
// share one udevd started by this package.
const stateDir = "/run/whyslow-scenario"

// Paths under stateDir.
var (
	udevdMutex = filepath.Join(stateDir, "udevd.mutex") // held exclusively while deciding to start or stop
	udevdUsers = filepath.Join(stateDir, "udevd.users") // held shared by every test using udevd
	udevdPid   = filepath.Join(stateDir, "udevd.pid")   // pid of the udevd this package started
	udevdLog   = filepath.Join(stateDir, "udevd.log")   // its stdout and stderr
)

// Udevd makes sure a real systemd-udevd is running and answering
// `udevadm control --ping`, and returns its pid. If one already runs (the
// system's, or one another test started) it is used; otherwise
// `systemd-udevd --daemon` is started. On cleanup a udevd started here is
// stopped once no test process uses it any more; one that was already
// running is never touched.
func Udevd(t testing.TB) int {
	t.Helper()
	RequireRoot(t)
	hold(t)
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		t.Fatalf("udevd: %v", err)
	}
	mutex, err := lock(udevdMutex, unix.LOCK_EX, time.Minute)
	if err != nil {
		t.Fatalf("udevd: %v", err)
	}
	defer mutex.Close()

	// Join the users before anything can fail, so the cleanup always runs
	// the last-user check below.
	users, err := lock(udevdUsers, unix.LOCK_SH, 10*time.Second)
	if err != nil {
		t.Fatalf("udevd: %v", err)
	}
	t.Cleanup(func() {
		if err := releaseUdevd(users); err != nil {
			t.Errorf("udevd cleanup: %v", err)
		}
	})

	pid := udevd.Find()
	if ours := readPidFile(); ours != 0 && ours != pid {
		os.Remove(udevdPid) // stale: that udevd is gone
	}
	if pid == 0 {
		if pid, err = startUdevd(); err != nil {
			t.Fatalf("udevd: %v", err)
		}
		t.Logf("scenario: started systemd-udevd (pid %d)", pid)
	}
	if err := pingUdevd(15 * time.Second); err != nil {
		t.Fatalf("udevd (pid %d): %v", pid, err)
	}
	return pid
}

// releaseUdevd drops this test's use of udevd (users is its shared lock)
// and stops the udevd this package started if nobody else uses it.
func releaseUdevd(users *os.File) error {
	mutex, err := lock(udevdMutex, unix.LOCK_EX, time.Minute)
	if err != nil {
		users.Close()
		return err
	}
	defer mutex.Close()
	users.Close()
	last, err := lock(udevdUsers, unix.LOCK_EX, 0)
	if err != nil {
		return nil // others still use it; the last one stops it
	}
	defer last.Close()
	pid := readPidFile()
	if pid == 0 {
		return nil // not ours
	}
	if udevd.Find() != pid {
		os.Remove(udevdPid)
		return nil
	}
	if err := stopProcess(pid, 10*time.Second); err != nil {
		return fmt.Errorf("stopping systemd-udevd (pid %d): %w", pid, err)
	}
	return os.Remove(udevdPid)
}

// startUdevd starts `systemd-udevd --daemon`, records its pid in the pid
// file and returns it once it answers a ping.
func startUdevd() (int, error) {
	bin, err := lookPath("udev", "/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd")
	if err != nil {
		return 0, err
	}
	logf, err := os.OpenFile(udevdLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	// The daemon keeps the inherited stdout/stderr, so give it a file, never
	// a pipe that the wait would block on.
	if err := runTo(logf, 10*time.Second, bin, "--daemon"); err != nil {
		return 0, err
	}
	var pid int
	if !waitFor(10*time.Second, func() bool { pid = udevd.Find(); return pid != 0 }) {
		return 0, fmt.Errorf("%s --daemon exited but no systemd-udevd process appeared (see %s)", bin, udevdLog)
	}
	if err := os.WriteFile(udevdPid, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		stopProcess(pid, 10*time.Second)
		return 0, err
	}
	return pid, nil
}

// pingUdevd waits until `udevadm control --ping` succeeds.
func pingUdevd(timeout time.Duration) error {
	var err error
	if waitFor(timeout, func() bool {
		_, err = command.Run(5*time.Second, "udevadm", "control", "--ping")
		return err == nil
	}) {
		return nil
	}
	return fmt.Errorf("udevd does not answer: %w", err)
}

// readPidFile returns the pid of the udevd this package started, or 0.
func readPidFile() int {
	b, err := os.ReadFile(udevdPid)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// stopProcess sends SIGTERM to pid, then SIGKILL if it has not exited
// within timeout.
func stopProcess(pid int, timeout time.Duration) error {
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && err != syscall.ESRCH {
		return err
	}
	if waitFor(timeout, func() bool { return !alive(pid) }) {
		return nil
	}
	syscall.Kill(pid, syscall.SIGKILL)
	if waitFor(5*time.Second, func() bool { return !alive(pid) }) {
		return nil
	}
	return fmt.Errorf("pid %d still alive after SIGKILL", pid)
}

// lock opens path and takes a flock of kind (unix.LOCK_SH or LOCK_EX),
// retrying until timeout; a zero timeout tries once. Closing the file
// releases the lock.
func lock(path string, kind int, timeout time.Duration) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	for {
		err = unix.Flock(int(f.Fd()), kind|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if err != unix.EWOULDBLOCK || !time.Now().Before(deadline) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runTo runs name with args, output to f, killing it after timeout.
func runTo(f *os.File, timeout time.Duration, name string, args ...string) error {
	// A closed fd 0 would be reused for a socket, and a daemon that points
	// its stdio at /dev/null would then lose that socket.
	null, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer null.Close()
	p, err := os.StartProcess(name, append([]string{name}, args...), &os.ProcAttr{
		Files: []*os.File{null, f, f},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		return err
	}
	timer := time.AfterFunc(timeout, func() { p.Kill() })
	defer timer.Stop()
	st, err := p.Wait()
	if err != nil {
		return err
	}
	if !st.Success() {
		return fmt.Errorf("%s %s: %v", name, strings.Join(args, " "), st)
	}
	return nil
}
