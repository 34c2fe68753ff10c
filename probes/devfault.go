package probes

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/whyslow/whyslow/internal/event"
)

// devfaultProbe sees failing devices (see bpf/devfault.bpf.c): requests
// that completed with an error, requests given back after their deadline
// (timeouts), and the requeues of each device.
type devfaultProbe struct{}

func init() { register(devfaultProbe{}) }

// Decl implements Probe.
func (devfaultProbe) Decl() Decl {
	return Decl{
		Name:       event.ProbeDevFault,
		Mechanisms: []Rung{{Mech: event.MechTPBTF}},
		Describe:   "failing devices: requests completed with an error, requests that timed out (given back after their deadline) and requeues, per device",
		Attach:     "tp_btf `block_rq_complete` (its error), `block_rq_requeue` (the request's deadline)",
		Records:    "each failed request (device, operation, sector, error) and each timeout (how long the request had been in flight); requeues counted per device",
	}
}

func (p devfaultProbe) Start(cfg Config, sink Sink) (Running, event.ProbeStatus) {
	r, err := startDevfault(cfg, sink)
	if err != nil {
		return nil, unavailableStatus(p.Decl().Name, err)
	}
	return r, p.Decl().started()
}

type devfaultRunning struct {
	sink   Sink
	sysfs  string
	objs   devfaultObjects
	links  []link.Link
	rd     *ringbuf.Reader
	done   chan struct{}
	decode uint64 // undecodable records (reader goroutine)

	mu       sync.Mutex
	timeouts map[uint32]time.Duration // queue/io_timeout by dev, as first read

	stopOnce sync.Once
	stopErr  error
}

func startDevfault(cfg Config, sink Sink) (_ *devfaultRunning, err error) {
	kernel, err := kernelSpec(cfg)
	if err != nil {
		return nil, err
	}
	consts := map[string]any{}
	for v, tp := range map[string]string{
		"arg_rq_complete": "block_rq_complete",
		"arg_rq_requeue":  "block_rq_requeue",
	} {
		i, err := tpArgIndex(kernel, tp, "request")
		if err != nil {
			return nil, err
		}
		consts[v] = i
	}
	spec, err := loadSpec(loadDevfault, consts)
	if err != nil {
		return nil, err
	}
	r := &devfaultRunning{sink: sink, sysfs: cmpOr(cfg.SysFS, "/sys"), done: make(chan struct{}),
		timeouts: map[uint32]time.Duration{}}
	if err := spec.LoadAndAssign(&r.objs, collectionOptions(kernel)); err != nil {
		return nil, fmt.Errorf("loading objects: %w", err)
	}
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
	if r.links, err = attachTPBTF(r.objs.DfRqComplete, r.objs.DfRqRequeue); err != nil {
		return nil, err
	}
	go func() {
		defer close(r.done)
		readRing(r.rd, r.sink, event.ProbeDevFault, r.handle)
	}()
	return r, nil
}

// handle delivers one ring record (reader goroutine).
func (r *devfaultRunning) handle(raw []byte) {
	var e devfaultDfEvent
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
		r.decode++
		return
	}
	f := event.DeviceFault{
		Time:     event.Mono(e.TimeNs),
		Dev:      r.device(e.Dev, cString(e.Disk[:])),
		Op:       requestOp(e.CmdFlags),
		Sector:   e.Sector,
		Bytes:    e.Bytes,
		TimedOut: e.TimedOut != 0,
		Timeout:  r.timeout(e.Dev),
	}
	if e.StartedNs != 0 && e.TimeNs > e.StartedNs {
		f.InFlight = time.Duration(e.TimeNs - e.StartedNs)
	}
	switch devfaultDfKind(e.Kind) {
	case devfaultDfKindDF_ERROR:
		f.Kind = event.FaultError
		f.Status, f.Errno = blockError(e.Error)
	case devfaultDfKindDF_TIMEOUT:
		f.Kind = event.FaultTimeout
		f.TimedOut = false // a timeout by kind
	default:
		r.decode++
		return
	}
	r.sink.Event(f)
}

// device names the disk of a kernel dev_t: by the name the program read
// from its gendisk (a failing disk may be gone from sysfs at the end).
func (r *devfaultRunning) device(dev uint32, name string) event.Device {
	major, minor := kernelDev(dev)
	if name == "" {
		name = blockDevName(r.sysfs, major, minor)
	}
	return event.Device{Major: major, Minor: minor, Name: name}
}

// timeout reads a device's request timeout (queue/io_timeout, ms) once;
// 0 when it cannot be read.
func (r *devfaultRunning) timeout(dev uint32) time.Duration {
	r.mu.Lock()
	t, ok := r.timeouts[dev]
	r.mu.Unlock()
	if ok {
		return t
	}
	major, minor := kernelDev(dev)
	b, err := os.ReadFile(filepath.Join(r.sysfs, "dev", "block", fmt.Sprintf("%d:%d", major, minor), "queue", "io_timeout"))
	if err == nil {
		if ms, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32); err == nil {
			t = time.Duration(ms) * time.Millisecond
		}
	}
	r.mu.Lock()
	r.timeouts[dev] = t
	r.mu.Unlock()
	return t
}

// requestOp names a request's operation (cmd_flags & REQ_OP_MASK).
func requestOp(cmdFlags uint32) string {
	switch op := cmdFlags & 0xff; op {
	case 0:
		return "read"
	case 1:
		return "write"
	case 2:
		return "flush"
	case 3:
		return "discard"
	case 5:
		return "secure_erase"
	case 9:
		return "write_zeroes"
	default:
		return "op " + strconv.Itoa(int(op))
	}
}

// blockStatuses names the block layer's errors, by blk_status_t (the
// tracepoint's argument since 5.17) with the errno each maps to
// (blk_status_to_errno; the argument up to 5.16).
var blockStatuses = []struct {
	status uint8
	errno  int32
	name   string
}{
	{1, -95, "not supported"},
	{2, -110, "timeout"},
	{3, -28, "no space"},
	{4, -67, "transport error"},
	{5, -121, "target error"},
	{6, -52, "reservation conflict"},
	{7, -61, "medium error"},
	{8, -84, "protection error"},
	{9, -12, "out of resources"},
	{10, -5, "I/O error"},
	{12, -11, "try again"},
	{13, -16, "device busy"},
	{16, -19, "device offline"},
}

// blockError names the error argument of block_rq_complete: a -errno, or
// a blk_status_t (> 0), as the status and its -errno.
func blockError(v int32) (string, int32) {
	for _, s := range blockStatuses {
		if v < 0 && v == s.errno || v > 0 && v == int32(s.status) {
			return s.name, s.errno
		}
	}
	if v < 0 {
		return "errno " + strconv.Itoa(int(-v)), v
	}
	return "status " + strconv.Itoa(int(v)), -5 // BLK_STS_* unknown here: EIO, as the kernel maps it
}

// Checkpoint implements Checkpointer: the requeue counts so far and the
// losses.
func (r *devfaultRunning) Checkpoint(sink Sink) error {
	return r.deliverSums(sink)
}

func (r *devfaultRunning) deliverSums(sink Sink) error {
	now, err := event.Now()
	if err != nil {
		return err
	}
	var (
		k uint32
		v devfaultDfRequeues
	)
	it := r.objs.Requeues.Iterate()
	for it.Next(&k, &v) {
		if v.Count == 0 {
			continue
		}
		sink.Event(event.Requeues{Time: now, Dev: r.device(k, cString(v.Disk[:])), Count: v.Count, TimedOut: v.TimedOut})
	}
	deliverLosses(sink, event.ProbeDevFault, r.objs.Losses)
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading requeue counts: %w", err)
	}
	return nil
}

// Stop detaches, delivers the records still buffered, the requeue counts
// and the losses.
func (r *devfaultRunning) Stop() error {
	r.stopOnce.Do(func() {
		closeAll(r.links)
		_ = r.rd.Flush()
		<-r.done
		r.rd.Close()
		r.stopErr = r.deliverSums(r.sink)
		if r.decode > 0 {
			r.sink.Loss(event.Loss{Probe: event.ProbeDevFault, What: "undecodable record", Count: r.decode})
		}
		if err := r.objs.Close(); err != nil && r.stopErr == nil {
			r.stopErr = fmt.Errorf("closing objects: %w", err)
		}
	})
	return r.stopErr
}
