package facts

import (
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// The wbt_lat tracepoint reports the latency of a sync I/O that exceeded
// wbt's window, not a new target: the target stays the one read from
// sysfs, the tracepoint's events are counted.
func TestWbtTarget(t *testing.T) {
	vdb := event.Device{Major: 254, Minor: 16, Name: "vdb"}
	run := Build(newTimeline(
		event.WbtLat{Time: at(1), Dev: vdb, Lat: time.Millisecond, From: "sysfs"},
		event.WbtLat{Time: at(500), Dev: vdb, Lat: 24251 * time.Microsecond, From: "wbt_lat"},
		event.WbtLat{Time: at(900), Dev: vdb, Lat: 37480 * time.Microsecond, From: "wbt_lat"},
	), Options{})
	d := run.Find("vdb")
	if d == nil {
		t.Fatal("no device vdb")
	}
	if d.Wbt.LatUs != 1000 || d.Wbt.Exceeded != 2 {
		t.Errorf("LatUs %v, Exceeded %d; want the target 1000 µs and 2 exceeded", d.Wbt.LatUs, d.Wbt.Exceeded)
	}
}
