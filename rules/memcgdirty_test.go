package rules

import (
	"strings"
	"testing"

	"github.com/whyslow/whyslow/internal/event"
)

// memcgPauses adds n pauses of ms of tk on d in cgroup path (with
// memory.max max bytes, 0 for none), each measured against dirty pages of
// 4 KiB, and the system's dirty limits (vm.dirty_ratio=20 of 4 GiB).
func (s *scenario) memcgPauses(tk event.Task, d event.Device, path string, max uint64, dirty uint64, n int, ms float64) *scenario {
	s.tl.Add(event.DirtyLimits{Time: at(1), Ratio: 20, BackgroundRatio: 10, PageSize: 4096,
		Thresh: 209_715, Dirtyable: 1_048_576})
	for i := range n {
		s.tl.Add(event.DirtyPause{Time: at(500 + float64(i)*100), Task: tk, Dev: d, Pause: msd(ms), Period: msd(ms),
			Limit: 209_715, Setpoint: 190_000, Dirty: dirty, WbSetpoint: 3000, WbDirty: dirty, DirtyRatelimit: 2048,
			TaskRatelimit: 1024, CgroupIno: 4242, Cgroup: path, MemoryMax: max})
	}
	return s
}

// A buffered writer in a memory cgroup with a small memory.max is paused
// at the cgroup's own dirty limit (a share of its memory), long before the
// system's: dirty-throttling names the cgroup, its memory.max and the
// limit; the same pauses without the memory limit, or at the system's
// limit, do not mention it.
func TestDirtyThrottlingNamesTheMemcg(t *testing.T) {
	tests := []struct {
		name     string
		sc       *scenario
		memcg    bool
		says     []string
		dirtyLim float64
	}{
		{"in a cgroup of 64 MiB", newScenario().fast(loop0).memcgPauses(ledger, loop0, "/jobs/etl", 64<<20, 2900, 50, 40),
			true, []string{"/jobs/etl", "memory.max=67108864 (64 MiB)"}, 12.8},
		{"in a cgroup without a memory limit", newScenario().fast(loop0).memcgPauses(ledger, loop0, "/jobs/etl", 0, 2900, 50, 40),
			false, nil, 0},
		{"in the root cgroup", newScenario().fast(loop0).memcgPauses(ledger, loop0, "", 0, 190_000, 50, 40),
			false, nil, 0},
		{"in a big cgroup, at the system's limit", newScenario().fast(loop0).memcgPauses(ledger, loop0, "/jobs/etl", 8<<30, 190_000, 50, 40),
			false, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := evaluate(t, defaults(t), tt.sc.run())
			if len(fs) == 0 || fs[0].Rule != "dirty-throttling" {
				t.Fatalf("findings %v, want dirty-throttling first", titles(fs))
			}
			f := fs[0]
			text := f.Title + "\n" + f.Explanation + "\n" + f.Remedy
			if !tt.memcg {
				if strings.Contains(text, "cgroup") || evidence(f, "memcg") != "" {
					t.Errorf("mentions a memory cgroup (%v): %s", evidence(f, "memcg"), text)
				}
				return
			}
			for _, s := range tt.says {
				if !strings.Contains(f.Title, s) || !strings.Contains(f.Remedy, s) {
					t.Errorf("title and remedy do not say %q:\n%s", s, text)
				}
			}
			if got := evidence(f, "memcg_dirty_limit_mib"); got != tt.dirtyLim {
				t.Errorf("memcg_dirty_limit_mib %v, want %v (vm.dirty_ratio=20 of 64 MiB)", got, tt.dirtyLim)
			}
			if !strings.Contains(f.Explanation, "not the system's dirty limit") {
				t.Errorf("explanation does not say the cgroup's limit throttled: %s", f.Explanation)
			}
		})
	}
}
