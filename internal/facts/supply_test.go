package facts

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// Every exported field and method of Run and Device is in Suppliers, and
// every entry is one of them (or Command), naming real probes.
func TestSuppliersCoverTheFacts(t *testing.T) {
	want := map[string]bool{"Command": true}
	for _, typ := range []reflect.Type{reflect.TypeFor[Run](), reflect.TypeFor[Device]()} {
		for i := range typ.NumField() {
			if f := typ.Field(i); f.IsExported() {
				want[FactOf(typ, f.Name)] = true
			}
		}
		pt := reflect.PointerTo(typ)
		for i := range pt.NumMethod() {
			want[FactOf(pt, pt.Method(i).Name)] = true
		}
	}
	for k := range want {
		if _, ok := Suppliers[k]; !ok {
			t.Errorf("fact %s has no entry in Suppliers: say which probes supply it (none: from the run itself)", k)
		}
	}
	probes := timeline.ProbeNames()
	for k, ps := range Suppliers {
		if !want[k] {
			t.Errorf("Suppliers has %s, which is no field or method of Run or Device", k)
		}
		for _, p := range ps {
			if !slices.Contains(probes, p) {
				t.Errorf("fact %s: supplier %q is no probe", k, p)
			}
		}
	}
}

func TestMissing(t *testing.T) {
	ok := func(name string) event.ProbeStatus { return event.ProbeStatus{Name: name, Status: event.StatusOK} }
	down := func(name, why string) event.ProbeStatus {
		return event.ProbeStatus{Name: name, Status: event.StatusUnavailable, Reason: why}
	}
	inferred := ok(event.ProbeQueueEnter)
	inferred.InferredBy = event.ProbeOffCPU
	tests := []struct {
		name   string
		probes []event.ProbeStatus
		fact   string
		want   string // "" or a substring of the reason
	}{
		{"no status: unknown, so there", nil, "Device.TagWaits", ""},
		{"a supplier ran", []event.ProbeStatus{ok(event.ProbeOffCPU)}, "Device.TagWaits", ""},
		{"from the run itself", []event.ProbeStatus{ok(event.ProbeExec)}, "Device.Name", ""},
		{"its probe unavailable", []event.ProbeStatus{down(event.ProbeOffCPU, "verifier")}, "Device.TagWaits", "offcpu unavailable (verifier)"},
		{"its probe not in the run", []event.ProbeStatus{ok(event.ProbeExec)}, "Device.SubmitCalls", "submitfn did not run"},
		{"one of two suppliers is enough", []event.ProbeStatus{down(event.ProbeOffCPU, "x"), ok(event.ProbeQueueEnter)}, "Device.QueueWaits", ""},
		{"an inferred rung measures nothing", []event.ProbeStatus{inferred, down(event.ProbeOffCPU, "x")}, "Device.QueueWaits", "queueenter inferred by offcpu, offcpu unavailable (x)"},
		{"command facts come from exec", []event.ProbeStatus{down(event.ProbeExec, "no BTF")}, "Command", "exec unavailable"},
		{"no such fact", nil, "Device.Bogus", "no fact"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := strings.Join(Missing(&Run{probes: tt.probes}, tt.fact), ", ")
			if (got == "") != (tt.want == "") || !strings.Contains(got, tt.want) {
				t.Errorf("Missing(%s) = %q, want %q", tt.fact, got, tt.want)
			}
		})
	}
}
