package rules

import (
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/facts"
	"github.com/whyslow/whyslow/internal/gendoc"
	"github.com/whyslow/whyslow/internal/timeline"
)

// Every built-in rule says what it reads (the parser holds it to it).
func TestBuiltinRulesDeclareTheirFacts(t *testing.T) {
	files, err := fs.Glob(builtinFS, "builtin/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatal(err)
	}
	for _, f := range files {
		data, _ := fs.ReadFile(builtinFS, f)
		if !strings.Contains("\n"+string(data), "\nneeds:") && !strings.Contains("\n"+string(data), "\noptional:") {
			t.Errorf("%s declares neither needs nor optional", f)
		}
	}
}

func runWith(probes ...event.ProbeStatus) *facts.Run {
	return facts.Build(&timeline.Timeline{Probes: probes}, facts.Options{})
}

func okProbe(name string) event.ProbeStatus {
	return event.ProbeStatus{Name: name, Status: event.StatusOK}
}

func downProbe(name string) event.ProbeStatus {
	return event.ProbeStatus{Name: name, Status: event.StatusUnavailable, Reason: "rejected by the BPF verifier"}
}

// A rule whose needs no probe of the run supplied is not evaluated, with
// the probes and their reasons; the others are.
func TestNotEvaluated(t *testing.T) {
	set, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	all := func(except map[string]event.ProbeStatus) []event.ProbeStatus {
		var out []event.ProbeStatus
		for _, n := range timeline.ProbeNames() {
			if st, ok := except[n]; ok {
				out = append(out, st)
				continue
			}
			out = append(out, okProbe(n))
		}
		return out
	}
	inferred := okProbe(event.ProbeFreeze)
	inferred.InferredBy = event.ProbeOffCPU
	qeInferred := okProbe(event.ProbeQueueEnter)
	qeInferred.InferredBy = event.ProbeOffCPU
	tests := []struct {
		name string
		run  *facts.Run
		want map[string]string // rule -> substring of its reason
	}{
		{"every probe ran", runWith(all(nil)...), map[string]string{}},
		{"no probe status: nothing to tell", runWith(), map[string]string{}},
		{"offcpu down", runWith(all(map[string]event.ProbeStatus{event.ProbeOffCPU: downProbe(event.ProbeOffCPU)})...),
			map[string]string{"tag-starvation": "needs Device.TagWaits: offcpu unavailable (rejected by the BPF verifier)"}},
		{"offcpu and syscall down", runWith(all(map[string]event.ProbeStatus{event.ProbeOffCPU: downProbe(event.ProbeOffCPU),
			event.ProbeSyscall: downProbe(event.ProbeSyscall)})...),
			map[string]string{"tag-starvation": "needs Device.TagWaits: offcpu unavailable (rejected by the BPF verifier)",
				"noisy-neighbour":     "needs Device.Processes or Device.TagWaits: syscall unavailable",
				"unexplained-latency": "needs Run.Processes: syscall unavailable",
				"device-saturated":    "needs Device.Processes: syscall unavailable",
				"wbt-throttling":      "needs Device.Processes: syscall unavailable",
				"journal-commit-wait": "needs Device.Processes: syscall unavailable",
				"iocost":              "needs Device.StageMs: syscall unavailable",
				"memory-reclaim":      "needs Device.Processes: syscall unavailable"}},
		{"offcpu down, freeze and queueenter inferred by it", runWith(all(map[string]event.ProbeStatus{
			event.ProbeOffCPU: downProbe(event.ProbeOffCPU), event.ProbeFreeze: inferred, event.ProbeQueueEnter: qeInferred})...),
			map[string]string{
				"tag-starvation":     "offcpu unavailable",
				"queue-freeze-stall": "needs Device.QueueWaits or Device.Freezes: queueenter inferred by offcpu; offcpu unavailable",
				"uevent-freeze":      "needs Device.Freezes: freeze inferred by offcpu",
				"periodic-trigger":   "needs Device.Freezes",
			}},
		{"exec down", runWith(all(map[string]event.ProbeStatus{event.ProbeExec: downProbe(event.ProbeExec)})...),
			map[string]string{"periodic-trigger": "needs Command: exec unavailable"}},
		{"service not in the run", runWith(okProbe(event.ProbeOffCPU), okProbe(event.ProbeSubmit)),
			map[string]string{"slow-device": "service did not run", "periodic-trigger": "exec did not run",
				"uevent-freeze": "uevent did not run", "cgroup-throttle": "iolimits did not run",
				"iocost": "syscall did not run", "unexplained-latency": "syscall did not run",
				"wbt-throttling":   "syscall did not run",
				"dirty-throttling": "writeback did not run", "journal-commit-wait": "did not run",
				"memory-reclaim": "syscall did not run", "failing-device": "devfault did not run",
				"device-saturated": "syscall did not run"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := map[string]string{}
			for _, ne := range set.NotEvaluated(tt.run) {
				got[ne.Rule] = ne.Reason
			}
			for rule, want := range tt.want {
				if !strings.Contains(got[rule], want) {
					t.Errorf("%s: reason %q, want it to contain %q", rule, got[rule], want)
				}
			}
			for rule, why := range got {
				if _, ok := tt.want[rule]; !ok {
					t.Errorf("%s not evaluated (%s), want it evaluated", rule, why)
				}
			}
		})
	}
}

// A rule that is not evaluated gives no finding, even when its facts
// would match.
func TestEvaluateSkipsRulesNotEvaluated(t *testing.T) {
	set, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	run := runWith(downProbe(event.ProbeOffCPU), okProbe(event.ProbeService), okProbe(event.ProbeSubmit))
	dev := &facts.Device{Name: "sda"}
	for i := range 10 {
		dev.TagWaits = append(dev.TagWaits, facts.Span{Start: 0, End: time.Duration(50+i) * time.Millisecond, Kind: facts.KindTagWait, Comm: "fio"})
	}
	run.Devices = []*facts.Device{dev}
	findings, err := Evaluate(set, run)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range findings {
		if f.Rule == "tag-starvation" {
			t.Fatalf("tag-starvation fired without its probe: %+v", f)
		}
	}
	// The same facts on a run whose offcpu probe ran: it fires.
	run2 := runWith(okProbe(event.ProbeOffCPU), okProbe(event.ProbeService), okProbe(event.ProbeSubmit))
	run2.Devices = run.Devices
	findings, err = Evaluate(set, run2)
	if err != nil {
		t.Fatal(err)
	}
	fired := false
	for _, f := range findings {
		fired = fired || f.Rule == "tag-starvation"
	}
	if !fired {
		t.Fatalf("tag-starvation did not fire: %+v", findings)
	}
}

// The table of docs/rules.md#needs is facts.Suppliers:
// go test ./rules -run TestDocsSuppliers -update rewrites it.
func TestDocsSuppliers(t *testing.T) {
	var keys []string
	for k, ps := range facts.Suppliers {
		if len(ps) > 0 {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("| fact | supplied by |\n|---|---|\n")
	for _, k := range keys {
		ps := make([]string, len(facts.Suppliers[k]))
		for i, p := range facts.Suppliers[k] {
			ps[i] = "`" + p + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s |\n", k, strings.Join(ps, ", "))
	}
	gendoc.Check(t, docPath, "suppliers", b.String(), *update, "go test ./rules -run TestDocsSuppliers -update")
}
