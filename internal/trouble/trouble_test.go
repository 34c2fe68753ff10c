package trouble

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

const s = event.Mono(time.Second)

func TestArming(t *testing.T) {
	type sig struct {
		src Source
		at  event.Mono
	}
	tests := []struct {
		name    string
		signals []sig
		end     event.Mono
		want    []Interval
		armedAt map[event.Mono]bool
	}{
		{name: "none", end: 10 * s, armedAt: map[event.Mono]bool{5 * s: false}},
		{name: "one signal holds 5 s", signals: []sig{{PSIIO, 2 * s}}, end: 20 * s,
			want:    []Interval{{From: 2 * s, To: 7 * s, By: PSIIO, Signals: 1}},
			armedAt: map[event.Mono]bool{1 * s: false, 2 * s: true, 7 * s: true, 8 * s: false}},
		{name: "signals within hold extend", signals: []sig{{PSIIO, 2 * s}, {DiskBusy, 6 * s}, {SlowSubmit, 10 * s}}, end: 30 * s,
			want:    []Interval{{From: 2 * s, To: 15 * s, By: PSIIO, Signals: 3}},
			armedAt: map[event.Mono]bool{14 * s: true, 16 * s: false}},
		{name: "a gap longer than hold disarms", signals: []sig{{PSIIO, 1 * s}, {DiskBusy, 7 * s}}, end: 30 * s,
			want: []Interval{{From: 1 * s, To: 6 * s, By: PSIIO, Signals: 1}, {From: 7 * s, To: 12 * s, By: DiskBusy, Signals: 1}}},
		{name: "cut at the end", signals: []sig{{PSIMemory, 8 * s}}, end: 10 * s,
			want: []Interval{{From: 8 * s, To: 10 * s, By: PSIMemory, Signals: 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := Arming{Hold: 5 * time.Second}
			for _, g := range tt.signals {
				a.Signal(g.src, g.at)
			}
			got := a.Intervals(tt.end)
			if len(got) != len(tt.want) {
				t.Fatalf("intervals %+v, want %+v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("interval %d: %+v, want %+v", i, got[i], tt.want[i])
				}
			}
			for at, want := range tt.armedAt {
				if a.Armed(at) != want {
					t.Errorf("Armed(%v) = %v, want %v", time.Duration(at), !want, want)
				}
			}
		})
	}
}

func TestCovered(t *testing.T) {
	ivs := []Interval{{From: 2 * s, To: 4 * s}, {From: 10 * s, To: 12 * s}}
	tests := []struct {
		start, end event.Mono
		want       bool
	}{
		{0, 1 * s, false}, {1 * s, 2 * s, true}, {3 * s, 3 * s, true}, {5 * s, 9 * s, false}, {0, 20 * s, true}, {12 * s, 13 * s, true}, {13 * s, 14 * s, false},
	}
	for _, tt := range tests {
		if got := Covered(ivs, tt.start, tt.end); got != tt.want {
			t.Errorf("Covered(%v-%v) = %v, want %v", time.Duration(tt.start), time.Duration(tt.end), got, tt.want)
		}
	}
}

func TestParsePSI(t *testing.T) {
	tests := []struct {
		name, text  string
		some, full  time.Duration
		wantErrPart string
	}{
		{name: "io", text: "some avg10=0.00 avg60=0.10 avg300=0.05 total=12345\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=678\n",
			some: 12345 * time.Microsecond, full: 678 * time.Microsecond},
		{name: "no full", text: "some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n", some: 5 * time.Microsecond},
		{name: "no total", text: "some avg10=0.00\n", wantErrPart: "no total"},
		{name: "bad total", text: "some total=x\n", wantErrPart: "bad total"},
		{name: "empty", text: "", wantErrPart: "no \"some\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			some, full, err := parsePSI(tt.text)
			if tt.wantErrPart != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErrPart) {
					t.Fatalf("err %v, want one with %q", err, tt.wantErrPart)
				}
				return
			}
			if err != nil || some != tt.some || full != tt.full {
				t.Fatalf("got %v %v %v, want %v %v", some, full, err, tt.some, tt.full)
			}
		})
	}
}

func TestBusyDisks(t *testing.T) {
	before := map[string]uint64{"loop0": 1000, "sda": 1000, "sdb": 1000}
	after := map[string]uint64{"loop0": 1950, "sda": 1500, "sdb": 500, "new": 5000}
	names, pct := busyDisks(before, after, time.Second, 0.9)
	if len(names) != 1 || names[0] != "loop0" || pct[0] < 94.9 || pct[0] > 95.1 {
		t.Fatalf("busy %v %v, want loop0 at 95%%", names, pct)
	}
}

// Without /proc/pressure (a kernel without PSI, or psi=0) the PSI
// sources are off and say why; the others still work.
func TestNoPSI(t *testing.T) {
	proc, sys := t.TempDir(), t.TempDir()
	if err := os.MkdirAll(filepath.Join(sys, "block"), 0o755); err != nil {
		t.Fatal(err)
	}
	w := New(Config{ProcFS: proc, SysFS: sys, Hold: time.Second})
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	w.Observe(event.SlowSubmit{Latency: 20 * time.Millisecond, Dev: event.Device{Name: "loop0"}})
	now, _ := event.Now()
	if !w.Armed(now) {
		t.Error("not armed right after a slow submission")
	}
	sum := w.Stop(now)
	for _, st := range sum.Sources {
		if st.Source == PSIIO && (st.On || !strings.Contains(st.Reason, "psi=0")) {
			t.Errorf("psi_io: %+v, want off with the reason", st)
		}
	}
	if sum.First[SlowSubmit] == 0 || sum.First[SlowSubmit] > now {
		t.Errorf("first slow submission at %d, want the signal's time (≤ %d)", sum.First[SlowSubmit], now)
	}
	if sum.PSI.Known || sum.Counts[SlowSubmit] != 1 || len(sum.Intervals) != 1 || sum.Intervals[0].By != SlowSubmit {
		t.Errorf("summary %+v", sum)
	}
}

// As root with PSI on, the kernel takes both triggers (as unprivileged
// ones, 2 s windows, where CAP_SYS_RESOURCE is missing, as on this
// project's host) and the totals are read. That a real stall fires them is
// checked by cmd/whyslow's TestTroubleShadow on a throttled device.
func TestPSITriggersAccepted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("PSI triggers need root with a 1 s window")
	}
	if _, err := os.Stat("/proc/pressure/io"); err != nil {
		t.Skip("no PSI on this kernel")
	}
	w := New(Config{BusyEvery: -1})
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	now, _ := event.Now()
	sum := w.Stop(now)
	for _, st := range sum.Sources {
		if (st.Source == PSIIO || st.Source == PSIMemory) && !st.On {
			t.Errorf("%s off: %s", st.Source, st.Reason)
		}
	}
	if !sum.PSI.Known {
		t.Error("PSI totals not read")
	}
}
