// Package bench holds whyslow's benchmarks: the Go benchmarks of the
// analysis here (go test -bench . ./tools/bench/), and the driver of the system
// benchmarks in tools/bench/cmd/whyslow-bench (`make bench`), which runs these
// too and writes BENCHMARKS.md.
package bench

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/whyslow/whyslow/diagnose"
	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/facts"
	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/synth"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/internal/tracefile"
	"github.com/whyslow/whyslow/rules"
)

// Sizes10M is the environment variable that adds the 10M-event runs (slow:
// minutes, several GB); `make bench` sets it.
const Sizes10M = "WHYSLOW_BENCH_10M"

// sizes are the numbers of events the analysis benchmarks run on.
func sizes() []int {
	if os.Getenv(Sizes10M) != "" {
		return []int{1_000_000, 10_000_000}
	}
	return []int{1_000_000}
}

func sizeName(n int) string {
	if n%1_000_000 == 0 {
		return fmt.Sprintf("%dM", n/1_000_000)
	}
	return fmt.Sprintf("%dk", n/1000)
}

// Generated inputs are cached across benchmarks: generating 10M events takes
// a while. Only one size is kept at a time.
var (
	cacheMu     sync.Mutex
	cachedN     int
	cachedTL    *timeline.Timeline
	cachedRun   *facts.Run
	cachedEvent []event.Event
)

// input returns the sorted timeline of a generated run of n events (shared:
// callers must not modify it).
func input(b *testing.B, n int) *timeline.Timeline {
	b.Helper()
	cacheMu.Lock()
	defer cacheMu.Unlock()
	if cachedN != n || cachedTL == nil {
		cachedN, cachedTL, cachedRun, cachedEvent = n, nil, nil, nil
		runtime.GC()
		cachedTL = synth.Timeline(synth.Options{Events: n})
	}
	return cachedTL
}

// eventsOf returns the events of a generated run of n events, in the order
// they arrive.
func eventsOf(b *testing.B, n int) []event.Event {
	b.Helper()
	cacheMu.Lock()
	defer cacheMu.Unlock()
	if cachedN != n || cachedEvent == nil {
		cachedN, cachedTL, cachedRun, cachedEvent = n, nil, nil, nil
		runtime.GC()
		evs := make([]event.Event, 0, n)
		synth.New(synth.Options{Events: n}).Each(func(e event.Event) { evs = append(evs, e) })
		cachedEvent = evs
	}
	return cachedEvent
}

func factsOf(b *testing.B, n int) *facts.Run {
	tl := input(b, n)
	cacheMu.Lock()
	defer cacheMu.Unlock()
	if cachedRun == nil {
		cachedRun = facts.Build(tl, facts.Options{})
	}
	return cachedRun
}

func defaultRules(b testing.TB) *rules.Set {
	b.Helper()
	set, err := rules.Default()
	if err != nil {
		b.Fatal(err)
	}
	return set
}

// reportRate reports the events handled per second of the benchmark.
func reportRate(b *testing.B, n int) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(n)*float64(b.N)/s, "events/s")
	}
}

// BenchmarkTimeline measures building the timeline of a run: every event
// added as the probes deliver them, then sorted.
func BenchmarkTimeline(b *testing.B) {
	for _, n := range sizes() {
		b.Run(sizeName(n), func(b *testing.B) {
			evs := eventsOf(b, n)
			g := synth.New(synth.Options{Events: n})
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				tl := synth.Empty(g)
				for _, e := range evs {
					tl.Add(e)
				}
				tl.Sort()
			}
			reportRate(b, n)
		})
	}
}

// BenchmarkFacts measures deriving the facts the rules see from a timeline.
func BenchmarkFacts(b *testing.B) {
	for _, n := range sizes() {
		b.Run(sizeName(n), func(b *testing.B) {
			tl := input(b, n)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				facts.Build(tl, facts.Options{})
			}
			reportRate(b, n)
		})
	}
}

// BenchmarkRules measures evaluating the built-in rules on the facts.
func BenchmarkRules(b *testing.B) {
	set := defaultRules(b)
	for _, n := range sizes() {
		b.Run(sizeName(n), func(b *testing.B) {
			run := factsOf(b, n)
			b.ReportAllocs()
			b.ResetTimer()
			var findings []rules.Finding
			for b.Loop() {
				var err error
				if findings, err = rules.Evaluate(set, run); err != nil {
					b.Fatal(err)
				}
			}
			reportRate(b, n)
			if len(findings) == 0 {
				b.Fatal("no findings: the generated run should hold the udev freeze chain")
			}
		})
	}
}

// BenchmarkAnalyze measures what `whyslow analyze` does once the events are
// in memory: facts, rules, the report, rendered as text.
func BenchmarkAnalyze(b *testing.B) {
	set := defaultRules(b)
	for _, n := range sizes() {
		b.Run(sizeName(n), func(b *testing.B) {
			tl := input(b, n)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if err := analyze(tl, set, io.Discard); err != nil {
					b.Fatal(err)
				}
			}
			reportRate(b, n)
		})
	}
}

func analyze(tl *timeline.Timeline, set *rules.Set, w io.Writer) error {
	res, err := diagnose.Analyze(tl, set, nil)
	if err != nil {
		return err
	}
	rep := report.Build(res.Timeline, res.Run, res.Findings, report.Meta{Version: "bench", StartedAt: time.Unix(0, 0),
		Duration: tl.Duration(), Hostname: tl.Hostname, MinLatency: tl.MinLatency})
	return report.Text(w, rep, report.TextOptions{})
}

// BenchmarkAnalyzeTrace measures `whyslow analyze TRACE` whole: reading and
// decoding a recorded trace, then the analysis of BenchmarkAnalyze. Only
// for 1M events (the trace of 10M takes minutes to write).
func BenchmarkAnalyzeTrace(b *testing.B) {
	set := defaultRules(b)
	n := 1_000_000
	b.Run(sizeName(n), func(b *testing.B) {
		var buf bytes.Buffer
		if err := tracefile.Write(&buf, input(b, n), tracefile.Info{Version: "bench", StartedAt: time.Unix(0, 0), Duration: time.Minute}); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			// Unbounded: the generated run holds more than the memory
			// bound of a live run (and of analyze) keeps, about 630k of its
			// 1M events; the benchmark measures them all.
			tl, _, err := tracefile.ReadWith(bytes.NewReader(buf.Bytes()), tracefile.Options{MaxEventBytes: -1})
			if err != nil {
				b.Fatal(err)
			}
			if err := analyze(tl, set, io.Discard); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b, n)
	})
}

// BenchmarkTraceWrite measures recording a run (`--record`): encoding and
// compressing every event of the timeline.
func BenchmarkTraceWrite(b *testing.B) {
	n := 1_000_000
	b.Run(sizeName(n), func(b *testing.B) {
		tl := input(b, n)
		var buf bytes.Buffer
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			buf.Reset()
			if err := tracefile.Write(&buf, tl, tracefile.Info{Version: "bench", StartedAt: time.Unix(0, 0), Duration: time.Minute}); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b, n)
		b.ReportMetric(float64(buf.Len())/float64(n), "trace-bytes/event")
	})
}
