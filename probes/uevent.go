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
	fd, err := ueventSocket(cfg.ProcFS)
	if err != nil {
		st.Status, st.Reason = event.StatusUnavailable, err.Error()
		return nil, st
	}
	// A non-blocking fd in os.File goes through the runtime poller, so Close
	// wakes a reader blocked in recvfrom.
	f := os.NewFile(uintptr(fd), "uevent-netlink")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		st.Status, st.Reason = event.StatusUnavailable, fmt.Sprintf("netlink socket: %v", err)
		return nil, st
	}
	r := &ueventRunning{f: f, sink: sink}
	r.wg.Add(1)
	go r.read(rc)
	st.Status, st.Mechanism = event.StatusOK, event.MechNetlink
	return r, st
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
	f    *os.File
	sink Sink
	wg   sync.WaitGroup
	once sync.Once

	// Written by the reader goroutine, read after it ends.
	overruns   uint64 // ENOBUFS: the kernel dropped messages
	lost       uint64 // messages lost, estimated from SEQNUM gaps after overruns
	malformed  uint64
	unclocked  uint64 // messages dropped because CLOCK_MONOTONIC could not be read
	lastSeqnum uint64
	strs       map[string]string // see intern
}

func (r *ueventRunning) read(rc interface {
	Read(func(fd uintptr) bool) error
}) {
	defer r.wg.Done()
	buf := make([]byte, ueventMaxMsg)
	overrun := false
	for {
		var n int
		var from unix.Sockaddr
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		})
		if err != nil {
			return // closed by Stop
		}
		now, clockErr := event.Now()
		switch {
		case errors.Is(rerr, unix.ENOBUFS):
			r.overruns++
			overrun = true
			continue
		case errors.Is(rerr, unix.EINTR):
			continue
		case rerr != nil:
			return
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
			r.malformed++
			continue
		}
		if clockErr != nil {
			r.unclocked++ // a time from another clock would mislead: drop it, counted
			continue
		}
		ev.Time = now
		// The same few actions, paths and subsystems come again and again:
		// a storm of uevents holds one copy of each.
		ev.Action, ev.DevPath, ev.Subsystem = r.intern(ev.Action), r.intern(ev.DevPath), r.intern(ev.Subsystem)
		ev.DevName, ev.DevType = r.intern(ev.DevName), r.intern(ev.DevType)
		if overrun {
			gap := uint64(1)
			if r.lastSeqnum != 0 && ev.Seqnum > r.lastSeqnum+1 {
				gap = ev.Seqnum - r.lastSeqnum - 1
			}
			r.lost += gap
			overrun = false
		}
		if ev.Seqnum > r.lastSeqnum {
			r.lastSeqnum = ev.Seqnum
		}
		r.sink.Event(ev)
	}
}

// maxInterned bounds the strings ueventRunning.intern keeps.
const maxInterned = 4096

// intern returns the kept copy of s (reader goroutine only).
func (r *ueventRunning) intern(s string) string {
	if v, ok := r.strs[s]; ok {
		return v
	}
	if r.strs == nil {
		r.strs = make(map[string]string)
	}
	if len(r.strs) < maxInterned {
		r.strs[s] = s
	}
	return s
}

// Stop closes the socket, which wakes the reader, and reports losses.
func (r *ueventRunning) Stop() error {
	var err error
	r.once.Do(func() {
		err = r.f.Close()
		r.wg.Wait()
		lost := r.lost
		if lost < r.overruns {
			lost = r.overruns // an overrun at the very end has no later SEQNUM
		}
		if lost > 0 {
			r.sink.Loss(event.Loss{Probe: event.ProbeUevent, What: "netlink overrun", Count: lost})
		}
		if r.malformed > 0 {
			r.sink.Loss(event.Loss{Probe: event.ProbeUevent, What: "malformed message", Count: r.malformed})
		}
		if r.unclocked > 0 {
			r.sink.Loss(event.Loss{Probe: event.ProbeUevent, What: "CLOCK_MONOTONIC unreadable", Count: r.unclocked})
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
