package diagnose

import (
	"slices"
	"testing"
	"testing/fstest"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/rules"
)

func twoDevices() *timeline.Timeline {
	tl := &timeline.Timeline{Start: 0, End: event.Mono(10 * time.Second)}
	for i, name := range []string{"vda", "loop0"} {
		h := tl.Device(event.Device{Major: 7, Minor: uint32(i), Name: name})
		h.Service.Add(500_000)
	}
	tl.Sort()
	return tl
}

// A rule that fails while evaluated costs its own findings only: the
// others' are there, and the failure says which rule, where and on what.
func TestAnalyzeKeepsTheOtherRulesWhenOneFails(t *testing.T) {
	extra, err := rules.Load(fstest.MapFS{
		"r/always.yaml": {Data: []byte("id: always\ntitle: '{{.Device.Name}} seen'\nseverity: info\nscope: device\nwhen: Device.Service.Count > 0\nscore: '1'\n")},
		"r/broken.yaml": {Data: []byte("id: broken\ntitle: x\nseverity: warning\nscope: device\nwhen: Device.Stalls[5].Start > duration(\"1s\")\n")},
	}, "r")
	if err != nil {
		t.Fatal(err)
	}
	def, err := rules.Default()
	if err != nil {
		t.Fatal(err)
	}
	res, err := Analyze(twoDevices(), def.Merge(extra), nil)
	if err != nil {
		t.Fatalf("Analyze failed as a whole: %v", err)
	}
	var got []string
	for _, f := range res.Findings {
		got = append(got, f.Rule+" "+f.Title)
	}
	if want := []string{"always loop0 seen", "always vda seen"}; !slices.Equal(got, want) {
		t.Errorf("findings %q, want %q", got, want)
	}
	if len(res.RuleErrors) != 1 {
		t.Fatalf("rule errors %v, want the one of broken", res.RuleErrors)
	}
	e := res.RuleErrors[0]
	if e.Rule != "broken" || e.File != "r/broken.yaml" || e.Line != 5 || e.Device != "loop0" || e.Field != "when" || e.More != 1 {
		t.Errorf("rule error %+v", e)
	}
	if !slices.Equal(res.Devices, []string{"loop0", "vda"}) {
		t.Errorf("devices %v", res.Devices)
	}
}

// A run needs rules now (Rules) or once it has observed (RulesLater, the
// built-in ones compiled while the probes load); with neither, Check says so.
func TestCheckNeedsRules(t *testing.T) {
	later := func() (*rules.Set, error) { return rules.Default() }
	for _, tt := range []struct {
		name    string
		opts    Options
		noRules bool
	}{
		{"none", Options{Duration: time.Second}, true},
		{"rules", Options{Duration: time.Second, Rules: &rules.Set{}}, false},
		{"later", Options{Duration: time.Second, RulesLater: later}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Check(tt.opts) // past the rules, as non-root it fails on the privilege
			if got := err != nil && err.Error() == "no rules loaded"; got != tt.noRules {
				t.Errorf("Check: %v; want \"no rules loaded\": %v", err, tt.noRules)
			}
		})
	}
}
