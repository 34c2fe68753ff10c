package probes

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
)

// ueventProbe listens to the kernel's uevents on a NETLINK_KOBJECT_UEVENT
// socket. No BPF: the kernel has no tracepoint for kobject_uevent.
type ueventProbe struct{}

func init() { register(ueventProbe{}) }

// Uevent socket parameters.
const (
	ueventGroupKernel = 1       // group 2 is udevd's, sent after rule processing
	ueventRcvBuf      = 8 << 20 // uevent storms (coldplug) are bursty
	ueventMaxMsg      = 64 << 10
)

// Decl implements Probe.
func (ueventProbe) Decl() Decl {
	return Decl{
		Name:       event.ProbeUevent,
		Mechanisms: []Rung{{Mech: event.MechNetlink}},
		Describe:   "kernel uevents (add/change/remove of devices) from the netlink kobject-uevent socket",
		Attach:     "netlink (`NETLINK_KOBJECT_UEVENT`, kernel group)",
		Records:    "uevents with action, device and sequence number",
	}
}

func (p ueventProbe) Start(cfg Config, sink Sink) (Running, event.ProbeStatus) {
	st := event.ProbeStatus{Name: p.Decl().Name}
	r := &ueventRunning{procfs: cfg.ProcFS, sink: sink, recv: unix.Recvfrom}
	f, err := r.open()
	if err != nil {
		st.Status, st.Reason = event.StatusUnavailable, err.Error()
		return nil, st
	}
	r.f = f
	r.wg.Add(1)
	go r.read()
	st.Status, st.Mechanism = event.StatusOK, event.MechNetlink
	return r, st
}

// open opens the uevent socket as an os.File: a non-blocking fd in an
// os.File goes through the runtime poller, so Close wakes a reader blocked
// in recvfrom.
func (r *ueventRunning) open() (*os.File, error) {
	fd, err := ueventSocket(r.procfs)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "uevent-netlink"), nil
}

// ueventSocket opens a kernel-group uevent socket in the initial network
// namespace: uevents are broadcast per namespace, and devices live in the
// initial one.
func ueventSocket(procfs string) (int, error) {
	if procfs == "" {
		procfs = "/proc"
	}
	same, err := sameNetns(procfs)
	if err != nil || same {
		// Unknown (no access to pid 1): use ours.
		return ueventSocketHere()
	}
	initNS, err := unix.Open(filepath.Join(procfs, "1/ns/net"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("opening the initial network namespace: %w", err)
	}
	defer unix.Close(initNS)
	runtime.LockOSThread()
	ownNS, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return -1, fmt.Errorf("opening own network namespace: %w", err)
	}
	defer unix.Close(ownNS)
	if err := unix.Setns(initNS, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return -1, fmt.Errorf("entering the initial network namespace: %w", err)
	}
	fd, sockErr := ueventSocketHere()
	if err := unix.Setns(ownNS, unix.CLONE_NEWNET); err != nil {
		// The thread stays in the wrong namespace: keep it locked so that the
		// runtime discards it when this goroutine ends.
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("returning to own network namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return fd, sockErr
}

func sameNetns(procfs string) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Stat(filepath.Join(procfs, "1/ns/net"), &a); err != nil {
		return false, err
	}
	if err := unix.Stat(filepath.Join(procfs, "self/ns/net"), &b); err != nil {
		return false, err
	}
	return a.Ino == b.Ino && a.Dev == b.Dev, nil
}

func ueventSocketHere() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return -1, fmt.Errorf("netlink uevent socket: %w", err)
	}
	// SO_RCVBUFFORCE exceeds net.core.rmem_max (needs CAP_NET_ADMIN);
	// otherwise take what SO_RCVBUF allows.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, ueventRcvBuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, ueventRcvBuf)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: ueventGroupKernel}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("binding netlink uevent socket: %w", err)
	}
	return fd, nil
}

type ueventRunning struct {
	procfs string
	sink   Sink
	wg     sync.WaitGroup
	once   sync.Once
	// recv receives one message (unix.Recvfrom); tests replace it to
	// provoke receive errors.
	recv func(fd int, p []byte, flags int) (int, unix.Sockaddr, error)

	mu      sync.Mutex
	f       *os.File // the socket; replaced when it is reopened
	stopped bool

	// Counted by the reader goroutine; read by Stop and Snapshot.
	overruns  atomic.Uint64 // ENOBUFS: the kernel dropped messages
	lost      atomic.Uint64 // messages lost, estimated from SEQNUM gaps after overruns
	malformed atomic.Uint64
	unclocked atomic.Uint64 // messages dropped because CLOCK_MONOTONIC could not be read
	// Receive errors other than ENOBUFS: the socket is reopened, and the
	// messages missed meanwhile estimated from the SEQNUM gap.
	recvErrors atomic.Uint64
	recvLost   atomic.Uint64
	recvErr    atomic.Value // string: the last receive error
	// reopenErr is why the socket could not be reopened after an error:
	// no uevent was received after it.
	reopenErr atomic.Value // string

	lastSeqnum uint64 // reader goroutine only
}

// file returns the socket to read, nil once stopped.
func (r *ueventRunning) file() *os.File {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return nil
	}
	return r.f
}

// reopen replaces the socket after a receive error; false when the run
// stopped or a new socket cannot be had (said in reopenErr).
func (r *ueventRunning) reopen() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return false
	}
	f, err := r.open()
	if err != nil {
		r.reopenErr.Store(err.Error())
		return false
	}
	r.f.Close()
	r.f = f
	return true
}

// read receives uevents until Stop, reopening the socket after a receive
// error it cannot go on from.
func (r *ueventRunning) read() {
	defer r.wg.Done()
	buf := make([]byte, ueventMaxMsg)
	// gap is what a SEQNUM gap before the next uevent is counted as.
	var gap *atomic.Uint64
	for {
		f := r.file()
		if f == nil {
			return
		}
		rc, err := f.SyscallConn()
		if err != nil {
			return // closed by Stop
		}
		for reading := true; reading; {
			var n int
			var from unix.Sockaddr
			var rerr error
			err := rc.Read(func(fd uintptr) bool {
				n, from, rerr = r.recv(int(fd), buf, 0)
				return rerr != unix.EAGAIN
			})
			if err != nil {
				return // closed by Stop
			}
			now, clockErr := event.Now()
			switch {
			case errors.Is(rerr, unix.ENOBUFS):
				r.overruns.Add(1)
				gap = &r.lost
				continue
			case errors.Is(rerr, unix.EINTR):
				continue
			case rerr != nil:
				// Counted and said; a new socket, and the uevents missed
				// meanwhile counted from the next SEQNUM.
				r.recvErrors.Add(1)
				r.recvErr.Store(errName(rerr))
				if gap == nil {
					gap = &r.recvLost
				}
				if !r.reopen() {
					return
				}
				reading = false
				continue
			}
			// Only the kernel (port id 0) sends real uevents; the kernel group
			// can also be written by privileged user space.
			if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
				continue
			}
			ev, err := parseUevent(buf[:n])
			if errors.Is(err, errLibudev) {
				continue
			}
			if err != nil {
				r.malformed.Add(1)
				continue
			}
			if clockErr != nil {
				r.unclocked.Add(1) // a time from another clock would mislead: drop it, counted
				continue
			}
			// The same few actions, paths and subsystems come again and again:
			// the timeline keeps one copy of each (timeline.Admit).
			ev.Time = now
			if gap != nil {
				missed := uint64(1)
				if r.lastSeqnum != 0 && ev.Seqnum > r.lastSeqnum+1 {
					missed = ev.Seqnum - r.lastSeqnum - 1
				}
				gap.Add(missed)
				gap = nil
			}
			if ev.Seqnum > r.lastSeqnum {
				r.lastSeqnum = ev.Seqnum
			}
			r.sink.Event(ev)
		}
	}
}

// errName is an errno's name (EBADF), or the error.
func errName(err error) string {
	var en unix.Errno
	if errors.As(err, &en) {
		if name := unix.ErrnoName(en); name != "" {
			return name
		}
	}
	return err.Error()
}

// losses are the uevents lost so far, by cause.
func (r *ueventRunning) losses() []event.Loss {
	var out []event.Loss
	add := func(what string, n uint64) {
		if n > 0 {
			out = append(out, event.Loss{Probe: event.ProbeUevent, What: what, Count: n})
		}
	}
	// An overrun or an error at the very end has no later SEQNUM: one each.
	add("netlink overrun", max(r.lost.Load(), r.overruns.Load()))
	if n := r.recvErrors.Load(); n > 0 {
		what, _ := r.recvErr.Load().(string)
		add("netlink receive error ("+what+"), socket reopened", max(r.recvLost.Load(), n))
	}
	if what, ok := r.reopenErr.Load().(string); ok {
		add("netlink socket lost (reopening it failed: "+what+"): no uevent seen after it", 1)
	}
	add("malformed message", r.malformed.Load())
	add("CLOCK_MONOTONIC unreadable", r.unclocked.Load())
	return out
}

// Checkpoint implements Checkpointer: the loss counts so far.
func (r *ueventRunning) Checkpoint(sink Sink) error {
	for _, l := range r.losses() {
		sink.Loss(l)
	}
	return nil
}

// Stop closes the socket, which wakes the reader, and reports losses.
func (r *ueventRunning) Stop() error {
	var err error
	r.once.Do(func() {
		r.mu.Lock()
		r.stopped = true
		err = r.f.Close()
		r.mu.Unlock()
		r.wg.Wait()
		for _, l := range r.losses() {
			r.sink.Loss(l)
		}
	})
	return err
}

// errLibudev marks udevd's own messages ("libudev" header), which are not
// kernel uevents.
var errLibudev = errors.New("libudev message")

// parseUevent parses a kernel uevent: "ACTION@DEVPATH\0KEY=VALUE\0...".
func parseUevent(msg []byte) (event.Uevent, error) {
	var ev event.Uevent
	if bytes.HasPrefix(msg, []byte("libudev\x00")) {
		return ev, errLibudev
	}
	head, rest, _ := bytes.Cut(msg, []byte{0})
	action, devpath, ok := bytes.Cut(head, []byte("@"))
	if !ok || len(action) == 0 || len(devpath) == 0 {
		return ev, fmt.Errorf("uevent header %q: want action@devpath", truncate(head, 64))
	}
	ev.Action, ev.DevPath = string(action), string(devpath)
	var seq string
	for len(rest) > 0 {
		var kv []byte
		kv, rest, _ = bytes.Cut(rest, []byte{0})
		if len(kv) == 0 {
			continue
		}
		k, v, ok := bytes.Cut(kv, []byte("="))
		if !ok {
			return ev, fmt.Errorf("uevent field %q: want KEY=VALUE", truncate(kv, 64))
		}
		switch string(k) {
		case "ACTION":
			ev.Action = string(v)
		case "DEVPATH":
			ev.DevPath = string(v)
		case "SUBSYSTEM":
			ev.Subsystem = string(v)
		case "DEVNAME":
			ev.DevName = string(v)
		case "DEVTYPE":
			ev.DevType = string(v)
		case "SEQNUM":
			seq = string(v)
		}
	}
	if ev.Subsystem == "" {
		return ev, errors.New("uevent without SUBSYSTEM")
	}
	if seq == "" {
		return ev, errors.New("uevent without SEQNUM")
	}
	n, err := strconv.ParseUint(seq, 10, 64)
	if err != nil {
		return ev, fmt.Errorf("uevent SEQNUM %q: %w", seq, err)
	}
	ev.Seqnum = n
	return ev, nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
