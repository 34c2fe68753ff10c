package rules

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
)

// Stacks of a storage call's sleeps, one per stage.
var (
	callTagWait = stack("__schedule", "schedule", "io_schedule", "blk_mq_get_tag", "__blk_mq_alloc_requests", "blk_mq_submit_bio")
	callDevice  = stack("__schedule", "schedule", "io_schedule", "submit_bio_wait", "blkdev_issue_flush", "blkdev_fsync")
	callOther   = stack("__schedule", "schedule", "msleep", "acme_wait", "acme_ioctl")
	callOther2  = stack("__schedule", "schedule", "schedule_timeout", "acme_poll", "acme_read")
	callJournal = stack("__schedule", "schedule", "jbd2_log_wait_commit", "ext4_sync_file", "do_fsync")
	callLock    = stack("__schedule", "schedule", "rwsem_down_write_slowpath", "down_write", "ext4_buffered_write_iter")
)

// commits adds n journal commits of ms each on d, over the run, each one
// that someone waited for (jbd2, probe writeback).
func (s *scenario) commits(d event.Device, n int, ms float64) *scenario {
	for i := range n {
		s.tl.Add(event.JournalCommit{Start: at(300 + float64(i)*19_000/float64(n)), Duration: msd(ms), Dev: d, FsDev: d.Name,
			Tid: uint32(i + 1), Sync: true, Logging: msd(ms)})
	}
	return s
}

// calls adds n storage calls of call by tk on d over the run, each ms
// long and asleep all of it, in the stacks given (an equal part in each):
// the kernel's sums, the process's cgroup, and each call of at least
// --min-latency as a slow call.
func (s *scenario) calls(tk event.Task, cgroup string, d event.Device, call string, n int, ms float64, stacks ...[]event.Frame) *scenario {
	s.tl.Add(event.Process{Time: at(100), Pid: tk.Tgid, Comm: tk.Comm, Cgroup: cgroup})
	var h hist.Histogram
	for range n {
		h.Add(uint64(msd(ms)))
	}
	total := msd(ms * float64(n))
	s.tl.Add(event.SyscallStats{Time: at(20_000), Pid: tk.Tgid, Comm: tk.Comm, Call: call, Dev: d, Latency: hist.Compact(&h), Sleep: total})
	for _, st := range stacks {
		s.tl.Add(event.BlockedStack{Time: at(20_000), Pid: tk.Tgid, Comm: tk.Comm, Call: call, Dev: d,
			Total: total / time.Duration(len(stacks)), Count: uint64(n), KernelStack: st})
	}
	if msd(ms) >= s.tl.MinLatency {
		for i := range n {
			s.tl.Add(event.Syscall{Start: at(500 + float64(i)*19_000/float64(n)), Duration: msd(ms), Task: tk, Call: call, Dev: d, Sleep: msd(ms)})
		}
	}
	return s
}

// Slow storage calls that no finding explains: unexplained-latency, naming
// the processes as victims, with their time and its split by stage; calls
// that are fast, few, or explained by a finding on their device: not.
func TestUnexplainedLatency(t *testing.T) {
	tests := []struct {
		name string
		sc   *scenario
		// rules the findings must be, in rank order
		rules []string
	}{
		{"a throttled writer", newScenario().fast(loop0).
			calls(ledger, "/db", loop0, "pwrite64", 400, 25, callDevice),
			[]string{"unexplained-latency"}},
		{"a writer sleeping in a driver no stage knows", newScenario().fast(loop0).
			calls(ledger, "/db", loop0, "pread64", 100, 40, callOther).calls(ledger, "/db", loop0, "fdatasync", 100, 10, callDevice),
			[]string{"unexplained-latency"}},
		{"fast calls", newScenario().fast(loop0).
			calls(ledger, "/db", loop0, "pwrite64", 20_000, 0.05, callDevice),
			[]string{"nothing-found"}},
		{"a handful of slow calls", newScenario().fast(loop0).
			calls(ledger, "/db", loop0, "fdatasync", 3, 20, callDevice),
			[]string{"nothing-found"}},
		{"slow calls on a device a finding explains", newScenario().slow(sda).
			calls(ledger, "/db", sda, "pwrite64", 400, 45, callDevice),
			[]string{"slow-device"}},
		{"explained on one device, not on another", newScenario().slow(sda).fast(loop0).
			calls(ledger, "/db", sda, "pwrite64", 400, 45, callDevice).calls(other, "/", loop0, "fsync", 300, 30, callDevice),
			[]string{"slow-device", "unexplained-latency"}},
		// A finding explains the stages its rule declares, of the
		// processes it names and those on its devices: the rest of
		// their wait is still unexplained.
		{"a journal finding names a writer whose wait is mostly a lock", newScenario().fast(loop0).commits(loop0, 50, 30).
			calls(archiver, "/", loop0, "pwrite64", 40, 50, callLock).calls(archiver, "/", loop0, "fdatasync", 40, 10, callJournal),
			// The cause found ranks first; what it leaves unexplained follows.
			[]string{"journal-commit-wait", "unexplained-latency"}},
		{"a journal finding names a writer whose wait is mostly the journal", newScenario().fast(loop0).commits(loop0, 50, 30).
			calls(archiver, "/", loop0, "pwrite64", 4, 20, callLock).calls(archiver, "/", loop0, "fdatasync", 100, 30, callJournal),
			[]string{"journal-commit-wait"}},
		{"a slow device explains the wait for it, not a lock", newScenario().slow(sda).
			calls(ledger, "/db", sda, "pwrite64", 400, 45, callDevice).calls(other, "/", sda, "fsync", 300, 30, callLock),
			[]string{"slow-device", "unexplained-latency"}},
		{"the victims of a noisy neighbour", newScenario().fast(loop0).
			use(scan, "/batch", loop0, "read", 90_000, 360_000).use(ledger, "/", loop0, "write", 2000, 6000).
			calls(ledger, "/", loop0, "fdatasync", 2000, 20, callTagWait, callDevice),
			[]string{"noisy-neighbour"}},
	}
	// What unexplained-latency must say, by test: its time and stages.
	type left struct {
		ms                float64
		stages, explained []string
	}
	lefts := map[string]left{
		// The writes' 2000 ms in the lock; the syncs' 400 ms journal
		// the journal finding explains.
		"a journal finding names a writer whose wait is mostly a lock": {2000, []string{"lock"}, []string{"journal"}},
		// slow-device is about sda but explains no stage of indexer's.
		"a slow device explains the wait for it, not a lock": {9000, []string{"lock"}, nil},
		"a writer sleeping in a driver no stage knows":       {5000, []string{"other", "device"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := evaluate(t, defaults(t), tt.sc.run())
			if got := rulesOf(fs); !slices.Equal(got, tt.rules) {
				t.Fatalf("findings %v, want %v: %v", got, tt.rules, titles(fs))
			}
			for _, f := range fs {
				if f.Rule == "journal-commit-wait" && !slices.ContainsFunc(f.Processes, func(p Process) bool { return p.Comm == "archiver" }) {
					t.Errorf("journal-commit-wait names %+v, want archiver, whose syncs waited for the journal", f.Processes)
				}
				if f.Rule == "slow-device" && slices.Contains(f.Devices, "sda") {
					if len(f.Processes) != 1 || f.Processes[0].Comm != "ledger" || f.Processes[0].Part != "victim" {
						t.Errorf("slow-device names %+v, want ledger, whose calls waited for sda, as its victim", f.Processes)
					}
				}
				if f.Rule != "unexplained-latency" {
					continue
				}
				if len(f.Processes) == 0 {
					t.Fatalf("unexplained-latency names no process: %q", f.Title)
				}
				for _, p := range f.Processes {
					if p.Part != "victim" {
						t.Errorf("process %s has part %q, want victim", p.Comm, p.Part)
					}
					if !strings.Contains(f.Title, p.Comm) {
						t.Errorf("title %q does not name %s", f.Title, p.Comm)
					}
				}
				if f.Score <= 0 {
					t.Errorf("score %v: want the slow calls' time", f.Score)
				}
				for _, name := range []string{"slow_ms", "unexplained_ms", "stages", "stage_pct", "devices"} {
					if evidence(f, name) == nil {
						t.Errorf("no evidence %s: %v", name, f.Evidence)
					}
				}
				// Its time and stages are those no finding explains.
				if want, ok := lefts[tt.name]; ok {
					got, _ := evidence(f, "unexplained_ms").(float64)
					if math.Abs(got-want.ms) > 1 || f.Score != got {
						t.Errorf("unexplained_ms %v, score %v, want %v", got, f.Score, want.ms)
					}
					if st := strsOf(evidence(f, "stages")); !slices.Equal(st, want.stages) {
						t.Errorf("stages %v, want %v", st, want.stages)
					}
					if ex := strsOf(evidence(f, "explained_stages")); !slices.Equal(ex, want.explained) {
						t.Errorf("explained_stages %v, want %v", ex, want.explained)
					}
				}
			}
		})
	}
}

// titles are the findings' rules and titles, for messages.
func titles(fs []Finding) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Rule+": "+f.Title)
	}
	return out
}

// evidence returns the value of f's evidence item name, or nil.
func evidence(f Finding, name string) any {
	for _, e := range f.Evidence {
		if e.Name == name {
			return e.Value
		}
	}
	return nil
}

// strsOf returns an evidence value that is a list of strings as one.
func strsOf(v any) []string {
	var out []string
	switch x := v.(type) {
	case []string:
		out = x
	case []any:
		for _, e := range x {
			s, _ := e.(string)
			out = append(out, s)
		}
	}
	return out
}
