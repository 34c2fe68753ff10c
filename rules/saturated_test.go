package rules

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// fio2 is a second job of the same load.
var fio2 = event.Task{Pid: 901, Tgid: 901, Comm: "fio"}

// syncJob adds a process that syncs n times on d over the run, each call
// ms long and waiting for the device all of it, with its I/O there (one
// flush request per call, in flight as long as the call).
func (s *scenario) syncJob(tk event.Task, cgroup string, d event.Device, n int, ms float64) *scenario {
	return s.calls(tk, cgroup, d, "fdatasync", n, ms, callDevice).use(tk, cgroup, d, "write", uint64(n), float64(n)*ms)
}

// The device-saturated rule names a device busy with the waiting
// processes' own I/O at a normal service time, and explains their device
// waits (no unexplained-latency); a slow device, an idle one (a light load,
// or a limit that holds the I/O before the device), and a neighbour's
// flood are other causes.
func TestDeviceSaturated(t *testing.T) {
	tests := []struct {
		name string
		sc   *scenario
		// rules the findings must be, in rank order
		rules []string
	}{
		{"two sync jobs keep the device busy", newScenario().serve(loop0, 8000, msd(4.5), msd(0.005)).
			syncJob(fio, "/", loop0, 2000, 9).syncJob(fio2, "/", loop0, 2000, 9),
			[]string{"device-saturated"}},
		{"one sync job, one request at a time", newScenario().serve(loop0, 4000, msd(4.8), msd(0.005)).
			syncJob(fio, "/", loop0, 2000, 9),
			[]string{"device-saturated"}},
		// The story's chain freezes the busy device's queue: the cause
		// found ranks first, the device at its capacity after it (an
		// info names no fault), whatever their scores.
		{"a freeze chain on the busy device too", newScenario().serve(loop0, 8000, msd(4.5), msd(0.005)).
			syncJob(fio, "/", loop0, 2000, 9).syncJob(fio2, "/", loop0, 2000, 9).udevChain(loop0),
			[]string{"queue-freeze-stall", "device-saturated"}},
		{"control: a slow device", newScenario().serve(loop0, 500, msd(45), msd(0.005)).
			syncJob(fio, "/", loop0, 400, 45),
			[]string{"slow-device"}},
		{"control: a light load, the device mostly idle", newScenario().serve(loop0, 1000, msd(2), msd(0.005)).
			syncJob(fio, "/", loop0, 1000, 9),
			[]string{"unexplained-latency"}},
		{"control: the calls wait, the device idles (a limit before it)", newScenario().fast(loop0).
			syncJob(fio, "/", loop0, 400, 25),
			[]string{"unexplained-latency"}},
		{"control: a neighbour floods the device", newScenario().serve(loop0, 8000, msd(4.5), msd(0.005)).
			use(scan, "/batch", loop0, "read", 90_000, 360_000).syncJob(ledger, "/", loop0, 2000, 9),
			[]string{"noisy-neighbour"}},
		{"control: their I/O is a small part of the device's", newScenario().serve(loop0, 8000, msd(4.5), msd(0.005)).
			use(scan, "/", loop0, "read", 9000, 36_000).use(other, "/", loop0, "read", 9000, 36_000).
			syncJob(ledger, "/", loop0, 2000, 9),
			[]string{"unexplained-latency"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := evaluate(t, defaults(t), tt.sc.run())
			if got := rulesOf(fs); !slices.Equal(got, tt.rules) {
				t.Fatalf("findings %v, want %v", got, tt.rules)
			}
			sat := fs[len(fs)-1]
			if sat.Rule != "device-saturated" {
				return
			}
			if sat.Severity != "info" {
				t.Errorf("severity %s, want info", sat.Severity)
			}
			if !strings.Contains(sat.Title, "loop0") || !strings.Contains(sat.Title, "fio") {
				t.Errorf("title %q names not the device and the process", sat.Title)
			}
			for _, p := range sat.Processes {
				if p.Comm != "fio" || p.Part != "victim" {
					t.Errorf("process %s %s, want fio as victim", p.Comm, p.Part)
				}
			}
			ev := map[string]any{}
			for _, e := range sat.Evidence {
				ev[e.Name] = e.Value
			}
			if in, _ := ev["in_service"].(float64); in < 0.9 {
				t.Errorf("in_service %v, want at least 0.9", ev["in_service"])
			}
			if sh, _ := ev["share_pct"].(float64); sh < 99 {
				t.Errorf("share_pct %v, want fio's 100%%", ev["share_pct"])
			}
		})
	}
}

// InService is the service time over a stretch of time.
func TestInService(t *testing.T) {
	run := newScenario().serve(loop0, 1000, msd(10), 0).run()
	d := run.Find("loop0")
	if got := d.InService(10 * time.Second); got < 0.99 || got > 1.01 {
		t.Errorf("InService(10s) = %v, want 1 (10 s of service)", got)
	}
	if got := d.InService(0); got != 0 {
		t.Errorf("InService(0) = %v, want 0", got)
	}
}
