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

// callInodeJournal is a write that waits to update its inode's times in
// the journal, for the buffer a commit is writing (ext4 without lazytime).
var callInodeJournal = stack("__schedule", "schedule", "io_schedule", "bit_wait_io", "__wait_on_bit",
	"out_of_line_wait_on_bit", "do_get_write_access", "jbd2_journal_get_write_access",
	"__ext4_journal_get_write_access", "ext4_reserve_inode_write", "__ext4_mark_inode_dirty",
	"ext4_dirty_inode", "__mark_inode_dirty", "generic_update_time", "file_modified", "ext4_buffered_write_iter")

// dirty-throttling scores the time its writers' storage calls slept in
// balance_dirty_pages, as journal-commit-wait scores theirs in the
// journal, not the shorter pauses the tracepoint announced: in the 6.12
// guest the writer slept 1897 ms in 225 pauses announced as 952 ms, and
// waited 1429 ms for the journal; the pauses rank first. Without the
// syscall probe's sleeps, the announced pauses are the score.
func TestDirtyThrottlingScoresTheSleeps(t *testing.T) {
	for _, tt := range []struct {
		name  string
		sc    *scenario
		rules []string
		score float64
	}{
		{"sleeps longer than the pauses announced", newScenario().fast(sda).pauses(ledger, sda, 225, 4).commits(sda, 1, 1456).
			calls(ledger, "/db", sda, "pwrite64", 300, 10, callDirty, callDirty, callInodeJournal),
			[]string{"dirty-throttling", "journal-commit-wait"}, 2000},
		{"no application's view", newScenario().fast(sda).pauses(ledger, sda, 225, 4),
			[]string{"dirty-throttling"}, 900},
	} {
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
			f := fs[slices.IndexFunc(fs, func(f Finding) bool { return f.Rule == "dirty-throttling" })]
			if f.Score != tt.score {
				t.Errorf("dirty-throttling score %v, want %v", f.Score, tt.score)
			}
			if slept := strings.Contains(f.Explanation, "ledger slept 2000 ms in balance_dirty_pages"); slept != (tt.score > 900) {
				t.Errorf("explanation says the sleeps (%v), want %v: %s", slept, tt.score > 900, f.Explanation)
			}
		})
	}
}
