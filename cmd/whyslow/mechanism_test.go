package main

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/scenario"
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

// Each rung of the ladder, forced with --mechanism, on a real run: the
// direct probes run on it where the kernel allows it (and then the run
// sees the writer's I/O), and say why not where it does not; tp_btf, the
// fallback, works everywhere.
func TestMechanismOverride(t *testing.T) {
	scenario.RequireRoot(t)
	dev := scenario.LoopDevice(t, 64<<20)
	// Long enough for the three runs even under qemu's emulation; the cleanup stops it.
	scenario.Writer(t, dev, 15*time.Minute)
	time.Sleep(time.Second)
	expected := expectedMechanisms()
	direct := []string{"freeze", "queueenter", "submitfn"}
	for _, mech := range []string{"fentry", "kprobe", "tp_btf"} {
		t.Run(mech, func(t *testing.T) {
			rep := diagnoseJSON(t, "--duration", "3s", "--mechanism", mech, "--device", dev)
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
		})
	}
}
