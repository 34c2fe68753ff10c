package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/scenario"
)

// kernelAllows asks the running kernel directly, not through whyslow,
// what the direct probes need: a kprobe PMU (or kprobe_events), and an
// fentry program that loads (nil) or the error.
func kernelAllows(t *testing.T) (kprobes bool, fentry error) {
	t.Helper()
	for _, p := range []string{"/sys/bus/event_source/devices/kprobe/type", "/sys/kernel/tracing/kprobe_events", "/sys/kernel/debug/tracing/kprobe_events"} {
		if _, err := os.Stat(p); err == nil {
			kprobes = true
		}
	}
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	prog, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFEntry, AttachTo: "submit_bio_noacct", License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	}, ebpf.ProgramOptions{KernelTypes: kernel})
	if err == nil {
		prog.Close()
	}
	return kprobes, err
}

// `whyslow probes`, text and JSON, on the running kernel: where fentry
// programs load (the qemu matrix's kernels) every direct probe runs on
// fentry; where the kernel denies them and has no kprobes (this project's
// 6.18), every direct probe falls back to the probe that infers, and says
// both reasons. make vmtest keeps both outputs (probes.json makes its table).
func TestProbesCommand(t *testing.T) {
	if testing.Short() || os.Geteuid() != 0 {
		scenario.Skip(t, "needs root (and no -short): loads every probe")
	}
	kprobes, fentryErr := kernelAllows(t)
	t.Logf("this kernel: kprobe PMU %v, fentry load: %v", kprobes, fentryErr)
	var wantMech event.Mechanism
	var wantSkips []string
	switch {
	case fentryErr == nil:
		wantMech = event.MechFentry
	case errors.Is(fentryErr, unix.EPERM) && !kprobes:
		wantMech = event.MechTPBTF
		wantSkips = []string{"fentry: load denied (EPERM)", "kprobe: CONFIG_KPROBES not set (no kprobe PMU)"}
	default:
		scenario.Skip(t, "a kernel this test has no expectation for: kprobes %v, fentry %v", kprobes, fentryErr)
	}
	direct := []string{event.ProbeFreeze, event.ProbeQueueEnter, event.ProbeSubmitFn}

	js := run(t, "probes", "--format", "json")
	txt := run(t, "probes")
	if dir := os.Getenv("WHYSLOW_RECORD_DIR"); dir != "" {
		os.WriteFile(filepath.Join(dir, "probes.json"), []byte(js.stdout), 0o644)
		os.WriteFile(filepath.Join(dir, "probes.txt"), []byte(txt.stdout), 0o644)
	}
	for _, r := range []result{js, txt} {
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("whyslow probes: exit %d, stderr %q", r.code, r.stderr)
		}
	}

	var out struct{ Probes []event.ProbeStatus }
	if err := json.Unmarshal([]byte(js.stdout), &out); err != nil {
		t.Fatalf("--format json: %v\n%s", err, js.stdout)
	}
	seen := 0
	for _, st := range out.Probes {
		if !slices.Contains(direct, st.Name) {
			continue
		}
		seen++
		var skips []string
		for _, s := range st.Skipped {
			skips = append(skips, string(s.Mechanism)+": "+s.Reason)
		}
		if st.Status != event.StatusOK || st.Mechanism != wantMech || !slices.Equal(skips, wantSkips) {
			t.Errorf("json: %s %s on %q, skipped %q; want ok on %s, skipped %q", st.Name, st.Status, st.Mechanism, skips, wantMech, wantSkips)
		}
	}
	if seen != len(direct) {
		t.Errorf("json lists %d of the direct probes %v:\n%s", seen, direct, js.stdout)
	}

	rows := probeRows(txt.stdout)
	for _, name := range direct {
		row, ok := rows[name]
		if !ok {
			t.Errorf("text: no row for %s:\n%s", name, txt.stdout)
			continue
		}
		if row.mech != string(wantMech) || row.status != event.StatusOK {
			t.Errorf("text: %s %s on %s, want ok on %s", name, row.status, row.mech, wantMech)
		}
		var skips []string
		for _, l := range row.why {
			if m, reason, ok := strings.Cut(l, " skipped: "); ok {
				skips = append(skips, m+": "+reason)
			}
		}
		if !slices.Equal(skips, wantSkips) {
			t.Errorf("text: %s says skipped %q, want %q:\n%s", name, skips, wantSkips, txt.stdout)
		}
	}
}

type probeRow struct {
	mech, status string
	why          []string // the last column's lines, wrapped lines joined
}

// probeRows reads the table of `whyslow probes` by probe name.
func probeRows(table string) map[string]probeRow {
	rows := map[string]probeRow{}
	cur := ""
	for _, l := range strings.Split(table, "\n") {
		cells := strings.Split(l, "│")
		if len(cells) != 6 {
			continue // borders
		}
		// a line of the last column wrapped onto this one, indented
		wrapped := strings.HasPrefix(cells[4], "   ") && strings.TrimSpace(cells[4]) != ""
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if name := cells[1]; name != "" {
			if strings.ToUpper(name) == name {
				continue // the header
			}
			cur = name
			rows[cur] = probeRow{mech: cells[2], status: cells[3]}
		}
		if cur != "" {
			r := rows[cur]
			if wrapped && len(r.why) > 0 {
				r.why[len(r.why)-1] += " " + cells[4]
			} else {
				r.why = append(r.why, cells[4])
			}
			rows[cur] = r
		}
	}
	return rows
}
