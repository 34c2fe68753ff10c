package facts

import (
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// What the writeback probe saw of wbt becomes Device.Wbt: the target from
// sysfs, where the steps left the device (step, depth, window), the
// latencies that exceeded the target (counted: TestWbtTarget) and the
// windows' read latencies (wbt_stat). In a trace of an earlier version, a
// window under 1 ms is µs held as ns.
func TestWbtFacts(t *testing.T) {
	tests := []struct {
		name  string
		add   func(tl *timeline.Timeline)
		check func(t *testing.T, w Wbt)
	}{
		{"this version", func(tl *timeline.Timeline) {
			tl.Add(event.WbtLat{Time: 1, Dev: loop0, Lat: 2 * time.Millisecond, From: "sysfs"})
			tl.Add(event.WbtStep{Time: 2, Dev: loop0, Step: 1, Window: 100 * time.Millisecond, Max: 31})
			tl.Add(event.WbtLat{Time: 3, Dev: loop0, Lat: 4500 * time.Microsecond, From: "wbt_lat"})
			tl.Add(event.WbtWindow{Time: 3, Dev: loop0, ReadMean: 6 * time.Millisecond, ReadMin: 4500 * time.Microsecond, ReadMax: 14 * time.Millisecond, Reads: 20, Writes: 13})
			tl.Add(event.WbtStep{Time: 4, Dev: loop0, Step: 3, Window: 50 * time.Millisecond, Max: 8})
			tl.Add(event.WbtWindow{Time: 5, Dev: loop0, ReadMean: 3 * time.Millisecond, ReadMax: 20 * time.Millisecond, Reads: 9})
		}, func(t *testing.T, w Wbt) {
			if w.LatUs != 2000 || w.Steps != 2 || w.ScaledDown != 2 || w.MaxStep != 3 || w.MinDepth != 8 {
				t.Errorf("target and steps %+v", w)
			}
			if w.Step != 3 || w.Depth != 8 || w.WindowMs != 50 {
				t.Errorf("left at %+v, want step 3, depth 8, a window of 50 ms", w)
			}
			if w.Exceeded != 1 || w.Windows != 2 || w.ReadMeanMs != 6 || w.ReadMaxMs != 20 {
				t.Errorf("windows %+v", w)
			}
		}},
		{"earlier version", func(tl *timeline.Timeline) {
			tl.Add(event.WbtLat{Time: 1, Dev: loop0, Lat: time.Millisecond, From: "sysfs"})
			tl.Add(event.WbtLat{Time: 2, Dev: loop0, Lat: 7 * time.Millisecond, From: "wbt_lat"})
			tl.Add(event.WbtStep{Time: 3, Dev: loop0, Step: -3, Window: 100_000, Max: 96})
		}, func(t *testing.T, w Wbt) {
			if w.LatUs != 1000 || w.Exceeded != 1 || w.Windows != 0 {
				t.Errorf("target %v µs, %d exceeded, %d windows; want 1000, 1, 0", w.LatUs, w.Exceeded, w.Windows)
			}
			if w.Step != -3 || w.Depth != 96 || w.WindowMs != 100 {
				t.Errorf("left at %+v, want step -3, depth 96, a window of 100 ms", w)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tl := &timeline.Timeline{Start: 0, End: event.Mono(10 * time.Second)}
			tt.add(tl)
			tl.Sort()
			tt.check(t, Build(tl, Options{}).Find("loop0").Wbt)
		})
	}
}
