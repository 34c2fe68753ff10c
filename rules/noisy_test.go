package rules

import (
	"slices"
	"strings"
	"testing"

	"github.com/whyslow/whyslow/internal/event"
)

var (
	scan   = event.Task{Pid: 4100, Tgid: 4100, Comm: "nightly-scan"}
	ledger = event.Task{Pid: 4201, Tgid: 4200, Comm: "ledger"}
	other  = event.Task{Pid: 4300, Tgid: 4300, Comm: "indexer"}
	// archiver writes to a filesystem, and syncs.
	archiver = event.Task{Pid: 4400, Tgid: 4400, Comm: "archiver"}
)

// use adds a process's I/O on d over the run: ios bios of 16 KiB, each
// inFlightMs/ios in flight.
func (s *scenario) use(tk event.Task, cgroup string, d event.Device, op string, ios uint64, inFlightMs float64) *scenario {
	s.tl.Add(event.IOUsage{Time: at(20_000), Task: event.Task{Pid: tk.Tgid, Tgid: tk.Tgid, Comm: tk.Comm}, Cgroup: cgroup,
		CgroupID: uint64(len(cgroup)), Dev: d, Op: op, Sync: true, IOs: ios, Requests: ios, Bytes: ios << 14, InFlight: msd(inFlightMs)})
	return s
}

// tagWaits adds n waits of ms for a tag on d by tk, one every 500 ms.
func (s *scenario) tagWaits(tk event.Task, d event.Device, n int, ms float64) *scenario {
	for i := range n {
		start := 1000 + float64(i)*500 + float64(tk.Pid%7)
		s.tl.Add(event.SlowSubmit{Start: at(start), Latency: msd(ms + 1), Task: tk, Dev: d, Op: "WS", End: "getrq"})
		s.tl.Add(event.OffCPU{Start: at(start + 0.2), Duration: msd(ms), Task: tk, KernelStack: tagWait})
	}
	return s
}

func TestNoisyNeighbour(t *testing.T) {
	tests := []struct {
		name string
		sc   *scenario
		// want: the rule of the top finding on loop0, its cause and victims
		rule           string
		cause, victims []string
	}{
		{"a deep reader and a synced writer", newScenario().fast(loop0).
			use(scan, "/batch", loop0, "read", 90_000, 360_000).use(ledger, "/", loop0, "write", 2000, 6000).
			tagWaits(scan, loop0, 30, 4).tagWaits(ledger, loop0, 20, 5),
			"noisy-neighbour", []string{"nightly-scan"}, []string{"ledger"}},
		{"the cgroup's processes together", newScenario().fast(loop0).
			use(scan, "/batch", loop0, "read", 40_000, 150_000).use(other, "/batch", loop0, "read", 40_000, 150_000).
			use(ledger, "/", loop0, "write", 2000, 6000).tagWaits(ledger, loop0, 20, 5),
			"noisy-neighbour", []string{"indexer", "nightly-scan"}, []string{"ledger"}},
		{"the reader starves itself", newScenario().fast(loop0).
			use(scan, "/batch", loop0, "read", 90_000, 360_000).tagWaits(scan, loop0, 30, 4),
			"tag-starvation", nil, nil},
		{"two equal neighbours", newScenario().fast(loop0).
			use(scan, "/", loop0, "read", 50_000, 200_000).use(other, "/", loop0, "read", 50_000, 180_000).
			use(ledger, "/", loop0, "write", 2000, 6000).tagWaits(ledger, loop0, 20, 5),
			"tag-starvation", nil, nil},
		{"the victims barely waited", newScenario().fast(loop0).
			use(scan, "/batch", loop0, "read", 90_000, 360_000).use(ledger, "/", loop0, "write", 2000, 6000).
			tagWaits(ledger, loop0, 3, 5),
			"nothing-found", nil, nil},
		{"a handful of I/Os floods nothing", newScenario().fast(loop0).
			use(scan, "/batch", loop0, "read", 50, 5000).use(ledger, "/", loop0, "write", 20, 50).
			tagWaits(ledger, loop0, 20, 5),
			"tag-starvation", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := evaluate(t, defaults(t), tt.sc.run())
			if len(fs) == 0 {
				t.Fatal("no findings")
			}
			top := fs[0]
			if top.Rule != tt.rule {
				t.Fatalf("top finding %s %q, want %s; all: %v", top.Rule, top.Title, tt.rule, rulesOf(fs))
			}
			for _, f := range fs {
				if f.Rule == "noisy-neighbour" && tt.rule != "noisy-neighbour" {
					t.Errorf("noisy-neighbour fired too: %q", f.Title)
				}
				if f.Rule == "tag-starvation" && tt.rule == "noisy-neighbour" {
					t.Errorf("tag-starvation did not yield: %q", f.Title)
				}
			}
			if tt.rule != "noisy-neighbour" {
				return
			}
			var cause, victims []string
			for _, p := range top.Processes {
				switch p.Part {
				case "cause":
					cause = append(cause, p.Comm)
					if p.Cgroup != "/batch" {
						t.Errorf("cause %s in cgroup %q, want /batch", p.Comm, p.Cgroup)
					}
				case "victim":
					victims = append(victims, p.Comm)
					if p.Pid != ledger.Tgid {
						t.Errorf("victim %s named by pid %d, want its process %d", p.Comm, p.Pid, ledger.Tgid)
					}
				}
			}
			slices.Sort(cause)
			if !slices.Equal(cause, tt.cause) || !slices.Equal(victims, tt.victims) {
				t.Errorf("cause %v victims %v, want %v and %v", cause, victims, tt.cause, tt.victims)
			}
			if !strings.Contains(top.Title, "/batch") || !strings.Contains(top.Title, "ledger") || !strings.Contains(top.Title, "loop0") {
				t.Errorf("title %q names not the cgroup, the victim and the device", top.Title)
			}
			if top.Score != 100 {
				t.Errorf("score %v, want the victims' 100 ms of tag waits", top.Score)
			}
		})
	}
}
