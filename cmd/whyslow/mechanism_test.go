package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/scenario"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/internal/tracefile"
)

// expectedMechanisms lists the mechanisms the environment says work on this
// kernel (WHYSLOW_EXPECT_MECHANISMS, set by make vmtest: "fentry,kprobe"),
// best first; empty on a host that does not say.
func expectedMechanisms() []string {
	var out []string
	for _, m := range strings.Split(os.Getenv("WHYSLOW_EXPECT_MECHANISMS"), ",") {
		if m = strings.TrimSpace(m); m != "" {
			out = append(out, m)
		}
	}
	return out
}

// Each rung of the ladder, forced with --mechanism, on a real run while
// this test's writers submit to a loop device and its queue freezes again
// and again: where the kernel allows the mechanism, the direct probes run
// on it and their own events must be there, recorded with that mechanism
// (every submit_bio_noacct call in the device's histogram, the freezes,
// the waits in queue enter); where it does not, they say why. tp_btf, the
// fallback, works everywhere: then nothing direct runs, and the off-CPU
// stacks must show the freezes and the queue-enter waits instead.
func TestMechanismOverride(t *testing.T) {
	scenario.RequireRoot(t)
	dev := scenario.LoopDevice(t, 64<<20)
	expected := expectedMechanisms()
	direct := []string{event.ProbeFreeze, event.ProbeQueueEnter, event.ProbeSubmitFn}
	for _, mech := range []string{"fentry", "kprobe", "tp_btf"} {
		t.Run(mech, func(t *testing.T) {
			trace := filepath.Join(t.TempDir(), "run.trace.gz")
			load := func() func() { _, stop := stall(t, dev); return stop }
			rep := diagnoseUnder(t, 3*time.Second, load, "--mechanism", mech, "--device", dev, "--record", trace)
			works := mech == "tp_btf" || slices.Contains(expected, mech)
			for _, p := range rep.Probes {
				if !slices.Contains(direct, p.Name) {
					continue
				}
				switch {
				case p.Status == "ok" && p.Mechanism == mech:
				case p.Status == "ok":
					t.Errorf("probe %s forced onto %s runs on %s", p.Name, mech, p.Mechanism)
				case works:
					t.Errorf("probe %s on %s must work here: %s", p.Name, mech, p.Reason)
				case !strings.Contains(p.Reason, mech):
					t.Errorf("probe %s unavailable without saying why %s failed: %q", p.Name, mech, p.Reason)
				}
			}
			if !sawSubmissions(rep, dev) {
				t.Errorf("--mechanism %s: no submissions seen on %s:\n%s", mech, dev, summary(rep))
			}
			tl, _, err := tracefile.ReadFile(trace)
			if err != nil {
				t.Fatal(err)
			}
			got := directSeen(tl, dev)
			t.Logf("--mechanism %s: direct events on %s: %+v", mech, dev, got)
			switch {
			case mech == "tp_btf":
				if len(got) > 0 {
					t.Errorf("--mechanism tp_btf: direct events recorded: %+v", got)
				}
				d := reportDevice(rep, dev)
				if d == nil || d.Freezes.Count == 0 || d.QueueWaits.Count == 0 {
					t.Errorf("--mechanism tp_btf: the off-CPU stacks show no freeze or queue-enter wait on %s:\n%s", dev, summary(rep))
				}
			case works:
				for _, what := range []string{"submit calls", "freezes", "queue waits"} {
					if got[what+" on "+mech] == 0 {
						t.Errorf("--mechanism %s: no %s on %s recorded by the %s probes (recorded: %+v)", mech, what, dev, mech, got)
					}
				}
				for k := range got {
					if !strings.HasSuffix(k, " on "+mech) {
						t.Errorf("--mechanism %s: %s", mech, k)
					}
				}
			}
		})
	}
}

// directSeen counts the direct probes' events on dev in a recorded run, by
// kind and mechanism: "submit calls on fentry" (calls in the device's
// submit_bio_noacct histogram), "freezes on kprobe", "queue waits on ...".
func directSeen(tl *timeline.Timeline, dev string) map[string]int {
	out := map[string]int{}
	add := func(what string, mech event.Mechanism, n int) {
		if n > 0 {
			out[what+" on "+string(mech)] += n
		}
	}
	for _, h := range tl.Devices {
		if h.Dev.Name == dev && h.SubmitCall.Count > 0 {
			// The histogram has no mechanism; the probe status says it.
			for _, p := range tl.Probes {
				if p.Name == event.ProbeSubmitFn {
					add("submit calls", p.Mechanism, int(h.SubmitCall.Count))
				}
			}
		}
	}
	for _, c := range tl.SubmitCalls {
		if c.Dev.Name == dev {
			add("slow submit calls", c.Mechanism, 1)
		}
	}
	for _, f := range tl.Freezes {
		if f.Dev.Name == dev {
			add("freezes", f.Mechanism, 1)
		}
	}
	for _, q := range tl.QueueEnters {
		if q.Dev.Name == dev {
			add("queue waits", q.Mechanism, 1)
		}
	}
	return out
}

func reportDevice(rep *report.Report, name string) *report.Device {
	for i := range rep.Devices {
		if rep.Devices[i].Name == name {
			return &rep.Devices[i]
		}
	}
	return nil
}
