package metrics

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/rules"
)

// Every bucket's cumulative count is exactly the number of values at most
// its bound: the slots never straddle a bound.
func TestBucketsExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h hist.Histogram
	var values []uint64
	for range 20000 {
		// Log-uniform from 1 ns to 2^40 ns, and the edges themselves.
		v := uint64(1) << rng.IntN(40)
		switch rng.IntN(3) {
		case 0:
			v += uint64(rng.Int64N(int64(v)))
		case 1:
			v--
		}
		h.Add(v)
		values = append(values, v)
	}
	count, sum, buckets := Buckets(&h)
	if count != uint64(len(values)) {
		t.Errorf("count %d, want %d", count, len(values))
	}
	var total float64
	for _, v := range values {
		total += float64(v)
	}
	if d := sum - total/1e9; d > 1e-6 || d < -1e-6 {
		t.Errorf("sum %g s, want %g", sum, total/1e9)
	}
	bounds := BucketBounds()
	if len(buckets) != len(bounds) {
		t.Fatalf("%d buckets, want %d", len(buckets), len(bounds))
	}
	for i, b := range bounds {
		le := uint64(1)<<(MinBucketLog2+i) - 1
		if b != float64(le)/1e9 {
			t.Errorf("bound %d is %g, want %d ns", i, b, le)
		}
		var want uint64
		for _, v := range values {
			if v <= le {
				want++
			}
		}
		if buckets[b] != want {
			t.Errorf("le=%g (%d ns): %d, want %d", b, le, buckets[b], want)
		}
	}
}

// The mapped histogram is what Prometheus's own histogram, fed the same
// values, exposes.
func TestBucketsMatchPrometheus(t *testing.T) {
	ph := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x", Buckets: BucketBounds()})
	var h hist.Histogram
	for _, v := range []uint64{1, 1023, 1024, 1025, 5_000, 1 << 20, 3 << 20, 40_000_000, 1 << 36} {
		h.Add(v)
		ph.Observe(float64(v) / 1e9)
	}
	var want dto.Metric
	if err := ph.Write(&want); err != nil {
		t.Fatal(err)
	}
	n, sum, b := Buckets(&h)
	got := prometheus.MustNewConstHistogram(prometheus.NewDesc("x", "", nil, nil), n, sum, b)
	var gm dto.Metric
	if err := got.Write(&gm); err != nil {
		t.Fatal(err)
	}
	for i, wb := range want.Histogram.Bucket {
		gb := gm.Histogram.Bucket[i]
		if wb.GetUpperBound() != gb.GetUpperBound() || wb.GetCumulativeCount() != gb.GetCumulativeCount() {
			t.Errorf("bucket le=%g: %d, Prometheus's own %d", gb.GetUpperBound(), gb.GetCumulativeCount(), wb.GetCumulativeCount())
		}
	}
	if gm.Histogram.GetSampleCount() != want.Histogram.GetSampleCount() {
		t.Errorf("count %d, want %d", gm.Histogram.GetSampleCount(), want.Histogram.GetSampleCount())
	}
}

// Past MaxDevices, devices share one series per metric ("_other"), which
// sums them; the first ones keep theirs.
func TestDeviceBound(t *testing.T) {
	m := New("test", "6.18")
	var devs []timeline.DeviceHistograms
	for i := range MaxDevices + 40 {
		d := timeline.DeviceHistograms{Dev: event.Device{Major: 7, Minor: uint32(i), Name: fmt.Sprintf("loop%d", i)}}
		d.Submit.Add(1000)
		devs = append(devs, d)
	}
	m.SetHistograms(devs)
	freezes := map[string]uint64{}
	stages := map[[2]string]time.Duration{}
	var findings []rules.Finding
	for _, d := range devs {
		freezes[d.Dev.Name] = 1
		stages[[2]string{"queue_freeze", d.Dev.Name}] = time.Second
		findings = append(findings, rules.Finding{Rule: "queue-freeze-stall", Severity: rules.Critical, Score: float64(d.Dev.Minor), Devices: []string{d.Dev.Name}})
	}
	m.AddWindow(Window{End: time.Now(), Duration: time.Minute, Findings: findings, Freezes: freezes, Stages: stages})

	for _, name := range []string{"whyslow_submit_latency_seconds", "whyslow_queue_freezes_total", "whyslow_stage_seconds_total", "whyslow_finding"} {
		if n := testutil.CollectAndCount(m, name); n != MaxDevices+1 {
			t.Errorf("%s: %d series, want %d (the bound, and _other)", name, n, MaxDevices+1)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP whyslow_label_values_folded Distinct values of a bounded label folded into "_other" (devices past 64).
# TYPE whyslow_label_values_folded gauge
whyslow_label_values_folded{label="device"} 40
`), "whyslow_label_values_folded"); err != nil {
		t.Error(err)
	}
	// _other sums the folded devices; its finding is the highest score.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, mt := range mf.Metric {
			if labelOf(mt, "device") != Other {
				continue
			}
			switch mf.GetName() {
			case "whyslow_queue_freezes_total":
				if v := mt.Counter.GetValue(); v != 40 {
					t.Errorf("freezes of _other %g, want 40", v)
				}
			case "whyslow_submit_latency_seconds":
				if v := mt.Histogram.GetSampleCount(); v != 40 {
					t.Errorf("submissions of _other %d, want 40", v)
				}
			case "whyslow_finding":
				if v := mt.Gauge.GetValue(); v != float64(MaxDevices+39) {
					t.Errorf("finding of _other %g, want %d", v, MaxDevices+39)
				}
			}
		}
	}
}

// Findings are present only while they hold: the next window replaces
// them; counters only grow.
func TestFindingsFollowTheWindow(t *testing.T) {
	m := New("test", "6.18")
	f := rules.Finding{Rule: "queue-freeze-stall", Severity: rules.Critical, Score: 120, Devices: []string{"loop3"}}
	m.AddWindow(Window{End: time.Now(), Findings: []rules.Finding{f}, Freezes: map[string]uint64{"loop3": 5}})
	if n := testutil.CollectAndCount(m, "whyslow_finding"); n != 1 {
		t.Fatalf("%d finding series, want 1", n)
	}
	m.AddWindow(Window{End: time.Now(), Freezes: map[string]uint64{"loop3": 2}})
	if n := testutil.CollectAndCount(m, "whyslow_finding"); n != 0 {
		t.Errorf("%d finding series after a window without it, want 0", n)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP whyslow_queue_freezes_total Queue freezes seen, per device (direct freeze probe, or inferred from freezers' off-CPU stacks).
# TYPE whyslow_queue_freezes_total counter
whyslow_queue_freezes_total{device="loop3"} 7
`), "whyslow_queue_freezes_total"); err != nil {
		t.Error(err)
	}
}

// Loss causes are bounded per probe; counters never go down.
func TestLossBound(t *testing.T) {
	m := New("test", "6.18")
	var ls []event.Loss
	for i := range MaxReasons + 10 {
		ls = append(ls, event.Loss{Probe: event.ProbeSubmit, What: fmt.Sprintf("ring buffer unreadable (E%d)", i), Count: 1})
	}
	m.SetLosses(ls)
	if n := testutil.CollectAndCount(m, "whyslow_lost_events_total"); n != MaxReasons+1 {
		t.Errorf("%d loss series, want %d", n, MaxReasons+1)
	}
	m.SetLosses(nil)
	if n := testutil.CollectAndCount(m, "whyslow_lost_events_total"); n != MaxReasons+1 {
		t.Errorf("%d loss series after an update without them, want them kept", n)
	}
}

// The per-probe series keep every probe's count; the distinct total
// counts the missed completions that service, submit and devfault each
// report once, and never goes down.
func TestLostDistinct(t *testing.T) {
	m := New("test", "6.18")
	for _, tt := range []struct {
		losses []event.Loss
		want   string
	}{
		{nil, "0"},
		{[]event.Loss{
			{Probe: event.ProbeService, What: event.ServiceMissedWhat, Count: 480},
			{Probe: event.ProbeSubmit, What: event.SubmitMissedWhat, Count: 300},
			{Probe: event.ProbeDevFault, What: event.DevFaultUnseenWhat, Count: 480},
			{Probe: event.ProbeSubmit, What: "ring buffer full", Count: 5},
		}, "485"},
		{nil, "485"}, // an update without them: kept
	} {
		m.SetLosses(tt.losses)
		if err := testutil.CollectAndCompare(m, strings.NewReader(`
# HELP whyslow_lost_events_distinct_total Events lost, each counted once: the causes of several probes that count the same events (block completions no program saw: service, submit, devfault) count once, at the largest probe's count. Sum whyslow_lost_events_total for each probe's own view, not for a total.
# TYPE whyslow_lost_events_distinct_total counter
whyslow_lost_events_distinct_total `+tt.want+"\n"), "whyslow_lost_events_distinct_total"); err != nil {
			t.Error(err)
		}
	}
	if n := testutil.CollectAndCount(m, "whyslow_lost_events_total"); n != 4 {
		t.Errorf("%d per-probe loss series, want 4", n)
	}
}

// A device name with a control character cannot forge a scrape line.
func TestLabelsPrintable(t *testing.T) {
	m := New("test", "6.18")
	m.AddWindow(Window{End: time.Now(), Freezes: map[string]uint64{"evil\n# HELP x\xff": 1}})
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "whyslow_queue_freezes_total" {
			if d := labelOf(mf.Metric[0], "device"); strings.ContainsAny(d, "\n") || d != `evil\n# HELP x\xff` {
				t.Errorf("device label %q", d)
			}
		}
	}
}

func labelOf(m *dto.Metric, name string) string {
	for _, l := range m.Label {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// The armed mode's series are there only once serve is in an armed mode,
// and say what its state function says at each scrape.
func TestArmedState(t *testing.T) {
	m := New("v", "k")
	for _, name := range []string{"whyslow_armed", "whyslow_armed_seconds_total", "whyslow_armings_total"} {
		if n := testutil.CollectAndCount(m, name); n != 0 {
			t.Errorf("%s: %d series without an armed mode, want none", name, n)
		}
	}
	st := Armed{}
	m.SetArmed(func() Armed { return st })
	for _, tt := range []struct {
		st   Armed
		want string
	}{
		{Armed{}, "whyslow_armed 0\nwhyslow_armed_seconds_total 0\nwhyslow_armings_total 0\n"},
		{Armed{Armed: true, Seconds: 2.5, Armings: 1}, "whyslow_armed 1\nwhyslow_armed_seconds_total 2.5\nwhyslow_armings_total 1\n"},
		{Armed{Seconds: 7.25, Armings: 3}, "whyslow_armed 0\nwhyslow_armed_seconds_total 7.25\nwhyslow_armings_total 3\n"},
	} {
		st = tt.st
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(m)
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var got strings.Builder
		for _, mf := range mfs {
			switch n := mf.GetName(); n {
			case "whyslow_armed", "whyslow_armed_seconds_total", "whyslow_armings_total":
				fmt.Fprintf(&got, "%s %v\n", n, value(mf.GetMetric()[0]))
			}
		}
		if got.String() != tt.want {
			t.Errorf("state %+v: got\n%swant\n%s", tt.st, got.String(), tt.want)
		}
	}
}

// value is a gauge's or a counter's value.
func value(m *dto.Metric) float64 {
	if g := m.GetGauge(); g != nil {
		return g.GetValue()
	}
	return m.GetCounter().GetValue()
}
