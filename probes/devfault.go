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

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

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
		Describe:   "failing devices: requests completed with an error, requests that timed out (given back after their deadline) and requeues, per device; SCSI command timeouts and error handling",
		Attach:     "tp_btf `block_rq_complete` (its error), `block_rq_requeue` (the request's deadline); tracepoints `scsi:scsi_dispatch_cmd_timeout`, `scsi_eh_wakeup` where scsi_mod is loaded",
		Records:    "each failed request (device, operation, sector, error) and each timeout (how long the request had been in flight); requeues counted per device; each SCSI command that timed out (its opcode) and each wakeup of a SCSI host's error handler (aborts and resets), on the host's disks",
	}
}

func (p devfaultProbe) Start(cfg Config, sink Sink) (Running, event.ProbeStatus) {
	r, err := startDevfault(cfg, sink)
	if err != nil {
		return nil, unavailableStatus(p.Decl().Name, err)
	}
	st := p.Decl().started()
	st.Reason = r.note
	return r, st
}

type devfaultRunning struct {
	sink  Sink
	sysfs string
	objs  devfaultObjects
	links []link.Link
	// complete is df_rq_complete on block_rq_complete's chain (rqchain.go).
	complete *rqMember
	ring

	mu       sync.Mutex
	timeouts map[uint32]time.Duration // queue/io_timeout by dev, as first read
	note     string                   // what it does not see

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
	r := &devfaultRunning{sink: sink, sysfs: cmpOr(cfg.SysFS, "/sys"), timeouts: map[uint32]time.Duration{}}
	if err := spec.LoadAndAssign(&r.objs, collectionOptions(kernel)); err != nil {
		return nil, fmt.Errorf("loading objects: %w", err)
	}
	defer func() {
		if err != nil {
			closeAll(r.links)
			chainRqComplete.leave(r.complete)
			if r.rd != nil {
				r.rd.Close()
			}
			r.objs.Close()
		}
	}()
	if err = r.openRing(r.objs.Events); err != nil {
		return nil, fmt.Errorf("opening ring buffer: %w", err)
	}
	// Last on block_rq_complete's chain, behind the submit and service
	// probes' programs (rqchain.go).
	if r.complete, err = chainRqComplete.join(rankDevfault, r.objs.DfRqComplete, nil); err != nil {
		return nil, err
	}
	if r.links, err = attachTPBTF(r.objs.DfRqRequeue); err != nil {
		return nil, err
	}
	// SCSI's error handling, where scsi_mod is loaded (not on a host
	// without SCSI; a module loaded later is not seen)
	var missing []string
	for _, tp := range []struct {
		name string
		prog *ebpf.Program
	}{{"scsi_dispatch_cmd_timeout", r.objs.DfScsiTimeout}, {"scsi_eh_wakeup", r.objs.DfScsiEh}} {
		l, err := link.Tracepoint("scsi", tp.name, tp.prog, nil)
		if err != nil {
			missing = append(missing, "scsi:"+tp.name+" ("+errReason(err)+")")
			continue
		}
		r.links = append(r.links, l)
	}
	if len(missing) > 0 {
		r.note = "not seen: SCSI error handling: " + strings.Join(missing, "; ")
	}
	r.readAll(r.sink, event.ProbeDevFault, r.handle)
	return r, nil
}

// handle delivers one ring record (reader goroutine).
func (r *devfaultRunning) handle(raw []byte) {
	if len(raw) >= 4 {
		switch devfaultDfKind(binary.NativeEndian.Uint32(raw)) {
		case devfaultDfKindDF_SCSI_TIMEOUT, devfaultDfKindDF_SCSI_EH:
			r.handleSCSI(raw)
			return
		}
	}
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

// handleSCSI delivers a SCSI command's timeout, on its disk, or a SCSI
// host's error handler woken, on each disk of the host.
func (r *devfaultRunning) handleSCSI(raw []byte) {
	var e devfaultDfScsiEvent
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
		r.decode++
		return
	}
	at := event.Mono(e.TimeNs)
	if devfaultDfKind(e.Kind) == devfaultDfKindDF_SCSI_TIMEOUT {
		addr := fmt.Sprintf("%d:%d:%d:%d", e.HostNo, e.Channel, e.Id, e.Lun)
		devs := r.scsiDisks(filepath.Join(r.sysfs, "class", "scsi_device", addr, "device", "block", "*"))
		dev := event.Device{Name: addr}
		if len(devs) > 0 {
			dev = devs[0]
		}
		r.sink.Event(event.DeviceFault{Time: at, Dev: dev, Kind: event.FaultSCSITimeout, Op: scsiOpcode(e.Opcode)})
		return
	}
	devs := r.scsiDisks(filepath.Join(r.sysfs, "class", "scsi_host", fmt.Sprintf("host%d", e.HostNo), "device", "target*", "*", "block", "*"))
	if len(devs) == 0 {
		devs = []event.Device{{Name: fmt.Sprintf("host%d", e.HostNo)}}
	}
	for _, d := range devs {
		r.sink.Event(event.DeviceFault{Time: at, Dev: d, Kind: event.FaultErrorHandler})
	}
}

// scsiDisks are the disks whose sysfs directories match a glob, by name
// and number.
func (r *devfaultRunning) scsiDisks(glob string) []event.Device {
	paths, _ := filepath.Glob(glob)
	var out []event.Device
	for _, p := range paths {
		d := event.Device{Name: filepath.Base(p)}
		if b, err := os.ReadFile(filepath.Join(p, "dev")); err == nil {
			fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &d.Major, &d.Minor)
		}
		out = append(out, d)
	}
	return out
}

// scsiOpcodes names the SCSI commands a block device issues.
var scsiOpcodes = map[uint32]string{
	0x00: "TEST_UNIT_READY", 0x03: "REQUEST_SENSE", 0x08: "READ_6", 0x0a: "WRITE_6", 0x12: "INQUIRY",
	0x1a: "MODE_SENSE", 0x25: "READ_CAPACITY", 0x28: "READ_10", 0x2a: "WRITE_10", 0x2f: "VERIFY",
	0x35: "SYNCHRONIZE_CACHE", 0x41: "WRITE_SAME", 0x42: "UNMAP", 0x5a: "MODE_SENSE_10", 0x88: "READ_16",
	0x8a: "WRITE_16", 0x91: "SYNCHRONIZE_CACHE_16", 0x93: "WRITE_SAME_16", 0x9e: "SERVICE_ACTION_IN_16",
	0xa0: "REPORT_LUNS", 0xa8: "READ_12", 0xaa: "WRITE_12",
}

// scsiOpcode names a SCSI command by its opcode.
func scsiOpcode(op uint32) string {
	if n, ok := scsiOpcodes[op]; ok {
		return n
	}
	return fmt.Sprintf("opcode 0x%02x", op)
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
	skips := map[*ebpf.Program]uint64{r.complete.prog: chainRqComplete.skips(r.complete)}
	deliverLossesWith(sink, event.ProbeDevFault, r.objs.Losses, &r.objs, skips)
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading requeue counts: %w", err)
	}
	return nil
}

// Stop detaches, delivers the records still buffered, the requeue counts
// and the losses.
func (r *devfaultRunning) Stop() error {
	r.stopOnce.Do(func() {
		leaveErr := chainRqComplete.leave(r.complete)
		closeAll(r.links)
		r.drain()
		r.stopErr = r.deliverSums(r.sink)
		if leaveErr != nil && r.stopErr == nil {
			r.stopErr = leaveErr
		}
		r.undecodable(r.sink, event.ProbeDevFault)
		if err := r.objs.Close(); err != nil && r.stopErr == nil {
			r.stopErr = fmt.Errorf("closing objects: %w", err)
		}
	})
	return r.stopErr
}
