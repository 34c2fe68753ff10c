package rules

import (
	"slices"
	"strings"
	"testing"

	"github.com/whyslow/whyslow/internal/event"
)

// callXfsLog is fsync waiting for a force of the xfs log.
var callXfsLog = stack("__schedule", "schedule", "xlog_wait_on_iclog", "xfs_log_force_seq", "xfs_file_fsync", "do_fsync")

// xfsLog mounts xfs on d and adds n forces of its log by tk's fsyncs over
// the run, each traced twice as the kernel does (the force, then the CIL
// force it makes, whose caller is xfs_log_force_seq), and, when writeMs
// is above 0, one log write of writeMs per force (6.1+).
func (s *scenario) xfsLog(d event.Device, tk event.Task, n int, writeMs float64) *scenario {
	s.tl.Add(event.Mount{Time: at(1), Dev: d, FsDev: d.Name, FSType: "xfs", Point: "/srv"})
	for i := range n {
		ms := 300 + float64(i)*19_000/float64(n)
		s.tl.Add(event.LogForce{Time: at(ms), Dev: d, FsDev: d.Name, Task: tk, Lsn: int64(i + 1), Caller: "xfs_file_fsync"})
		s.tl.Add(event.LogForce{Time: at(ms + 0.001), Dev: d, FsDev: d.Name, Task: tk, Lsn: int64(i + 1), Caller: "xfs_log_force_seq"})
		if writeMs > 0 {
			s.tl.Add(event.LogWrite{Start: at(ms + 0.01), Duration: msd(writeMs), Dev: d, FsDev: d.Name, Lsn: uint64(i+1) << 32, Flush: true, FUA: true})
		}
	}
	return s
}

// fsync waiting for the xfs log: journal-commit-wait when the log's writes
// are slow (or, without the log-write events of 6.1+, each force kept the
// waiter long); not when they are fast, however many.
func TestJournalXfsLog(t *testing.T) {
	for _, tt := range []struct {
		name string
		sc   *scenario
		want bool
		// the title's forces and their wait each
		title string
	}{
		{"slow log writes", newScenario().fast(loop0).xfsLog(loop0, archiver, 100, 30).
			calls(archiver, "/", loop0, "fsync", 100, 30, callXfsLog), true, "100 forces, 30 ms each"},
		{"fast log writes", newScenario().fast(loop0).xfsLog(loop0, archiver, 300, 1.5).
			calls(archiver, "/", loop0, "fsync", 300, 2, callXfsLog), false, ""},
		{"long forces, no log-write events (5.10)", newScenario().fast(loop0).xfsLog(loop0, archiver, 100, 0).
			calls(archiver, "/", loop0, "fsync", 100, 30, callXfsLog), true, "100 forces, 30 ms each"},
		// the 5.10 guest's journal-xfs: 273 forces behind bulk's
		// write-back kept the victim 2363 ms, 8.7 ms each
		{"forces behind write-back, no log-write events (5.10)", newScenario().fast(loop0).xfsLog(loop0, archiver, 273, 0).
			calls(archiver, "/", loop0, "fsync", 273, 8.7, callXfsLog), true, "273 forces, 8.7 ms each"},
		{"short forces, no log-write events (5.10)", newScenario().fast(loop0).xfsLog(loop0, archiver, 2000, 0).
			calls(archiver, "/", loop0, "fsync", 2000, 2, callXfsLog), false, ""},
		// its control there: 1169 forces, 2003 ms
		{"the forces of a throttled disk, no log-write events (5.10)", newScenario().fast(loop0).xfsLog(loop0, archiver, 1169, 0).
			calls(archiver, "/", loop0, "fsync", 1169, 1.7, callXfsLog), false, ""},
		// the 6.1 guest's journal-xfs: 437 forces behind bulk's
		// write-back kept the victim 5.3 ms each, its log writes under
		// the p99 bar (12.5 ms)
		{"forces behind write-back, log writes under the p99 bar (6.1)", newScenario().fast(loop0).xfsLog(loop0, archiver, 437, 5).
			calls(archiver, "/", loop0, "fsync", 437, 5.3, callXfsLog), true, "437 forces, 5.3 ms each, log writes p99 5 ms"},
		// its control there: 962 forces, 2.5 ms each
		{"the forces of a throttled disk, log writes (6.1)", newScenario().fast(loop0).xfsLog(loop0, archiver, 962, 2).
			calls(archiver, "/", loop0, "fsync", 962, 2.5, callXfsLog), false, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fs := evaluate(t, defaults(t), tt.sc.run())
			i := slices.IndexFunc(fs, func(f Finding) bool { return f.Rule == "journal-commit-wait" })
			if !tt.want {
				if i >= 0 {
					t.Fatalf("journal-commit-wait: %s", fs[i].Title)
				}
				return
			}
			if i < 0 {
				t.Fatalf("no journal-commit-wait: %v", titles(fs))
			}
			f := fs[i]
			if !slices.ContainsFunc(f.Processes, func(p Process) bool { return p.Comm == "archiver" && p.Role == "waiter" }) {
				t.Errorf("names %+v, want archiver as the waiter", f.Processes)
			}
			if !strings.Contains(f.Title, "forces of the log of xfs on loop0") || !strings.Contains(f.Title, tt.title) {
				t.Errorf("title %q: want the xfs log's forces on loop0, counted once each, and their wait", f.Title)
			}
			ev := map[string]any{}
			for _, e := range f.Evidence {
				ev[e.Name] = e.Value
			}
			n := len(tt.sc.tl.LogForces) / 2
			if ev["log_forces"] != n || ev["fsync_forces"] != n || ev["fs"] != "xfs" {
				t.Errorf("evidence log_forces %v, fsync_forces %v, fs %v: want %d, %d, xfs", ev["log_forces"], ev["fsync_forces"], ev["fs"], n, n)
			}
			if strings.Contains(f.Title, "log writes") != (ev["log_writes"] != 0) {
				t.Errorf("title %q with %v log writes", f.Title, ev["log_writes"])
			}
		})
	}
}
