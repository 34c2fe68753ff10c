package bench

import (
	"io"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/whyslow/whyslow/diagnose"
	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/synth"
)

// stormSizes are the sizes of the storm benchmarks: adversarial runs, so
// 200k and 1M events (the target: 1M analyzed in under 10 s and 1 GB).
var stormSizes = []int{200_000, 1_000_000}

// BenchmarkStormFreezes measures the analysis (facts, rules, text report)
// of synth.StormFreezes: overlapping queue freezes and waits on one device.
func BenchmarkStormFreezes(b *testing.B) { benchStorm(b, synth.StormFreezes) }

// BenchmarkStormPeriodic measures the analysis of synth.StormPeriodic:
// thousands of periodic commands, each followed by uevents.
func BenchmarkStormPeriodic(b *testing.B) { benchStorm(b, synth.StormPeriodic) }

// BenchmarkStormExits measures the analysis of synth.StormExits: an exit
// flood from reused pids.
func BenchmarkStormExits(b *testing.B) { benchStorm(b, synth.StormExits) }

func benchStorm(b *testing.B, s synth.Storm) {
	set := defaultRules(b)
	// The other benchmarks' inputs would count in the storm's peak heap.
	cacheMu.Lock()
	cachedN, cachedTL, cachedRun, cachedEvent = 0, nil, nil, nil
	cacheMu.Unlock()
	for _, n := range stormSizes {
		b.Run(sizeName(n), func(b *testing.B) {
			tl := synth.StormTimeline(s, n)
			runtime.GC()
			peak := watchHeap()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if err := analyze(tl, set, io.Discard); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			reportRate(b, n)
			b.ReportMetric(peak()/(1<<20), "peak-heap-MiB")
		})
	}
}

// watchHeap samples the bytes of live and not yet swept heap objects until
// the returned function is called, which gives the most it saw: an upper
// bound of what the analysis holds at once, the input timeline included.
func watchHeap() func() float64 {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var mu sync.Mutex
	most := 0.0
	read := func() {
		metrics.Read(sample)
		mu.Lock()
		most = max(most, float64(sample[0].Value.Uint64()))
		mu.Unlock()
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			read()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() float64 {
		close(done)
		<-stopped
		read()
		mu.Lock()
		defer mu.Unlock()
		return most
	}
}

// The storms end, in every report format, with the outcome a user needs;
// how long they take is for the benchmarks to say.
func TestStormsFinish(t *testing.T) {
	n := 200_000
	if testing.Short() {
		n = 20_000
	}
	set := defaultRules(t)
	for _, s := range synth.Storms {
		t.Run(string(s), func(t *testing.T) {
			tl := synth.StormTimeline(s, n)
			res, err := diagnose.Analyze(tl, set, nil)
			if err != nil {
				t.Fatal(err)
			}
			rep := report.Build(res.Timeline, res.Run, res.Findings, report.Meta{Version: "test", Duration: tl.Duration()})
			for name, render := range map[string]func(io.Writer) error{
				"text":     func(w io.Writer) error { return report.Text(w, rep, report.TextOptions{}) },
				"json":     func(w io.Writer) error { return report.JSON(w, rep) },
				"markdown": func(w io.Writer) error { return report.Markdown(w, rep) },
				"html":     func(w io.Writer) error { return report.HTML(w, rep, res.Run) },
			} {
				if err := render(io.Discard); err != nil {
					t.Errorf("%s: %v", name, err)
				}
			}
			if len(res.Findings) == 0 {
				t.Fatal("no finding")
			}
			top := res.Findings[0]
			switch s {
			case synth.StormFreezes:
				if top.Rule != "queue-freeze-stall" || !strings.Contains(strings.Join(top.Devices, ","), "loop0") {
					t.Errorf("top finding %s on %v, want queue-freeze-stall on loop0", top.Rule, top.Devices)
				}
				if d := res.Run.Find("loop0"); d == nil || len(d.QueueWaits) < n/6 {
					t.Errorf("the queue waits are not named for loop0 through the freezes: %+v", d)
				}
			case synth.StormPeriodic:
				triggers := 0
				for _, f := range res.Findings {
					if f.Trigger != nil {
						triggers++
					}
				}
				if triggers < 100 {
					t.Errorf("%d findings with a trigger among %d, want the periodic commands", triggers, len(res.Findings))
				}
			case synth.StormExits:
				if len(res.Run.Commands) != 1 || res.Run.Commands[0].Count < n/20 {
					t.Fatalf("commands %+v", res.Run.Commands)
				}
				for i, end := range res.Run.Commands[0].Ends {
					if end == 0 {
						t.Fatalf("exec %d has no end", i)
					}
				}
			}
		})
	}
}
