package probes

// Helpers shared by the BPF probes: loading with constants, attaching tp_btf
// programs, draining ring buffers, loss counters, device numbers and status.

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
)

// Indexes of the per-CPU `losses` array every BPF program keeps: enum
// loss_kind in bpf/include/common.h (TestGoMirrorsC compares them).
const (
	lossRingbuf = iota
	lossMapFull
	lossStack
	lossKinds
)

// lossWhat names each loss kind in event.Loss.What.
var lossWhat = [lossKinds]string{
	lossRingbuf: "ring buffer full",
	lossMapFull: "tracking map full",
	lossStack:   "stack map full",
}

// minLatencyVar is the threshold of the programs that stream only long
// spans (min_latency_ns in bpf/include/spans.h).
const minLatencyVar = "min_latency_ns"

// spanConsts are the constants every program that includes spans.h is
// loaded with: the threshold, from cfg.MinLatency.
func spanConsts(cfg Config) map[string]any {
	return map[string]any{minLatencyVar: uint64(max(cfg.MinLatency, 0))}
}

// loadSpec loads a generated CollectionSpec and sets its `volatile const`
// variables. Every name in consts must exist in the object.
func loadSpec(load func() (*ebpf.CollectionSpec, error), consts map[string]any) (*ebpf.CollectionSpec, error) {
	spec, err := load()
	if err != nil {
		return nil, fmt.Errorf("loading spec: %w", err)
	}
	sizeDevHist(spec)
	for name, v := range consts {
		vs, ok := spec.Variables[name]
		if !ok {
			return nil, fmt.Errorf("setting %s: no such variable in the object", name)
		}
		if err := vs.Set(v); err != nil {
			return nil, fmt.Errorf("setting %s: %w", name, err)
		}
	}
	return spec, nil
}

// attachTPBTF attaches tp_btf programs (SEC("tp_btf/<tracepoint>")). On
// error it closes the links it already made.
func attachTPBTF(progs ...*ebpf.Program) ([]link.Link, error) {
	links := make([]link.Link, 0, len(progs))
	for _, p := range progs {
		if p == nil {
			closeAll(links)
			return nil, errors.New("attaching tp_btf: nil program")
		}
		l, err := link.AttachTracing(link.TracingOptions{Program: p, AttachType: ebpf.AttachTraceRawTp})
		if err != nil {
			closeAll(links)
			return nil, fmt.Errorf("attaching tp_btf %s: %w", progName(p), err)
		}
		links = append(links, l)
	}
	return links, nil
}

// rawTP is a raw_tp program (SEC("raw_tp/<tracepoint>")) and its
// tracepoint.
type rawTP struct {
	tp   string
	prog *ebpf.Program
}

// attachRawTP attaches raw_tp programs in order. On error it closes the
// links it already made.
func attachRawTP(progs ...rawTP) ([]link.Link, error) {
	links := make([]link.Link, 0, len(progs))
	for _, p := range progs {
		if p.prog == nil {
			closeAll(links)
			return nil, fmt.Errorf("attaching raw_tp %s: nil program", p.tp)
		}
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: p.tp, Program: p.prog})
		if err != nil {
			closeAll(links)
			return nil, fmt.Errorf("attaching raw_tp %s: %w", p.tp, err)
		}
		links = append(links, l)
	}
	return links, nil
}

func progName(p *ebpf.Program) string {
	if info, err := p.Info(); err == nil && info.Name != "" {
		return info.Name
	}
	return p.String()
}

// closeAll closes every non-nil element, ignoring errors.
func closeAll[T io.Closer](cs []T) {
	for _, c := range cs {
		v := reflect.ValueOf(c)
		if !v.IsValid() || (v.Kind() == reflect.Pointer && v.IsNil()) {
			continue
		}
		_ = c.Close()
	}
}

// closeAtOnce closes cs (nil ones skipped) each in a goroutine of its
// own, waits for them all, and returns their errors joined: for links
// independent of one another whose detach waits for
// a grace period each. A tracepoint attached through a perf event waits
// in its release for every probe call under way on the tracepoint to end
// (perf_trace_event_unreg: tracepoint_synchronize_unregister, some 70 ms
// on 6.18 here); one after another, the writeback probe's 15 took 1.2 s
// of whyslow's stop, while their waits overlap when they are closed at
// once. Only for links whose order of detaching does not matter: each
// program on its own tracepoint, none waiting for another's event.
func closeAtOnce[T io.Closer](cs []T) error {
	errs := make([]error, len(cs))
	atOnce(len(cs), func(i int) {
		if v := reflect.ValueOf(cs[i]); v.IsValid() && (v.Kind() != reflect.Pointer || !v.IsNil()) {
			errs[i] = cs[i].Close()
		}
	})
	return errors.Join(errs...)
}

// ringReader is what readRing reads: a *ringbuf.Reader.
type ringReader interface {
	ReadInto(*ringbuf.Record) error
	SetDeadline(time.Time)
	BufferSize() int
	AvailableBytes() int
}

// ringWaiter parks the calling goroutine until ready returns true, called
// again each time the ring's file is readable, or until the ring is being
// stopped (an error).
type ringWaiter func(ready func() bool) error

// ringBatch is how long readRing lets records gather in a ring that is
// being written to before it reads them: the bound on how late a record of
// a busy ring reaches fn.
//
// Reading each record as the kernel woke the reader for it cost a blocking
// epoll_wait per record (cilium/ebpf's Reader waits in a raw syscall), and
// each such syscall had the Go scheduler's sysmon thread take the reader's P
// back and poll every 20 µs again: at load the largest part of whyslow's own
// wake-ups (BENCHMARKS.md, Issue 16, wt-e28).
const ringBatch = 50 * time.Millisecond

// ringPoll is the deadline that makes ReadInto return what the ring holds
// without waiting, then os.ErrDeadlineExceeded.
var ringPoll = time.Unix(1, 0)

// readRing calls fn with each record's raw bytes until the reader is closed
// or flushed. fn must not keep raw: it is reused.
//
// An idle ring is waited on with wait, in the Go runtime's netpoller (no
// thread blocked in a syscall); the kernel wakes it on the first record,
// so a lone record is read at once. Once records come, the ring is read in
// batches every ringBatch until a batch finds it empty again. A batch that
// took more than a quarter of the ring is followed by the next at once, so
// that the pause does not fill the ring. With wait nil (or once it fails),
// an idle ring is waited on in ReadInto.
//
// A read error that is not transient ends it rather than spin: the ring
// then fills and the programs count what they drop (LOSS_RINGBUF); the
// error itself is a loss of probe delivered to sink, so that the reason is
// in the report.
//
// To stop without losing what is buffered: detach the programs, call
// rd.Flush() and end wait (readRing then returns once the ring is empty),
// wait for readRing to return, then close the reader (ring.drain).
func readRing(rd ringReader, wait ringWaiter, sink Sink, probe string, fn func(raw []byte)) {
	readRingEvery(rd, wait, sink, probe, ringBatch, fn)
}

// readRingEvery is readRing with batches every interval.
func readRingEvery(rd ringReader, wait ringWaiter, sink Sink, probe string, interval time.Duration, fn func(raw []byte)) {
	var rec ringbuf.Record
	polling := wait != nil // the deadline is ringPoll: ReadInto does not wait
	if polling {
		rd.SetDeadline(ringPoll)
	}
	batch := 0 // bytes read since the ring was last found empty
	for {
		err := rd.ReadInto(&rec)
		switch {
		case err == nil:
			if !polling {
				polling = true
				rd.SetDeadline(ringPoll)
			}
			batch += (len(rec.RawSample)+7)&^7 + 8 // the ring's 8-byte header, 8-byte aligned
			fn(rec.RawSample)
		case errors.Is(err, os.ErrDeadlineExceeded) && polling:
			if batch > 0 {
				full := batch > rd.BufferSize()/4
				batch = 0
				if !full {
					time.Sleep(interval)
				}
				continue
			}
			// Nothing came in a whole batch: wait for the kernel's wakeup.
			if wait != nil {
				if err := wait(func() bool { return rd.AvailableBytes() > 0 }); err == nil {
					continue
				}
				// Stopping (or the ring's file not pollable): from now on
				// ReadInto waits, and returns at the flush.
				wait = nil
			}
			polling = false
			rd.SetDeadline(time.Time{})
		case errors.Is(err, ringbuf.ErrClosed), errors.Is(err, ringbuf.ErrFlushed),
			errors.Is(err, os.ErrDeadlineExceeded):
			return
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.EAGAIN):
			continue
		default:
			sink.Loss(event.Loss{Probe: probe, What: ringReadFailed(err), Count: 1})
			return
		}
	}
}

// ringFile opens m's file again, non-blocking, in the Go runtime's
// netpoller, and returns it with the ringWaiter that waits on it; nil and
// a nil waiter when it cannot be polled so.
func ringFile(m *ebpf.Map) (*os.File, ringWaiter) {
	if m == nil {
		return nil, nil
	}
	fd, err := unix.FcntlInt(uintptr(m.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, nil
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, nil
	}
	f := os.NewFile(uintptr(fd), "ring")
	if err := f.SetReadDeadline(time.Time{}); err != nil { // not in the netpoller
		f.Close()
		return nil, nil
	}
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, nil
	}
	return f, func(ready func() bool) error {
		return raw.Read(func(uintptr) bool { return ready() })
	}
}

// deliverLossArray sends the non-zero counts of a per-CPU array of loss
// counters whose index k counts the losses named whats[k] (a probe's own
// loss kinds, beside the shared `losses`); like deliverLosses, an
// unreadable array is itself a loss.
func deliverLossArray(sink Sink, probe string, m *ebpf.Map, whats []string) {
	for k, what := range whats {
		var perCPU []uint64
		if err := m.Lookup(uint32(k), &perCPU); err != nil {
			sink.Loss(event.Loss{Probe: probe, What: "loss counters unreadable", Count: 1})
			return
		}
		var n uint64
		for _, v := range perCPU {
			n += v
		}
		if n > 0 {
			sink.Loss(event.Loss{Probe: probe, What: what, Count: n})
		}
	}
}

// ringReadFailed is the Loss.What of a ring that could no longer be read.
func ringReadFailed(err error) string {
	return "ring buffer unreadable (" + errName(err) + "): later events dropped in the ring"
}

// sumLosses sums the per-CPU `losses` array over CPUs.
func sumLosses(m *ebpf.Map) ([lossKinds]uint64, error) {
	var out [lossKinds]uint64
	if m == nil {
		return out, errors.New("reading losses: no map")
	}
	for k := uint32(0); k < lossKinds; k++ {
		var perCPU []uint64
		if err := m.Lookup(k, &perCPU); err != nil {
			return out, fmt.Errorf("reading losses: %w", err)
		}
		for _, v := range perCPU {
			out[k] += v
		}
	}
	return out, nil
}

// deliverLosses sends the non-zero loss counts of a probe to the sink: the
// counters its programs keep in m, and the runs the kernel skipped of the
// programs in objs (see deliverSkips). A failure to read the counters is
// itself reported as a loss of unknown size (count 1) so that it is never
// silent.
func deliverLosses(sink Sink, probe string, m *ebpf.Map, objs any) {
	deliverLossesWith(sink, probe, m, objs, nil)
}

// deliverLossesWith is deliverLosses with, per program, skipped runs the
// kernel counted elsewhere: those of a leader whose slot it was in
// (hookChain.skips), which replace its own count.
func deliverLossesWith(sink Sink, probe string, m *ebpf.Map, objs any, skips map[*ebpf.Program]uint64) {
	deliverSkips(sink, probe, programsOf(objs), skips)
	counts, err := sumLosses(m)
	if err != nil {
		sink.Loss(event.Loss{Probe: probe, What: "loss counters unreadable", Count: 1})
		return
	}
	for k, n := range counts {
		if n > 0 {
			sink.Loss(event.Loss{Probe: probe, What: lossWhat[k], Count: n})
		}
	}
}

// skippedWhat is the Loss.What of a program's skipped runs.
const skippedWhat = "runs of %s skipped by the kernel: another BPF program was running on its CPU (recursion_misses)"

// deliverSkips reports, per program, the runs the kernel did not make
// because a BPF program was already running on the CPU (an interrupt's
// tracepoint inside another program, the program re-entered): its
// recursion_misses count (5.12+; 0 before), kept whether or not BPF
// statistics are on. Each skipped run is an event the program never saw.
// The programs are whyslow's own, loaded for this run, so the counts are
// this run's.
func deliverSkips(sink Sink, probe string, progs []*ebpf.Program, skips map[*ebpf.Program]uint64) {
	for _, p := range progs {
		n, ok := skips[p]
		if !ok {
			n = skipsOf(p)
		}
		if n == 0 {
			continue
		}
		sink.Loss(event.Loss{Probe: probe, What: fmt.Sprintf(skippedWhat, progName(p)), Count: n})
	}
}

// programsOf lists the programs of a loaded collection or of a bpf2go
// objects struct (a pointer to it), in a stable order.
func programsOf(objs any) []*ebpf.Program {
	if c, ok := objs.(*ebpf.Collection); ok {
		if c == nil {
			return nil
		}
		var out []*ebpf.Program
		for _, name := range slices.Sorted(maps.Keys(c.Programs)) {
			if p := c.Programs[name]; p != nil {
				out = append(out, p)
			}
		}
		return out
	}
	var out []*ebpf.Program
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.Pointer:
			if v.IsNil() {
				return
			}
			if v.Type() == reflect.TypeFor[*ebpf.Program]() {
				if v.CanInterface() {
					out = append(out, v.Interface().(*ebpf.Program))
				}
				return
			}
			if v.Elem().Kind() == reflect.Struct {
				walk(v.Elem())
			}
		case reflect.Struct:
			for i := range v.NumField() {
				walk(v.Field(i))
			}
		}
	}
	if objs != nil {
		walk(reflect.ValueOf(objs))
	}
	return out
}

// kernelDev splits a kernel-internal dev_t (major<<20 | minor), as BPF
// programs see it, into major and minor.
func kernelDev(dev uint32) (major, minor uint32) {
	return dev >> 20, dev & (1<<20 - 1)
}

// commOf returns comm, or when it is empty the current name of thread tid
// (from /proc; "" when it is gone).
func commOf(tid uint32, comm string) string {
	if comm != "" || tid == 0 {
		return comm
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", tid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// cString returns the NUL-terminated string in a C char array, as bpf2go
// emits it ([N]int8) or as raw bytes.
func cString[T ~byte | ~int8](b []T) string {
	var sb strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}

// okStatus is the status of a probe that started on mech.
func okStatus(name string, mech event.Mechanism) event.ProbeStatus {
	return event.ProbeStatus{Name: name, Mechanism: mech, Status: event.StatusOK}
}

// unavailableStatus is the status of a probe that could not start, with a
// one-line reason derived from err.
func unavailableStatus(name string, err error) event.ProbeStatus {
	return event.ProbeStatus{Name: name, Status: event.StatusUnavailable, Reason: errReason(err)}
}

// errReason turns a load or attach error into one readable line: what went
// wrong, then the (first line of the) underlying error.
func errReason(err error) string {
	if err == nil {
		return ""
	}
	msg := firstLine(err.Error())
	var ve *ebpf.VerifierError
	var hint string
	switch {
	case errors.As(err, &ve):
		hint = "rejected by the BPF verifier"
		if l := lastVerifierLine(ve); l != "" {
			msg += " (" + l + ")"
		}
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		if os.Geteuid() != 0 {
			hint = "permission denied: run as root (needs CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN)"
		} else {
			hint = "permission denied by the kernel (lockdown, a security module, or a program type this kernel refuses)"
		}
	case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, ErrNotSupported):
		hint = "not supported by this kernel"
	case errors.Is(err, unix.ENOENT), errors.Is(err, os.ErrNotExist):
		hint = "not found in this kernel (missing tracepoint, function or BTF)"
	case errors.Is(err, unix.EINVAL):
		hint = "refused by this kernel (invalid argument)"
	case errors.Is(err, unix.ENOMEM), errors.Is(err, unix.E2BIG):
		hint = "out of memory for BPF maps (check RLIMIT_MEMLOCK or the memory cgroup)"
	}
	if hint == "" {
		return msg
	}
	return hint + ": " + msg
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	s = strings.TrimSpace(s)
	const max = 300
	if len(s) > max {
		s = s[:max] + "..."
	}
	return s
}

// lastVerifierLine is the last non-empty line of a verifier log, usually the
// reason the program was rejected.
func lastVerifierLine(ve *ebpf.VerifierError) string {
	for i := len(ve.Log) - 1; i >= 0; i-- {
		l := strings.TrimSpace(ve.Log[i])
		if l != "" && !strings.HasPrefix(l, "processed ") {
			return firstLine(l)
		}
	}
	return ""
}

// kernelSpec returns cfg.KernelTypes, or the running kernel's BTF.
func kernelSpec(cfg Config) (*btf.Spec, error) {
	if cfg.KernelTypes != nil {
		return cfg.KernelTypes, nil
	}
	spec, err := KernelBTF()
	if err != nil {
		return nil, fmt.Errorf("loading kernel BTF: %w", err)
	}
	return spec, nil
}

// kernelBTF is the running kernel's BTF, decoded once for the process:
// every load resolves its attach targets (and, by default, its CO-RE
// relocations) against the same copy instead of decoding its own.
var kernelBTF = btf.NewCache()

// KernelBTF returns the running kernel's BTF (/sys/kernel/btf/vmlinux),
// decoded once per process.
func KernelBTF() (*btf.Spec, error) { return kernelBTF.Kernel() }

// haveTaskStorage reports whether the kernel has task storage maps (5.11
// on, with CONFIG_BPF_LSM in 5.11): its BTF describes their allocator.
// cilium/ebpf's feature probe would tell by creating such a map and
// freeing it at once, and freeing a local-storage map waits for RCU grace
// periods: 190 ms of the syscall probe's start on 6.18, nearly half of
// whyslow's. A kernel whose BTF lacks the function (it would have to be
// inlined, though the map's ops take its address) gets the hash by thread.
func haveTaskStorage(kernel *btf.Spec) bool {
	var fn *btf.Func
	return kernel != nil && kernel.TypeByName("task_storage_map_alloc", &fn) == nil
}

// collectionOptions are the load options every probe uses.
func collectionOptions(kernel *btf.Spec) *ebpf.CollectionOptions {
	return &ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{KernelTypes: kernel}, Cache: kernelBTF}
}

// tpProto returns the prototype of tracepoint tp's probe functions. The
// kernel describes each tracepoint as typedef btf_trace_<tp>, a pointer to a
// function whose first parameter (void *__data) is not in a tp_btf
// program's context.
func tpProto(kernel *btf.Spec, tp string) (*btf.FuncProto, error) {
	var td *btf.Typedef
	if err := kernel.TypeByName("btf_trace_"+tp, &td); err != nil {
		return nil, fmt.Errorf("tracepoint %s: %w", tp, err)
	}
	ptr, ok := btf.UnderlyingType(td.Type).(*btf.Pointer)
	if !ok {
		return nil, fmt.Errorf("tracepoint %s: unexpected BTF type %s", tp, td.Type)
	}
	proto, ok := btf.UnderlyingType(ptr.Target).(*btf.FuncProto)
	if !ok {
		return nil, fmt.Errorf("tracepoint %s: unexpected BTF type %s", tp, ptr.Target)
	}
	return proto, nil
}

// tpParamCount returns the number of arguments a tp_btf program of
// tracepoint tp receives (the kernel's btf_trace_<tp> without void *__data).
func tpParamCount(kernel *btf.Spec, tp string) (int, error) {
	proto, err := tpProto(kernel, tp)
	if err != nil {
		return 0, err
	}
	if len(proto.Params) == 0 {
		return 0, fmt.Errorf("tracepoint %s: unexpected BTF type %s", tp, proto)
	}
	return len(proto.Params) - 1, nil
}

// tpArgIndex returns the position, in a tp_btf program's context, of the
// first argument of tracepoint tp that points to struct structName (see
// tpProto). Block tracepoints dropped their leading request_queue argument
// in 5.11, so the index differs between kernels.
func tpArgIndex(kernel *btf.Spec, tp, structName string) (uint32, error) {
	proto, err := tpProto(kernel, tp)
	if err != nil {
		return 0, err
	}
	for i, p := range proto.Params {
		if i == 0 {
			continue // void *__data
		}
		pp, ok := btf.UnderlyingType(p.Type).(*btf.Pointer)
		if !ok {
			continue
		}
		if st, ok := btf.UnderlyingType(pp.Target).(*btf.Struct); ok && st.Name == structName {
			return uint32(i - 1), nil
		}
	}
	return 0, fmt.Errorf("tracepoint %s: no struct %s argument: %w", tp, structName, ErrNotSupported)
}

// The Go twins of the structs of bpf/include/devhist.h, which the maps of
// every object that includes it hold (TestGoMirrorsC compares the layouts).

// devHistCPU mirrors struct dev_hist: one device's latencies on one CPU.
type devHistCPU struct {
	SumNs uint64
	MaxNs uint64
	Slots [hist.Slots]uint64
}

// devHistShared mirrors struct dev_hist_shared: one device's latencies in
// the spill map, shared by the CPUs.
type devHistShared struct {
	SumNs uint64
	Slots [hist.Slots]uint64
	MaxNs [64]uint64 // DEV_MAX_CPUS: per CPU, modulo
}

// devName mirrors struct dev_name: a device's name, NUL-terminated.
type devName struct {
	Name [32]byte // DISK_NAME_LEN
}

// devHistBudget bounds the memory of one per-CPU histogram map: it is
// preallocated for every device it has room for on every CPU, so hosts
// with many CPUs get room for fewer devices (the others go to the shared
// spill map, slower but complete).
const devHistBudget = 4 << 20

// sizeDevHist fits the room of a spec's per-CPU dev_hist map, if it has
// one, to the CPUs of this machine.
func sizeDevHist(spec *ebpf.CollectionSpec) {
	sizePerCPUHash(spec, "dev_hist", devHistBudget)
}

// sizePerCPUHash fits the room of a spec's per-CPU hash map name, if it
// has one, to the CPUs of this machine and a budget of bytes.
func sizePerCPUHash(spec *ebpf.CollectionSpec, name string, budget uint64) {
	m, ok := spec.Maps[name]
	if !ok || m.Type != ebpf.PerCPUHash {
		return
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil || cpus < 1 {
		cpus = runtime.NumCPU()
	}
	m.MaxEntries = perCPUEntries(m.MaxEntries, m.ValueSize, cpus, budget)
}

// perCPUEntries is the room for entries that a per-CPU map of valueSize
// bytes per CPU gets within budget: at most limit, at least 8.
func perCPUEntries(limit, valueSize uint32, cpus int, budget uint64) uint32 {
	n := budget / (uint64(max(valueSize, 1)) * uint64(max(cpus, 1)))
	return uint32(min(uint64(limit), max(n, 8)))
}

// devHists reads the per-device aggregation of bpf/include/devhist.h from
// a probe's collection: each device's slots, sum and maximum, summed over
// the CPUs and the spill map, and the names the programs recorded. Keys are
// kernel dev_t values.
func devHists(perCPU, spill, names *ebpf.Map) (map[uint32]*hist.Histogram, map[uint32]string, error) {
	hs := make(map[uint32]*hist.Histogram)
	get := func(dev uint32) *hist.Histogram {
		h := hs[dev]
		if h == nil {
			h = new(hist.Histogram)
			hs[dev] = h
		}
		return h
	}
	var (
		dev  uint32
		cpus []devHistCPU
	)
	it := perCPU.Iterate()
	for it.Next(&dev, &cpus) {
		h := get(dev)
		for _, c := range cpus {
			addSlots(h, c.Slots[:])
			h.SumNs += c.SumNs
			h.MaxNs = max(h.MaxNs, c.MaxNs)
		}
	}
	if err := it.Err(); err != nil {
		return nil, nil, fmt.Errorf("reading histograms: %w", err)
	}
	var sh devHistShared
	it = spill.Iterate()
	for it.Next(&dev, &sh) {
		h := get(dev)
		addSlots(h, sh.Slots[:])
		h.SumNs += sh.SumNs
		for _, m := range sh.MaxNs {
			h.MaxNs = max(h.MaxNs, m)
		}
	}
	if err := it.Err(); err != nil {
		return nil, nil, fmt.Errorf("reading spilled histograms: %w", err)
	}
	out := make(map[uint32]string)
	var name devName
	it = names.Iterate()
	for it.Next(&dev, &name) {
		if n := cString(name.Name[:]); n != "" {
			out[dev] = n
		}
	}
	if err := it.Err(); err != nil {
		return nil, nil, fmt.Errorf("reading device names: %w", err)
	}
	return hs, out, nil
}

func addSlots(h *hist.Histogram, slots []uint64) {
	for slot, n := range slots {
		if n > 0 {
			h.AddN(slot, n)
		}
	}
}

// deliverDevHists sends each device's histogram to the sink, naming devices
// from names or, failing that, from sysfs.
func deliverDevHists(sink Sink, kind timeline.HistKind, sysfs string, hs map[uint32]*hist.Histogram, names map[uint32]string) {
	devs := make([]uint32, 0, len(hs))
	for d := range hs {
		devs = append(devs, d)
	}
	slices.Sort(devs)
	for _, d := range devs {
		h := hs[d]
		if h.Count == 0 {
			continue
		}
		major, minor := kernelDev(d)
		name := names[d]
		if name == "" {
			name = blockDevName(sysfs, major, minor)
		}
		sink.Histogram(kind, event.Device{Major: major, Minor: minor, Name: name}, h)
	}
}

// blockDevName reads DEVNAME from <sysfs>/dev/block/MAJ:MIN/uevent; "" when
// unknown (the device may be gone).
func blockDevName(sysfs string, major, minor uint32) string {
	if sysfs == "" {
		sysfs = "/sys"
	}
	b, err := os.ReadFile(filepath.Join(sysfs, "dev", "block", fmt.Sprintf("%d:%d", major, minor), "uevent"))
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "DEVNAME="); ok {
			return filepath.Base(strings.TrimSpace(v))
		}
	}
	return ""
}

// ring is a probe's ring buffer, the goroutine that reads it, and the count
// of its records that could not be decoded. A probe's Running embeds it.
type ring struct {
	rd     *ringbuf.Reader
	m      *ebpf.Map     // the ring's map (not owned)
	file   *os.File      // m's file in the netpoller, while read (readAll)
	done   chan struct{} // closed when the reader goroutine returns
	decode uint64        // undecodable records (reader goroutine)
}

// openRing opens the reader of the ring buffer map m.
func (g *ring) openRing(m *ebpf.Map) (err error) {
	g.m = m
	g.rd, err = ringbuf.NewReader(m)
	return err
}

// readAll starts the goroutine that hands each record of rd to fn (readRing).
func (g *ring) readAll(sink Sink, probe string, fn func(raw []byte)) {
	var wait ringWaiter
	g.file, wait = ringFile(g.m)
	g.done = make(chan struct{})
	go func() {
		defer close(g.done)
		readRing(g.rd, wait, sink, probe, fn)
	}()
}

// drain waits until what the ring holds is read, then closes it. Detach
// the programs first, so that nothing more comes in.
func (g *ring) drain() {
	if g.rd == nil {
		return
	}
	_ = g.rd.Flush()
	if g.file != nil {
		_ = g.file.SetReadDeadline(ringPoll) // ends the reader's wait
	}
	if g.done != nil {
		<-g.done
	}
	if g.file != nil {
		g.file.Close()
	}
	g.rd.Close()
}

// undecodable delivers the count of records that could not be decoded, if
// any, as a loss of probe.
func (g *ring) undecodable(sink Sink, probe string) {
	if g.decode > 0 {
		sink.Loss(event.Loss{Probe: probe, What: "undecodable record", Count: g.decode})
	}
}
