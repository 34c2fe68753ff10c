package cmd

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/scenario"
)

// bpfFds counts this process's file descriptors that hold BPF objects or
// perf events (tracepoint links), and its netlink sockets.
func bpfFds(t *testing.T) (bpf, netlink int) {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(target, "anon_inode:bpf"), target == "anon_inode:[perf_event]":
			bpf++
		case strings.HasPrefix(target, "socket:"):
			netlink++ // any socket: the test process opens none of its own
		}
	}
	return bpf, netlink
}

// Run in this process, every trace stops on SIGINT with exit code 0 and
// closes every BPF program, link, map and socket it opened: nothing stays
// attached.
func TestTraceSIGINTDetaches(t *testing.T) {
	scenario.RequireRoot(t)
	for _, kind := range []string{"submit", "exec", "uevent", "freeze"} {
		t.Run(kind, func(t *testing.T) {
			bpf0, sock0 := bpfFds(t)
			var errb scenario.Buffer
			ios := &IO{In: strings.NewReader(""), Out: io.Discard, ErrOut: &errb}
			code := make(chan int, 1)
			go func() { code <- Execute(ios, []string{"trace", kind, "--duration", "2m"}) }()
			deadline := time.Now().Add(30 * time.Second)
			for !strings.Contains(errb.String(), "whyslow: tracing ") {
				select {
				case c := <-code:
					t.Fatalf("trace %s ended with %d before it started: %s", kind, c, errb.String())
				default:
				}
				if time.Now().After(deadline) {
					t.Fatalf("trace %s did not start: %q", kind, errb.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			bpf1, sock1 := bpfFds(t)
			t.Logf("%s running: %d BPF descriptors (%d before), %d sockets (%d before)", kind, bpf1, bpf0, sock1, sock0)
			if kind == "uevent" && sock1 <= sock0 || kind != "uevent" && bpf1 <= bpf0 {
				t.Errorf("the running trace holds no new descriptors: is it tracing?")
			}
			// The trace listens for SIGINT from before it starts its probes:
			// this signal goes to it, not to the test process.
			if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			select {
			case c := <-code:
				if c != ExitOK {
					t.Errorf("exit %d after SIGINT, want 0; stderr %q", c, errb.String())
				}
			case <-time.After(15 * time.Second):
				t.Fatal("trace did not stop on SIGINT")
			}
			if bpf2, sock2 := bpfFds(t); bpf2 != bpf0 || sock2 != sock0 {
				t.Errorf("after SIGINT %d BPF descriptors and %d sockets are open, want %d and %d as before", bpf2, sock2, bpf0, sock0)
			}
			if lines := strings.Split(strings.TrimSpace(errb.String()), "\n"); len(lines) != 1 {
				t.Errorf("stderr: want the start line only, got %q", errb.String())
			}
		})
	}
}
