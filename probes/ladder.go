package probes

// The mechanism ladder: a probe that can measure the same thing several ways
// declares its ways best first (fentry/fexit, kprobe/kretprobe, then the
// tracepoint or off-CPU inference other probes already make). Start climbs
// down the ladder: a rung is ruled out when the kernel BTF lacks the
// functions it needs, or when they are inlined (absent from kallsyms), and
// otherwise tried for real; its load or attach result is the final word.
// Each rung skipped is reported with why.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/symbolize"
)

// ladder is a probe whose Start climbs its mechanisms (Decl.Forceable):
// rungs gives the code of each of Decl.Mechanisms, in their order (a test
// holds them to it).
type ladder interface {
	Probe
	rungs(cfg Config, kernel *btf.Spec, sink Sink) []ladderRung
}

// startLadder starts a ladder probe: on the forced rung, or the best that
// works.
func startLadder(p ladder, cfg Config, sink Sink) (Running, event.ProbeStatus) {
	d := p.Decl()
	kernel, err := kernelSpec(cfg)
	if err != nil {
		return nil, unavailableStatus(d.Name, err)
	}
	return climb(d, p.rungs(cfg, kernel, sink), newHostCaps(cfg, kernel), cfg.Mechanism.For(d))
}

// MechanismChoice forces probes onto one mechanism (the --mechanism
// option). The zero value forces nothing.
type MechanismChoice struct {
	// All applies to every probe that offers it; "" means none.
	All event.Mechanism
	// Per maps a probe name to the mechanism it must use.
	Per map[string]event.Mechanism
}

// knownMechanisms are the values --mechanism accepts.
var knownMechanisms = []event.Mechanism{event.MechFentry, event.MechKprobe, event.MechTPBTF,
	event.MechRawTP, event.MechTracepoint, event.MechNetlink}

// ParseMechanism parses --mechanism values: "kprobe" forces every probe that
// offers kprobe; "freeze=kprobe" forces one probe. Values may also be
// comma-separated. A later value for the same probe replaces an earlier one.
func ParseMechanism(values []string) (MechanismChoice, error) {
	var m MechanismChoice
	for _, v := range values {
		for _, item := range strings.Split(v, ",") {
			item = strings.TrimSpace(item)
			if item == "" {
				continue
			}
			probe, mech, per := strings.Cut(item, "=")
			if !per {
				probe, mech = "", item
			}
			mech = strings.TrimSpace(mech)
			if !slices.Contains(knownMechanisms, event.Mechanism(mech)) {
				return MechanismChoice{}, fmt.Errorf("--mechanism %q: unknown mechanism %q (want one of %s)", item, mech, mechList(knownMechanisms))
			}
			if !per {
				m.All = event.Mechanism(mech)
				continue
			}
			probe = strings.TrimSpace(probe)
			if probe == "" {
				return MechanismChoice{}, fmt.Errorf("--mechanism %q: no probe name before '='", item)
			}
			if m.Per == nil {
				m.Per = map[string]event.Mechanism{}
			}
			m.Per[probe] = event.Mechanism(mech)
		}
	}
	return m, nil
}

// Check verifies the choice against the probes: every probe named exists
// and offers its mechanism, and a mechanism forced on all is offered by at
// least one probe.
func (m MechanismChoice) Check(ps []Probe) error {
	offers := map[string][]event.Mechanism{}
	var names []string
	for _, p := range ps {
		d := p.Decl()
		names = append(names, d.Name)
		if d.Forceable {
			offers[d.Name] = d.Mechs()
		}
	}
	probes := make([]string, 0, len(m.Per))
	for p := range m.Per {
		probes = append(probes, p)
	}
	sort.Strings(probes)
	for _, p := range probes {
		mech := m.Per[p]
		if !slices.Contains(names, p) {
			return fmt.Errorf("--mechanism %s=%s: no probe %q (probes: %s)", p, mech, p, strings.Join(names, ", "))
		}
		has, ok := offers[p]
		if !ok {
			return fmt.Errorf("--mechanism %s=%s: probe %s has a single mechanism and cannot be forced", p, mech, p)
		}
		if !slices.Contains(has, mech) {
			return fmt.Errorf("--mechanism %s=%s: probe %s offers %s", p, mech, p, mechList(has))
		}
	}
	if m.All != "" {
		for _, has := range offers {
			if slices.Contains(has, m.All) {
				return nil
			}
		}
		return fmt.Errorf("--mechanism %s: no probe offers it", m.All)
	}
	return nil
}

// For returns the mechanism forced on a probe, or "".
func (m MechanismChoice) For(d Decl) event.Mechanism {
	if mech, ok := m.Per[d.Name]; ok {
		return mech
	}
	if m.All != "" && slices.Contains(d.Mechs(), m.All) {
		return m.All
	}
	return ""
}

// String formats the choice as --mechanism takes it.
func (m MechanismChoice) String() string {
	var parts []string
	if m.All != "" {
		parts = append(parts, string(m.All))
	}
	probes := make([]string, 0, len(m.Per))
	for p := range m.Per {
		probes = append(probes, p)
	}
	sort.Strings(probes)
	for _, p := range probes {
		parts = append(parts, p+"="+string(m.Per[p]))
	}
	return strings.Join(parts, ",")
}

func mechList(ms []event.Mechanism) string {
	s := make([]string, len(ms))
	for i, m := range ms {
		s[i] = string(m)
	}
	return strings.Join(s, ", ")
}

// kernelCaps answers what the ladder asks about the kernel. Tests fake it.
type kernelCaps interface {
	// FuncInBTF reports whether the kernel BTF describes a function name.
	FuncInBTF(name string) bool
	// FuncInKallsyms reports whether name is a text symbol of the kernel
	// (a function not inlined everywhere); known is false when kallsyms
	// cannot be read, and then only BTF decides.
	FuncInKallsyms(name string) (found, known bool)
	// KprobePMU reports whether the kernel can create kprobes (a kprobe
	// PMU or tracefs kprobe_events). Used only to explain a failed attach.
	KprobePMU() bool
}

// ladderRung is the code of one Rung of a probe: how it starts.
type ladderRung struct {
	mech event.Mechanism
	// funcs lists, per role (e.g. freeze start, unfreeze), the kernel
	// functions that can serve it, best first; nil for a rung that needs no
	// function of its own.
	funcs [][]string
	// start loads and attaches on the chosen function of each role. Errors
	// wrapped in stageError say whether load or attach failed.
	start func(fns []string) (Running, error)
	// note is the status Reason when the rung runs (for an inferred rung:
	// which probe does the work); "" gives "on <functions>".
	note string
}

// stageError says which step of starting a rung failed: "load" or "attach".
type stageError struct {
	stage string
	err   error
}

func (e *stageError) Error() string { return e.stage + ": " + e.err.Error() }
func (e *stageError) Unwrap() error { return e.err }

func loadErr(err error) error   { return &stageError{"load", err} }
func attachErr(err error) error { return &stageError{"attach", err} }

// climb starts the first rung of probe d that works, best first, or the
// forced one only. The status lists every rung not used, with why, and
// names the probe that does the work of an inferred rung.
func climb(d Decl, rungs []ladderRung, caps kernelCaps, force event.Mechanism) (Running, event.ProbeStatus) {
	name := d.Name
	var skipped []event.Skip
	skip := func(m event.Mechanism, why string) { skipped = append(skipped, event.Skip{Mechanism: m, Reason: why}) }
	for _, r := range rungs {
		if force != "" && r.mech != force {
			skip(r.mech, "not tried: --mechanism "+string(force))
			continue
		}
		if pc, ok := caps.(prechecker); ok {
			if why := pc.precheck(r.mech, r.funcs); why != "" {
				skip(r.mech, why)
				continue
			}
		}
		fns, why := resolveFuncs(r, caps)
		if why != "" {
			skip(r.mech, why)
			continue
		}
		run, err := r.start(fns)
		if err != nil {
			skip(r.mech, skipReason(r.mech, err, caps))
			continue
		}
		st := okStatus(name, r.mech)
		st.Skipped = skipped
		st.Reason = r.note
		st.InferredBy = d.InferredBy(r.mech)
		if on, ok := run.(interface{ probedFuncs() []string }); ok && len(on.probedFuncs()) > 0 {
			fns = on.probedFuncs()
		}
		if n, ok := run.(interface{ statusNote() string }); ok && st.Reason == "" {
			st.Reason = n.statusNote()
		}
		if st.Reason == "" && len(fns) > 0 {
			st.Reason = "on " + strings.Join(fns, ", ")
		}
		return run, st
	}
	st := event.ProbeStatus{Name: name, Status: event.StatusUnavailable, Skipped: skipped}
	var whys []string
	for _, s := range skipped {
		if force != "" && s.Mechanism != force {
			continue
		}
		whys = append(whys, string(s.Mechanism)+": "+s.Reason)
	}
	switch {
	case force != "" && len(whys) == 0:
		st.Reason = fmt.Sprintf("--mechanism %s: the probe has no such mechanism", force)
	case force != "":
		st.Reason = "forced mechanism failed: " + strings.Join(whys, "; ")
	default:
		st.Reason = "no mechanism works: " + strings.Join(whys, "; ")
	}
	return nil, st
}

// resolveFuncs picks, for each role of a rung, the first function the
// kernel has as a real traceable function: described in BTF and, when
// kallsyms is readable, present there (not inlined). It returns the
// functions, or why there is none for some role.
func resolveFuncs(r ladderRung, caps kernelCaps) ([]string, string) {
	var out []string
	for _, cands := range r.funcs {
		var whys []string
		chosen := ""
		for _, f := range cands {
			if !caps.FuncInBTF(f) {
				whys = append(whys, f+" not in BTF")
				continue
			}
			if found, known := caps.FuncInKallsyms(f); known && !found {
				whys = append(whys, f+" inlined (not in kallsyms)")
				continue
			}
			chosen = f
			break
		}
		if chosen == "" {
			return nil, "function " + strings.Join(whys, ", ")
		}
		out = append(out, chosen)
	}
	return out, ""
}

// skipReason explains a rung's failed load or attach in one line.
func skipReason(mech event.Mechanism, err error, caps kernelCaps) string {
	var se *stageError
	stage := ""
	if errors.As(err, &se) {
		stage = se.stage
	}
	var ve *ebpf.VerifierError
	switch {
	case mech == event.MechKprobe && stage == "attach" && !caps.KprobePMU():
		return "CONFIG_KPROBES not set (no kprobe PMU)"
	case errors.As(err, &ve):
		return errReason(err)
	case stage == "load" && errors.Is(err, unix.EPERM):
		return "load denied (EPERM)"
	case stage != "":
		return stage + " failed: " + errReason(se.err)
	}
	return errReason(err)
}

// prechecker is what kernelCaps on a real host also answer: whether a
// mechanism cannot work here at all, told cheaply before a rung resolves
// its functions (kallsyms) and loads its programs (and creates its maps) to
// find out. It gives the reason the failed start would have given, or "".
type prechecker interface {
	precheck(mech event.Mechanism, funcs [][]string) string
}

// precheck: kprobes need a kprobe PMU (an attach would fail without one);
// fentry programs, where the kernel denies them to everyone (lockdown, no
// CAP_BPF), fail to load with EPERM: one trivial program on a function of
// the rung, loaded once per process, tells.
func (c hostCaps) precheck(mech event.Mechanism, funcs [][]string) string {
	switch mech {
	case event.MechKprobe:
		if !c.KprobePMU() {
			return "CONFIG_KPROBES not set (no kprobe PMU)"
		}
	case event.MechFentry:
		for _, cands := range funcs {
			for _, f := range cands {
				if c.FuncInBTF(f) {
					if c.fentryDenied(f) {
						return "load denied (EPERM)"
					}
					return ""
				}
			}
		}
	}
	return ""
}

// fentryDenied reports whether the kernel denies fentry programs: the
// first load asked of c.fentry (the process's, by default), on fn, says.
func (c hostCaps) fentryDenied(fn string) bool {
	o, load := &processFentry, func() error { return loadNopFentry(c.kernel, fn) }
	if c.fentry != nil {
		o = c.fentry
	}
	if c.fentryLoad != nil {
		load = func() error { return c.fentryLoad(fn) }
	}
	return o.denied(load)
}

// fentryOnce keeps the answer of its first fentry load.
type fentryOnce struct {
	sync.Mutex
	done, isDenied bool
}

// processFentry is asked once per process: the answer holds for every
// probe and function.
var processFentry fentryOnce

// denied calls load the first time only, and reports whether it (then)
// failed with EPERM.
func (o *fentryOnce) denied(load func() error) bool {
	o.Lock()
	defer o.Unlock()
	if !o.done {
		o.done, o.isDenied = true, errors.Is(load(), unix.EPERM)
	}
	return o.isDenied
}

// loadNopFentry loads an fentry program that does nothing, on fn, and
// closes it. It loads as a collection for the process's kernel BTF cache:
// ebpf.NewProgramWithOptions would decode the whole kernel BTF again to
// find fn (some 25 ms of CPU at every start, beside the verifier).
func loadNopFentry(kernel *btf.Spec, fn string) error {
	coll, err := ebpf.NewCollectionWithOptions(&ebpf.CollectionSpec{Programs: map[string]*ebpf.ProgramSpec{"nop": {
		Name: "nop", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFEntry, AttachTo: fn, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	}}}, *collectionOptions(kernel))
	if err == nil {
		coll.Close()
	}
	return err
}

// hostCaps answers kernelCaps from the kernel BTF, <procfs>/kallsyms and
// <sysfs>.
type hostCaps struct {
	kernel        *btf.Spec
	procfs, sysfs string
	// fentry and fentryLoad, when set, replace the process's answer and
	// the load of a program on fn that gives it (tests).
	fentry     *fentryOnce
	fentryLoad func(fn string) error
}

func newHostCaps(cfg Config, kernel *btf.Spec) hostCaps {
	c := hostCaps{kernel: kernel, procfs: cfg.ProcFS, sysfs: cfg.SysFS}
	if c.procfs == "" {
		c.procfs = "/proc"
	}
	if c.sysfs == "" {
		c.sysfs = "/sys"
	}
	return c
}

func (c hostCaps) FuncInBTF(name string) bool {
	if c.kernel == nil {
		return false
	}
	var fn *btf.Func
	return c.kernel.TypeByName(name, &fn) == nil
}

func (c hostCaps) FuncInKallsyms(name string) (bool, bool) {
	// One read of kallsyms serves every probe: symbolize keeps it.
	return symbolize.KernelHasText(c.procfs, name)
}

func (c hostCaps) KprobePMU() bool {
	for _, p := range []string{
		filepath.Join(c.sysfs, "bus/event_source/devices/kprobe/type"),
		filepath.Join(c.sysfs, "kernel/tracing/kprobe_events"),
		filepath.Join(c.sysfs, "kernel/debug/tracing/kprobe_events"),
	} {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}

// attachPoint is one program of a direct rung and the function it goes on.
type attachPoint struct {
	prog   string // program name in the object
	fn     string // kernel function
	ret    bool   // kretprobe (kprobe rung); fexit is told by the program's section
	tracer bool   // fentry/fexit program (else kprobe)
	rawtp  bool   // a raw tracepoint program (fn is the tracepoint) that goes with the others
	later  bool   // loaded with the others, attached by the probe when it needs it (attachLater)
}

// directRun is a running fentry or kprobe probe that streams records from
// its `events` ring buffer and counts losses in its `losses` array.
type directRun struct {
	probe string
	sink  Sink
	coll  *ebpf.Collection
	links []link.Link
	ring
	// hists, when set, delivers the probe's histograms so far to sink: at
	// checkpoints, and as it stops.
	hists func(coll *ebpf.Collection, sink Sink) error
	// funcs, when set, are all the functions probed (the status names them).
	funcs []string
	// closeMore, when set, runs as the run stops, after its links are
	// closed: it detaches what the probe attached later (attachLater).
	closeMore func()
	// moreLosses, when set, delivers the probe's own loss counters beside
	// `losses`: at checkpoints, and as it stops.
	moreLosses func(coll *ebpf.Collection, sink Sink)
	// atStop, when set, runs as the run stops, after its links are closed
	// and its ring drained, before its maps are freed: it delivers what
	// the maps still hold (spans begun and not ended).
	atStop func(coll *ebpf.Collection, sink Sink)

	stopOnce sync.Once
	stopErr  error
}

// startDirect loads only the programs of points (with their attach targets
// set) and the maps, attaches them, and streams records to handle, which
// reports records it cannot decode. Load failures are wrapped as load
// errors and attach failures as attach errors.
func startDirect(probe string, spec *ebpf.CollectionSpec, kernel *btf.Spec, points []attachPoint, sink Sink,
	handle func(coll *ebpf.Collection, raw []byte) bool) (_ *directRun, err error) {
	spec = spec.Copy()
	points = slices.Clone(points)
	keep := map[string]bool{}
	for i, p := range points {
		ps, ok := spec.Programs[p.prog]
		if !ok {
			return nil, loadErr(fmt.Errorf("no program %s in the object", p.prog))
		}
		if p.tracer {
			// An fentry program is loaded for one function: a second
			// function of the same program gets a copy of its own.
			if keep[p.prog] {
				ps = ps.Copy()
				points[i].prog = fmt.Sprintf("%s#%d", p.prog, i)
				spec.Programs[points[i].prog] = ps
			}
			ps.AttachTo = p.fn
		}
		keep[points[i].prog] = true
	}
	for name := range spec.Programs {
		if !keep[name] {
			delete(spec.Programs, name)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, *collectionOptions(kernel))
	if err != nil {
		return nil, loadErr(fmt.Errorf("loading objects: %w", err))
	}
	r := &directRun{probe: probe, sink: sink, coll: coll}
	defer func() {
		if err != nil {
			closeAll(r.links)
			if r.rd != nil {
				r.rd.Close()
			}
			coll.Close()
		}
	}()
	if err = r.openRing(coll.Maps["events"]); err != nil {
		return nil, loadErr(fmt.Errorf("opening ring buffer: %w", err))
	}
	// Returns before entries, so no started span misses its end.
	order := slices.Clone(points)
	slices.SortStableFunc(order, func(a, b attachPoint) int {
		return boolInt(!isReturn(spec, a)) - boolInt(!isReturn(spec, b))
	})
	for _, p := range order {
		if p.later {
			continue
		}
		l, err := attachPointTo(coll, p)
		if err != nil {
			return nil, err
		}
		r.links = append(r.links, l)
	}
	r.readAll(r.sink, r.probe, func(raw []byte) {
		if !handle(coll, raw) {
			r.decode++
		}
	})
	return r, nil
}

// attachPointTo attaches the loaded program of p to its function; an
// error is an attach error naming both.
func attachPointTo(coll *ebpf.Collection, p attachPoint) (link.Link, error) {
	prog := coll.Programs[p.prog]
	if prog == nil {
		return nil, attachErr(fmt.Errorf("%s on %s: program not loaded", p.prog, p.fn))
	}
	var l link.Link
	var err error
	switch {
	case p.tracer:
		l, err = link.AttachTracing(link.TracingOptions{Program: prog})
	case p.rawtp:
		l, err = link.AttachRawTracepoint(link.RawTracepointOptions{Name: p.fn, Program: prog})
	case p.ret:
		l, err = link.Kretprobe(p.fn, prog, nil)
	default:
		l, err = link.Kprobe(p.fn, prog, nil)
	}
	if err != nil {
		return nil, attachErr(fmt.Errorf("%s on %s: %w", p.prog, p.fn, err))
	}
	return l, nil
}

// attachLater attaches points (marked later) in their order, which puts
// returns before entries so that no started span misses its end; on an
// error it closes what it attached.
func attachLater(coll *ebpf.Collection, points []attachPoint) ([]link.Link, error) {
	var links []link.Link
	for _, p := range points {
		l, err := attachPointTo(coll, p)
		if err != nil {
			closeAll(links)
			return nil, err
		}
		links = append(links, l)
	}
	return links, nil
}

// probedFuncs lists the functions the run probes, when it set them.
func (r *directRun) probedFuncs() []string { return r.funcs }

func isReturn(spec *ebpf.CollectionSpec, p attachPoint) bool {
	if p.ret {
		return true
	}
	ps := spec.Programs[p.prog]
	return ps != nil && ps.AttachType == ebpf.AttachTraceFExit
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Checkpoint implements Checkpointer.
func (r *directRun) Checkpoint(sink Sink) error {
	if r.hists != nil {
		if err := r.hists(r.coll, sink); err != nil {
			return err
		}
	}
	deliverLosses(sink, r.probe, r.coll.Maps["losses"], r.coll)
	if r.moreLosses != nil {
		r.moreLosses(r.coll, sink)
	}
	return nil
}

// Stop detaches, delivers what is buffered, the losses and the
// histograms, and frees everything.
func (r *directRun) Stop() error {
	r.stopOnce.Do(func() {
		closeAll(r.links)
		if r.closeMore != nil {
			r.closeMore()
		}
		r.drain()
		if r.atStop != nil {
			r.atStop(r.coll, r.sink)
		}
		if r.hists != nil {
			r.stopErr = r.hists(r.coll, r.sink)
		}
		deliverLosses(r.sink, r.probe, r.coll.Maps["losses"], r.coll)
		if r.moreLosses != nil {
			r.moreLosses(r.coll, r.sink)
		}
		r.undecodable(r.sink, r.probe)
		r.coll.Close()
	})
	return r.stopErr
}

// inferred is the Running of a rung whose measurement another probe makes
// (the off-CPU stacks, the submit tracepoints): nothing of its own runs.
type inferred struct{}

func (inferred) Stop() error { return nil }

// inferredRung is the last rung of a direct probe: the tracepoint (tp) that
// another probe attaches must exist; note says which probe infers what.
func inferredRung(kernel *btf.Spec, tp, note string) ladderRung {
	return ladderRung{
		mech: event.MechTPBTF,
		note: note,
		start: func([]string) (Running, error) {
			if kernel == nil {
				return nil, attachErr(fmt.Errorf("no kernel BTF: %w", ErrNotSupported))
			}
			var td *btf.Typedef
			if err := kernel.TypeByName("btf_trace_"+tp, &td); err != nil {
				return nil, attachErr(fmt.Errorf("tracepoint %s: %w", tp, err))
			}
			return inferred{}, nil
		},
	}
}

// directRungs returns the fentry and kprobe rungs of a probe whose roles
// have the given function candidates. start gets the mechanism and the
// chosen function of each role.
func directRungs(funcs [][]string, start func(mech event.Mechanism, fns []string) (Running, error)) []ladderRung {
	var out []ladderRung
	for _, m := range []event.Mechanism{event.MechFentry, event.MechKprobe} {
		out = append(out, ladderRung{mech: m, funcs: funcs, start: func(fns []string) (Running, error) { return start(m, fns) }})
	}
	return out
}

// haveKfunc tells whether the kernel's BTF has kfunc name (a function a
// program may call where its program type allows it).
func haveKfunc(kernel *btf.Spec, name string) bool {
	if kernel == nil {
		return false
	}
	var fn *btf.Func
	return kernel.TypeByName(name, &fn) == nil
}

// haveHelper tells whether the kernel knows BPF helper name (its
// BPF_FUNC_<name> in the BTF of enum bpf_func_id): for the program types
// cilium/ebpf cannot probe (iter, tp_btf), whose helpers are those of the
// tracing programs.
func haveHelper(kernel *btf.Spec, name string) bool {
	if kernel == nil {
		return false
	}
	var e *btf.Enum
	if kernel.TypeByName("bpf_func_id", &e) != nil {
		return false
	}
	for _, v := range e.Values {
		if v.Name == "BPF_FUNC_"+name {
			return true
		}
	}
	return false
}
