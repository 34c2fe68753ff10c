package probes

import (
	"bytes"
	"embed"
	"io/fs"
	"reflect"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/whyslow/whyslow/internal/hist"
)

// A mirror is something Go copies by hand from the C of the BPF programs:
// a constant, an enum's values or a struct's layout. bpf2go generates the
// event types and the enums Go switches on; what it cannot generate (what
// several objects share, or what another package defines) is mirrored, and
// checked here against each object as it was compiled, through its BTF.
type mirror struct {
	name string
	// in reports whether an object has the C side; nil: every object has.
	in    func(spec *ebpf.CollectionSpec) bool
	check func(t *testing.T, spec *ebpf.CollectionSpec)
}

var mirrors = []mirror{
	{
		// enum loss_kind and the losses map (common.h): lossRingbuf,
		// lossMapFull, lossStack, lossKinds and lossWhat.
		name: "loss_kind",
		check: func(t *testing.T, spec *ebpf.CollectionSpec) {
			e := enumOf(t, spec, "loss_kind")
			sameEnum(t, e, map[string]uint64{
				"LOSS_RINGBUF":  lossRingbuf,
				"LOSS_MAP_FULL": lossMapFull,
				"LOSS_STACK":    lossStack,
				"LOSS_KINDS":    lossKinds,
			})
			namesEvery(t, e, "LOSS_KINDS", lossWhat[:])
			m := spec.Maps["losses"]
			if m == nil {
				t.Fatal("no losses map")
			}
			if m.Type != ebpf.PerCPUArray || m.MaxEntries != lossKinds || m.KeySize != 4 || m.ValueSize != 8 {
				t.Errorf("losses is %v of %d entries, key %d value %d bytes; sumLosses reads a per-CPU array of %d u64 counters",
					m.Type, m.MaxEntries, m.KeySize, m.ValueSize, lossKinds)
			}
		},
	},
	{
		// min_latency_ns (spans.h): minLatencyVar, set as a uint64.
		name: "min_latency_ns",
		in:   func(spec *ebpf.CollectionSpec) bool { return spec.Variables[minLatencyVar] != nil },
		check: func(t *testing.T, spec *ebpf.CollectionSpec) {
			if v := spec.Variables[minLatencyVar]; v.Size() != 8 || !v.Constant() {
				t.Errorf("%s: %d bytes, constant %v; spanConsts sets a uint64 before loading", minLatencyVar, v.Size(), v.Constant())
			}
		},
	},
	{
		// enum hist_layout (hist.h): hist.SubBits, MaxLog2 and Slots.
		name: "hist_layout",
		in:   func(spec *ebpf.CollectionSpec) bool { return hasType[*btf.Enum](spec, "hist_layout") },
		check: func(t *testing.T, spec *ebpf.CollectionSpec) {
			sameEnum(t, enumOf(t, spec, "hist_layout"), map[string]uint64{
				"HIST_SUB_BITS": hist.SubBits,
				"HIST_MAX_LOG2": hist.MaxLog2,
				"HIST_SLOTS":    hist.Slots,
			})
		},
	},
	{
		// The values of the maps of devhist.h: devHistCPU,
		// devHistShared and devName.
		name: "devhist",
		in:   func(spec *ebpf.CollectionSpec) bool { return spec.Maps["dev_hist"] != nil },
		check: func(t *testing.T, spec *ebpf.CollectionSpec) {
			for m, goType := range map[string]reflect.Type{
				"dev_hist":       reflect.TypeFor[devHistCPU](),
				"dev_hist_spill": reflect.TypeFor[devHistShared](),
				"dev_hist_zero":  reflect.TypeFor[devHistShared](),
				"dev_names":      reflect.TypeFor[devName](),
			} {
				ms := spec.Maps[m]
				if ms == nil {
					t.Errorf("no %s map", m)
					continue
				}
				sameLayout(t, m, ms.Value, goType)
			}
		},
	},
	{
		// KSTACK_DEPTH in freeze.bpf.c, the kstacks map's frames:
		// freezeKstackDepth.
		name: "kstacks",
		in:   func(spec *ebpf.CollectionSpec) bool { return spec.Maps["kstacks"] != nil },
		check: func(t *testing.T, spec *ebpf.CollectionSpec) {
			if m := spec.Maps["kstacks"]; m.ValueSize != freezeKstackDepth*8 {
				t.Errorf("kstacks entries are %d bytes, want %d frames", m.ValueSize, freezeKstackDepth)
			}
		},
	},
	{
		// execRunning.handle reads the record kind as the first u32 of
		// every record of exec.bpf.c.
		name: "exec_kind",
		in:   func(spec *ebpf.CollectionSpec) bool { return hasType[*btf.Struct](spec, "exit_event") },
		check: func(t *testing.T, spec *ebpf.CollectionSpec) {
			for _, name := range []string{"exec_event", "exit_event"} {
				var st *btf.Struct
				if err := spec.Types.TypeByName(name, &st); err != nil {
					t.Fatal(err)
				}
				m := st.Members[0]
				if size, _ := btf.Sizeof(m.Type); m.Name != "kind" || m.Offset != 0 || size != 4 {
					t.Errorf("struct %s starts with %s (%d bytes), not the u32 kind", name, m.Name, size)
				}
			}
		},
	},
	{
		// enum stack_loss (offcpu.bpf.c): offcpuStackLossWhat.
		name: "stack_loss",
		in:   func(spec *ebpf.CollectionSpec) bool { return spec.Maps["stack_losses"] != nil },
		check: func(t *testing.T, spec *ebpf.CollectionSpec) {
			namesEvery(t, enumOf(t, spec, "stack_loss"), "STACK_LOSS_KINDS", offcpuStackLossWhat[:])
		},
	},
	{
		// enum sub_loss_kind (submit.bpf.c): submitLossWhat.
		name: "sub_loss_kind",
		in:   func(spec *ebpf.CollectionSpec) bool { return spec.Maps["sub_losses"] != nil },
		check: func(t *testing.T, spec *ebpf.CollectionSpec) {
			namesEvery(t, enumOf(t, spec, "sub_loss_kind"), "SUB_LOSS_KINDS", submitLossWhat[:])
		},
	},
	{
		// enum sf_loss_kind (submitfn.bpf.c): submitFnLossWhat.
		name: "sf_loss_kind",
		in:   func(spec *ebpf.CollectionSpec) bool { return spec.Maps["sf_losses"] != nil },
		check: func(t *testing.T, spec *ebpf.CollectionSpec) {
			namesEvery(t, enumOf(t, spec, "sf_loss_kind"), "SF_LOSS_KINDS", submitFnLossWhat[:])
		},
	},
	{
		// syscall.bpf.c: syscallLossWhat names enum sc_stack_loss; the
		// records start with their u32 kind (syscallRunning.handle).
		name: "syscall",
		in:   func(spec *ebpf.CollectionSpec) bool { return spec.Maps["sc_losses"] != nil },
		check: func(t *testing.T, spec *ebpf.CollectionSpec) {
			namesEvery(t, enumOf(t, spec, "sc_stack_loss"), "SC_LOSS_KINDS", syscallLossWhat[:])
			for _, name := range []string{"sc_new", "sc_slow"} {
				var st *btf.Struct
				if err := spec.Types.TypeByName(name, &st); err != nil {
					t.Fatal(err)
				}
				if m := st.Members[0]; m.Name != "kind" || m.Offset != 0 {
					t.Errorf("struct %s starts with %s, not the u32 kind", name, m.Name)
				}
			}
			if m := spec.Maps["stacks"]; m == nil || m.ValueSize != uint32(syscallScLayoutSTACK_DEPTH)*8 {
				t.Errorf("stacks: %+v, want entries of STACK_DEPTH frames", m)
			}
		},
	},
	{
		// enum submit_end (submit.bpf.c): submitEnds.
		name: "submit_end",
		in:   func(spec *ebpf.CollectionSpec) bool { return hasType[*btf.Enum](spec, "submit_end") },
		check: func(t *testing.T, spec *ebpf.CollectionSpec) {
			namesEvery(t, enumOf(t, spec, "submit_end"), "", submitEnds[:])
		},
	},
	{
		// enum qe_func (queueenter.bpf.c): queueEnterFuncs.
		name: "qe_func",
		in:   func(spec *ebpf.CollectionSpec) bool { return hasType[*btf.Enum](spec, "qe_func") },
		check: func(t *testing.T, spec *ebpf.CollectionSpec) {
			e := enumOf(t, spec, "qe_func")
			namesEvery(t, e, "", queueEnterFuncs)
			for _, v := range e.Values {
				// QE_BIO_QUEUE_ENTER names __bio_queue_enter.
				if v.Value < uint64(len(queueEnterFuncs)) {
					if fn := queueEnterFuncs[v.Value]; "QE_"+strings.ToUpper(strings.TrimLeft(fn, "_")) != v.Name {
						t.Errorf("%s = %d names %s in queueEnterFuncs", v.Name, v.Value, fn)
					}
				}
			}
		},
	},
}

// generatedObjects are every probe's generated object, embedded so that the
// test binary checks them wherever it runs (in the kernel matrix too).
//
//go:embed *_bpfel.o
var generatedObjects embed.FS

// TestGoMirrorsC compares every mirror with each generated object that has
// its C side, and fails on a mirror no object has (the C was renamed).
func TestGoMirrorsC(t *testing.T) {
	objs, err := fs.Glob(generatedObjects, "*_bpfel.o")
	if err != nil || len(objs) == 0 {
		t.Fatalf("no generated objects (*_bpfel.o): %v", err)
	}
	seen := make(map[string]int)
	for _, path := range objs {
		b, err := generatedObjects.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		for _, m := range mirrors {
			if m.in != nil && !m.in(spec) {
				continue
			}
			seen[m.name]++
			t.Run(strings.TrimSuffix(path, "_bpfel.o")+"/"+m.name, func(t *testing.T) { m.check(t, spec) })
		}
	}
	for _, m := range mirrors {
		if seen[m.name] == 0 {
			t.Errorf("%s: in none of %v", m.name, objs)
		}
	}
}

func hasType[T btf.Type](spec *ebpf.CollectionSpec, name string) bool {
	var typ T
	return spec.Types.TypeByName(name, &typ) == nil
}

func enumOf(t *testing.T, spec *ebpf.CollectionSpec, name string) *btf.Enum {
	t.Helper()
	var e *btf.Enum
	if err := spec.Types.TypeByName(name, &e); err != nil {
		t.Fatalf("enum %s: %v (is it kept in the BTF with KEEP_TYPE?)", name, err)
	}
	return e
}

// sameEnum checks that the enumerators of e are exactly want.
func sameEnum(t *testing.T, e *btf.Enum, want map[string]uint64) {
	t.Helper()
	got := make(map[string]uint64, len(e.Values))
	for _, v := range e.Values {
		got[v.Name] = v.Value
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("enum %s is %v in C, %v in Go", e.Name, got, want)
	}
}

// namesEvery checks that a Go table indexed by the values of e has a
// non-empty entry for each of them but count (the number of values, when
// the enum has one) and no entry beyond.
func namesEvery(t *testing.T, e *btf.Enum, count string, table []string) {
	t.Helper()
	n := 0
	for _, v := range e.Values {
		if v.Name == count {
			if v.Value != uint64(len(table)) {
				t.Errorf("enum %s: %s = %d, the Go table has %d entries", e.Name, count, v.Value, len(table))
			}
			continue
		}
		n++
		if v.Value >= uint64(len(table)) || table[v.Value] == "" {
			t.Errorf("enum %s: %s = %d has no entry in the Go table %q", e.Name, v.Name, v.Value, table)
		}
	}
	if n != len(table) {
		t.Errorf("enum %s has %d values, the Go table %q has %d entries", e.Name, n, table, len(table))
	}
}

// sameLayout checks that a Go struct has the fields of a C struct, in
// order, named alike (sum_ns: SumNs) at the same offsets with the same
// sizes and array lengths, and the same size.
func sameLayout(t *testing.T, what string, c btf.Type, goType reflect.Type) {
	t.Helper()
	cs, ok := btf.UnderlyingType(c).(*btf.Struct)
	if !ok {
		t.Errorf("%s: value is %v, not a struct", what, c)
		return
	}
	if uint64(cs.Size) != uint64(goType.Size()) {
		t.Errorf("%s: struct %s is %d bytes, Go's %v %d", what, cs.Name, cs.Size, goType, goType.Size())
	}
	var fields []reflect.StructField
	for i := range goType.NumField() {
		if f := goType.Field(i); f.Name != "_" {
			fields = append(fields, f)
		}
	}
	if len(fields) != len(cs.Members) {
		t.Errorf("%s: struct %s has %d members, Go's %v %d fields", what, cs.Name, len(cs.Members), goType, len(fields))
		return
	}
	for i, m := range cs.Members {
		f := fields[i]
		size, err := btf.Sizeof(m.Type)
		if err != nil {
			t.Fatalf("%s: %s.%s: %v", what, cs.Name, m.Name, err)
		}
		if f.Name != goName(m.Name) || uint64(m.Offset.Bytes()) != uint64(f.Offset) || uint64(size) != uint64(f.Type.Size()) {
			t.Errorf("%s: %s.%s at %d (%d bytes), Go's %s at %d (%d bytes)",
				what, cs.Name, m.Name, m.Offset.Bytes(), size, f.Name, f.Offset, f.Type.Size())
		}
		if a, ok := btf.UnderlyingType(m.Type).(*btf.Array); ok && (f.Type.Kind() != reflect.Array || uint64(a.Nelems) != uint64(f.Type.Len())) {
			t.Errorf("%s: %s.%s has %d elements, Go's %s is %v", what, cs.Name, m.Name, a.Nelems, f.Name, f.Type)
		}
	}
}

// goName is the Go name of a C member: sum_ns is SumNs.
func goName(c string) string {
	var b strings.Builder
	for _, w := range strings.Split(c, "_") {
		if w != "" {
			b.WriteString(strings.ToUpper(w[:1]) + w[1:])
		}
	}
	return b.String()
}

func TestGoName(t *testing.T) {
	for c, want := range map[string]string{"sum_ns": "SumNs", "slots": "Slots", "max_ns": "MaxNs", "name": "Name", "_x": "X"} {
		if got := goName(c); got != want {
			t.Errorf("goName(%q) = %q, want %q", c, got, want)
		}
	}
}
