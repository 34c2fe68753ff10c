package probes

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
)

// fakeCaps answers kernelCaps from lists.
type fakeCaps struct {
	btf      []string
	kallsyms []string // nil: kallsyms unreadable
	kprobes  bool
}

func (f fakeCaps) FuncInBTF(name string) bool { return slices.Contains(f.btf, name) }
func (f fakeCaps) FuncInKallsyms(name string) (bool, bool) {
	if f.kallsyms == nil {
		return false, false
	}
	return slices.Contains(f.kallsyms, name), true
}
func (f fakeCaps) KprobePMU() bool { return f.kprobes }

// fakeStarts says how each mechanism's start ends: nil error = it runs.
type fakeStarts map[event.Mechanism]error

// ladder builds the three rungs of a direct probe with one role whose
// candidates are funcs, recording what each start was given.
func (fs fakeStarts) ladder(funcs []string, got *[]string) []ladderRung {
	rs := directRungs([][]string{funcs}, func(m event.Mechanism, fns []string) (Running, error) {
		*got = append(*got, string(m)+" "+strings.Join(fns, ","))
		if err := fs[m]; err != nil {
			return nil, err
		}
		return inferred{}, nil
	})
	return append(rs, ladderRung{mech: event.MechTPBTF, note: "inferred", start: func([]string) (Running, error) {
		*got = append(*got, "tp_btf")
		if err := fs[event.MechTPBTF]; err != nil {
			return nil, err
		}
		return inferred{}, nil
	}})
}

func TestClimb(t *testing.T) {
	both := []string{"__bio_queue_enter", "blk_queue_enter"}
	eperm := loadErr(fmt.Errorf("loading objects: %w", unix.EPERM))
	noPMU := attachErr(fmt.Errorf("creating tracefs event: %w", unix.ENOENT))
	tests := []struct {
		name      string
		caps      fakeCaps
		starts    fakeStarts
		force     event.Mechanism
		wantMech  event.Mechanism // "" = unavailable
		wantTried []string
		wantSkip  []string // "mech: reason"
	}{
		{
			name:      "6.x host with fentry",
			caps:      fakeCaps{btf: both, kallsyms: both, kprobes: true},
			wantMech:  event.MechFentry,
			wantTried: []string{"fentry __bio_queue_enter"},
		},
		{
			name:      "fentry denied: kprobe",
			caps:      fakeCaps{btf: both, kallsyms: both, kprobes: true},
			starts:    fakeStarts{event.MechFentry: eperm},
			wantMech:  event.MechKprobe,
			wantTried: []string{"fentry __bio_queue_enter", "kprobe __bio_queue_enter"},
			wantSkip:  []string{"fentry: load denied (EPERM)"},
		},
		{
			name:      "this lab: no fentry, no kprobes: the fallback",
			caps:      fakeCaps{btf: both, kallsyms: both, kprobes: false},
			starts:    fakeStarts{event.MechFentry: eperm, event.MechKprobe: noPMU},
			wantMech:  event.MechTPBTF,
			wantTried: []string{"fentry __bio_queue_enter", "kprobe __bio_queue_enter", "tp_btf"},
			wantSkip:  []string{"fentry: load denied (EPERM)", "kprobe: CONFIG_KPROBES not set (no kprobe PMU)"},
		},
		{
			name:      "5.10: only blk_queue_enter",
			caps:      fakeCaps{btf: []string{"blk_queue_enter"}, kallsyms: []string{"blk_queue_enter"}, kprobes: true},
			wantMech:  event.MechFentry,
			wantTried: []string{"fentry blk_queue_enter"},
		},
		{
			name:      "inlined function is passed over",
			caps:      fakeCaps{btf: both, kallsyms: []string{"blk_queue_enter"}, kprobes: true},
			wantMech:  event.MechFentry,
			wantTried: []string{"fentry blk_queue_enter"},
		},
		{
			name:      "kallsyms unreadable: BTF decides",
			caps:      fakeCaps{btf: both, kprobes: true},
			wantMech:  event.MechFentry,
			wantTried: []string{"fentry __bio_queue_enter"},
		},
		{
			name:      "no function at all: straight to the fallback",
			caps:      fakeCaps{btf: nil, kallsyms: []string{"x"}},
			wantMech:  event.MechTPBTF,
			wantTried: []string{"tp_btf"},
			wantSkip: []string{
				"fentry: function __bio_queue_enter not in BTF, blk_queue_enter not in BTF",
				"kprobe: function __bio_queue_enter not in BTF, blk_queue_enter not in BTF",
			},
		},
		{
			name:      "verifier rejection is reported as such",
			caps:      fakeCaps{btf: both, kallsyms: both, kprobes: true},
			starts:    fakeStarts{event.MechFentry: eperm, event.MechKprobe: loadErr(errVerifier)},
			wantMech:  event.MechTPBTF,
			wantTried: []string{"fentry __bio_queue_enter", "kprobe __bio_queue_enter", "tp_btf"},
			wantSkip:  []string{"fentry: load denied (EPERM)", "kprobe: " + errReason(loadErr(errVerifier))},
		},
		{
			name:      "forced kprobe works",
			caps:      fakeCaps{btf: both, kallsyms: both, kprobes: true},
			force:     event.MechKprobe,
			wantMech:  event.MechKprobe,
			wantTried: []string{"kprobe __bio_queue_enter"},
			wantSkip:  []string{"fentry: not tried: --mechanism kprobe"},
		},
		{
			name:      "forced kprobe fails: no fallback",
			caps:      fakeCaps{btf: both, kallsyms: both},
			starts:    fakeStarts{event.MechKprobe: noPMU},
			force:     event.MechKprobe,
			wantTried: []string{"kprobe __bio_queue_enter"},
			wantSkip: []string{"fentry: not tried: --mechanism kprobe", "kprobe: CONFIG_KPROBES not set (no kprobe PMU)",
				"tp_btf: not tried: --mechanism kprobe"},
		},
		{
			name:      "attach failure with kprobes present names the error",
			caps:      fakeCaps{btf: both, kallsyms: both, kprobes: true},
			starts:    fakeStarts{event.MechFentry: eperm, event.MechKprobe: noPMU},
			wantMech:  event.MechTPBTF,
			wantTried: []string{"fentry __bio_queue_enter", "kprobe __bio_queue_enter", "tp_btf"},
			wantSkip: []string{"fentry: load denied (EPERM)",
				"kprobe: attach failed: not found in this kernel (missing tracepoint, function or BTF): creating tracefs event: no such file or directory"},
		},
		{
			name:      "nothing works",
			caps:      fakeCaps{btf: both, kallsyms: both},
			starts:    fakeStarts{event.MechFentry: eperm, event.MechKprobe: noPMU, event.MechTPBTF: attachErr(errors.New("tracepoint gone"))},
			wantTried: []string{"fentry __bio_queue_enter", "kprobe __bio_queue_enter", "tp_btf"},
			wantSkip: []string{"fentry: load denied (EPERM)", "kprobe: CONFIG_KPROBES not set (no kprobe PMU)",
				"tp_btf: attach failed: tracepoint gone"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tried []string
			run, st := climb(queueEnterProbe{}.Decl(), tt.starts.ladder(both, &tried), tt.caps, tt.force)
			if st.Mechanism != tt.wantMech {
				t.Errorf("mechanism %q, want %q (status %+v)", st.Mechanism, tt.wantMech, st)
			}
			if (run != nil) != (tt.wantMech != "") || (st.Status == event.StatusOK) != (tt.wantMech != "") {
				t.Errorf("running %v, status %q, want running: %v", run != nil, st.Status, tt.wantMech != "")
			}
			if tt.wantMech == "" && st.Reason == "" {
				t.Error("unavailable without a reason")
			}
			if !slices.Equal(tried, tt.wantTried) {
				t.Errorf("tried %q, want %q", tried, tt.wantTried)
			}
			var skips []string
			for _, s := range st.Skipped {
				skips = append(skips, string(s.Mechanism)+": "+s.Reason)
			}
			if !slices.Equal(skips, tt.wantSkip) {
				t.Errorf("skipped\n %q\nwant\n %q", skips, tt.wantSkip)
			}
		})
	}
}

// errVerifier is what a verifier rejection looks like; the real verifier
// is exercised by the load tests in direct_test.go.
var errVerifier = &ebpf.VerifierError{Cause: unix.EACCES, Log: []string{"0: R1 invalid mem access 'scalar'", "processed 3 insns"}}

func TestResolveFuncsTwoRoles(t *testing.T) {
	r := ladderRung{funcs: [][]string{freezeStartFuncs, unfreezeFuncs}}
	tests := []struct {
		name string
		caps fakeCaps
		want []string
		why  string
	}{
		{"6.18: wrapper inlined", fakeCaps{
			btf:      []string{"__blk_freeze_queue_start", "blk_freeze_queue_start", "__blk_mq_unfreeze_queue"},
			kallsyms: []string{"blk_freeze_queue_start", "__blk_mq_unfreeze_queue"}},
			[]string{"blk_freeze_queue_start", "__blk_mq_unfreeze_queue"}, ""},
		{"5.10", fakeCaps{
			btf:      []string{"blk_freeze_queue_start", "blk_mq_unfreeze_queue"},
			kallsyms: []string{"blk_freeze_queue_start", "blk_mq_unfreeze_queue"}},
			[]string{"blk_freeze_queue_start", "blk_mq_unfreeze_queue"}, ""},
		{"no unfreeze", fakeCaps{btf: []string{"blk_freeze_queue_start"}}, nil,
			"function __blk_mq_unfreeze_queue not in BTF, blk_mq_unfreeze_queue not in BTF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := resolveFuncs(r, tt.caps)
			if !slices.Equal(got, tt.want) || why != tt.why {
				t.Errorf("got %q, %q; want %q, %q", got, why, tt.want, tt.why)
			}
		})
	}
}

func TestParseMechanism(t *testing.T) {
	ps := []Probe{queueEnterProbe{}, freezeProbe{}, submitFnProbe{}, submitProbe{}}
	tests := []struct {
		in      []string
		want    string // String() of the choice
		wantErr string
	}{
		{in: nil, want: ""},
		{in: []string{"kprobe"}, want: "kprobe"},
		{in: []string{"freeze=kprobe", "queueenter=fentry"}, want: "freeze=kprobe,queueenter=fentry"},
		{in: []string{"fentry,freeze=kprobe"}, want: "fentry,freeze=kprobe"},
		{in: []string{"kprobes"}, wantErr: `unknown mechanism "kprobes"`},
		{in: []string{"=kprobe"}, wantErr: "no probe name"},
		{in: []string{"nosuch=kprobe"}, wantErr: `no probe "nosuch"`},
		{in: []string{"submit=kprobe"}, wantErr: "single mechanism"},
		{in: []string{"freeze=netlink"}, wantErr: "offers fentry, kprobe, tp_btf"},
		{in: []string{"netlink"}, wantErr: "no probe offers it"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.in, " "), func(t *testing.T) {
			m, err := ParseMechanism(tt.in)
			if err == nil {
				err = m.Check(ps)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || m.String() != tt.want {
				t.Fatalf("got %q, %v; want %q", m.String(), err, tt.want)
			}
		})
	}
	m, _ := ParseMechanism([]string{"kprobe", "freeze=fentry"})
	if got := m.For(freezeProbe{}.Decl()); got != event.MechFentry {
		t.Errorf("For(freeze) = %q, want fentry", got)
	}
	if got := m.For(queueEnterProbe{}.Decl()); got != event.MechKprobe {
		t.Errorf("For(queueenter) = %q, want kprobe", got)
	}
	if got := m.For(sysfsProbe{}.Decl()); got != "" {
		t.Errorf("For(sysfs) = %q, want none: it has no kprobe", got)
	}
}

func TestFromProbed(t *testing.T) {
	fr := func(syms ...string) []event.Frame {
		var out []event.Frame
		for _, s := range syms {
			out = append(out, event.Frame{Symbol: s})
		}
		return out
	}
	starts := []string{"blk_freeze_queue_start", "blk_mq_freeze_queue"}
	for _, tt := range []struct {
		name     string
		in, want []event.Frame
	}{
		{"trampoline named wrongly", fr("handshake_exit", "handshake_exit", "blk_freeze_queue_start", "blk_mq_freeze_queue", "queue_attr_store"),
			fr("blk_freeze_queue_start", "blk_mq_freeze_queue", "queue_attr_store")},
		{"only the caller probed", fr("bpf_prog_x", "blk_mq_freeze_queue", "elevator_change"), fr("blk_mq_freeze_queue", "elevator_change")},
		{"no probed frame", fr("a", "b"), fr("a", "b")},
		{"empty", nil, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := fromProbed(tt.in, starts); !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// btfWithFuncs is a kernel BTF that describes the named functions only.
func btfWithFuncs(t *testing.T, names ...string) *btf.Spec {
	t.Helper()
	var types []btf.Type
	for _, n := range names {
		types = append(types, &btf.Func{Name: n, Type: &btf.FuncProto{Return: (*btf.Void)(nil)}, Linkage: btf.GlobalFunc})
	}
	b, err := btf.NewBuilder(types, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// The reasons a host gives before loading anything, from the kernel's
// answers injected: kprobes need a kprobe PMU (or kprobe_events); fentry is
// denied when the first fentry load of the process, on the first candidate
// the BTF has, fails with EPERM. This host (6.18, no CONFIG_KPROBES, fentry
// refused) gives exactly the two reasons below.
func TestHostCapsPrecheck(t *testing.T) {
	const noPMU, denied = "CONFIG_KPROBES not set (no kprobe PMU)", "load denied (EPERM)"
	kernel := btfWithFuncs(t, "submit_bio_noacct", "__bio_queue_enter")
	funcs := [][]string{{"generic_make_request", "submit_bio_noacct"}}
	sysfs := func(files ...string) string {
		dir := t.TempDir()
		for _, f := range files {
			p := filepath.Join(dir, f)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte("6\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	tests := []struct {
		name   string
		mech   event.Mechanism
		sysfs  string
		load   error
		funcs  [][]string
		want   string
		loaded []string // functions the fentry load was asked for
	}{
		{"kprobe without a kprobe PMU", event.MechKprobe, sysfs(), nil, funcs, noPMU, nil},
		{"kprobe PMU", event.MechKprobe, sysfs("bus/event_source/devices/kprobe/type"), nil, funcs, "", nil},
		{"tracefs kprobe_events", event.MechKprobe, sysfs("kernel/tracing/kprobe_events"), nil, funcs, "", nil},
		{"debugfs kprobe_events", event.MechKprobe, sysfs("kernel/debug/tracing/kprobe_events"), nil, funcs, "", nil},
		{"fentry denied", event.MechFentry, sysfs(), fmt.Errorf("load program: %w", unix.EPERM), funcs, denied, []string{"submit_bio_noacct"}},
		{"fentry refused otherwise: the real load says why", event.MechFentry, sysfs(), fmt.Errorf("load program: %w", unix.EINVAL), funcs, "", []string{"submit_bio_noacct"}},
		{"fentry loads", event.MechFentry, sysfs(), nil, funcs, "", []string{"submit_bio_noacct"}},
		{"fentry, no candidate in BTF: resolving says why", event.MechFentry, sysfs(), unix.EPERM, [][]string{{"blk_queue_enter"}}, "", nil},
		{"tp_btf", event.MechTPBTF, sysfs(), unix.EPERM, nil, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var loaded []string
			c := hostCaps{kernel: kernel, procfs: t.TempDir(), sysfs: tt.sysfs, fentry: new(fentryOnce),
				fentryLoad: func(fn string) error { loaded = append(loaded, fn); return tt.load }}
			if got := c.precheck(tt.mech, tt.funcs); got != tt.want {
				t.Errorf("precheck(%s) = %q, want %q", tt.mech, got, tt.want)
			}
			if !slices.Equal(loaded, tt.loaded) {
				t.Errorf("fentry loads on %q, want %q", loaded, tt.loaded)
			}
		})
	}

	t.Run("one fentry load per process", func(t *testing.T) {
		n := 0
		c := hostCaps{kernel: kernel, sysfs: sysfs(), fentry: new(fentryOnce),
			fentryLoad: func(string) error { n++; return unix.EPERM }}
		for _, fs := range [][]string{{"submit_bio_noacct"}, {"__bio_queue_enter"}, {"submit_bio_noacct"}} {
			if got := c.precheck(event.MechFentry, [][]string{fs}); got != denied {
				t.Errorf("precheck on %v = %q, want %q", fs, got, denied)
			}
		}
		if n != 1 {
			t.Errorf("%d fentry loads, want 1", n)
		}
	})

	// The whole ladder on such a host: both direct rungs skipped with
	// these reasons, before any of their programs is loaded, and the
	// inferred rung runs.
	t.Run("ladder on this host", func(t *testing.T) {
		c := hostCaps{kernel: kernel, procfs: t.TempDir(), sysfs: sysfs(), fentry: new(fentryOnce),
			fentryLoad: func(string) error { return fmt.Errorf("load program: %w", unix.EPERM) }}
		var tried []string
		_, st := climb(submitFnProbe{}.Decl(), fakeStarts{}.ladder([]string{"submit_bio_noacct"}, &tried), c, "")
		var skips []string
		for _, s := range st.Skipped {
			skips = append(skips, string(s.Mechanism)+": "+s.Reason)
		}
		if want := []string{"fentry: " + denied, "kprobe: " + noPMU}; st.Mechanism != event.MechTPBTF || !slices.Equal(skips, want) {
			t.Errorf("runs on %q, skipped %q; want tp_btf, skipped %q", st.Mechanism, skips, want)
		}
		if !slices.Equal(tried, []string{"tp_btf"}) {
			t.Errorf("started %q, want only tp_btf: the prechecks spare the loads", tried)
		}
	})
}
