package rules

import (
	"slices"
	"strings"
	"testing"

	"github.com/whyslow/whyslow/internal/event"
)

// callDirty is a storage call paused for dirty pages.
var callDirty = stack("__schedule", "schedule_timeout", "io_schedule_timeout", "balance_dirty_pages",
	"balance_dirty_pages_ratelimited_flags", "generic_perform_write", "ext4_buffered_write_iter")

// pauses adds n dirty-throttle pauses of ms of tk on d, one every 100 ms.
func (s *scenario) pauses(tk event.Task, d event.Device, n int, ms float64) *scenario {
	for i := range n {
		s.tl.Add(event.DirtyPause{Time: at(500 + float64(i)*100), Task: tk, Dev: d, Pause: msd(ms), Period: msd(ms),
			Limit: 2048, Setpoint: 1800, Dirty: 2000, WbSetpoint: 1800, WbDirty: 2000, DirtyRatelimit: 4096, TaskRatelimit: 4096})
	}
	return s
}

// A finding that explains time affected processes waited outranks a slow
// device nobody's storage call waited for (its requests were write-back or
// journal I/O), which stays, ranked below, and says it is the underlying
// contributor of those waits; a slow device that processes did wait for
// ranks by their wait; without the application's view (no syscall probe)
// it ranks by its request time, as before.
func TestRankingByWhatProcessesWaited(t *testing.T) {
	tests := []struct {
		name string
		sc   *scenario
		// rules: the findings on sda, in rank order
		rules []string
		// victims of slow-device, its score (-1: not checked) and what its
		// explanation must say
		victims []string
		score   float64
		says    []string
	}{
		{"fsyncs wait for the journal of a slow device", newScenario().slow(sda).commits(sda, 60, 80).
			calls(ledger, "/db", sda, "fsync", 300, 30, callJournal),
			[]string{"journal-commit-wait", "slow-device"}, nil, 0,
			[]string{"underlying contributor", "journal"}},
		{"writers paused for dirty pages of a slow device", newScenario().slow(sda).pauses(ledger, sda, 150, 40).
			calls(ledger, "/db", sda, "pwrite64", 600, 10, callDirty),
			[]string{"dirty-throttling", "slow-device"}, nil, 0,
			[]string{"underlying contributor", "dirty_throttle"}},
		{"readers wait for a slow device", newScenario().slow(sda).
			calls(ledger, "/db", sda, "pread64", 200, 45, callDevice),
			[]string{"slow-device"}, []string{"ledger"}, 9000, nil},
		{"no application's view", newScenario().slow(sda),
			[]string{"slow-device"}, nil, -1, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := evaluate(t, defaults(t), tt.sc.run())
			var got []string
			for _, f := range fs {
				if slices.Contains(f.Devices, "sda") {
					got = append(got, f.Rule)
				}
			}
			if !slices.Equal(got, tt.rules) {
				t.Fatalf("findings on sda %v, want %v: %v", got, tt.rules, titles(fs))
			}
			i := slices.IndexFunc(fs, func(f Finding) bool { return f.Rule == "slow-device" })
			f := fs[i]
			var victims []string
			for _, p := range f.Processes {
				victims = append(victims, p.Comm)
			}
			if !slices.Equal(victims, tt.victims) {
				t.Errorf("slow-device names %v, want %v", victims, tt.victims)
			}
			if tt.score >= 0 && f.Score != tt.score {
				t.Errorf("slow-device score %v, want %v (the ms its victims waited for sda)", f.Score, tt.score)
			}
			if tt.score < 0 && f.Score < 10_000 {
				t.Errorf("slow-device score %v, want its request-milliseconds (500 requests of 40-80 ms)", f.Score)
			}
			for _, s := range tt.says {
				if !strings.Contains(f.Explanation, s) {
					t.Errorf("slow-device's explanation does not say %q: %s", s, f.Explanation)
				}
			}
		})
	}
}
