package rules

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// render prints findings the way a reader sees them, for golden files.
func render(fs []Finding) string {
	var b strings.Builder
	for _, f := range fs {
		fmt.Fprintf(&b, "#%d [%s] %s score %.1f devices %v\n  %s\n", f.Rank, f.Severity, f.Rule, f.Score, f.Devices, f.Title)
		for _, s := range f.Steps {
			fmt.Fprintf(&b, "  step %s: %s\n", s.Rule, s.Title)
		}
		if t := f.Trigger; t != nil {
			fmt.Fprintf(&b, "  trigger: %s %v (pid %d, parent %s %d), %d runs every %v\n", t.Filename, t.Args, t.Pid, t.ParentComm, t.PPid, t.Count, t.Period)
		}
		for _, p := range f.Processes {
			fmt.Fprintf(&b, "  process: %s %d %s %s %s\n", p.Comm, p.Pid, p.Role, p.Part, p.Cgroup)
		}
		fmt.Fprintf(&b, "  explain:\n%s\n  remedy:\n%s\n", f.Explanation, f.Remedy)
		for _, e := range f.Evidence {
			fmt.Fprintf(&b, "  evidence %s = %v\n", e.Name, e.Value)
		}
		b.WriteString("\n")
	}
	return b.String()
}

func TestFindingsGolden(t *testing.T) {
	tests := []struct {
		file string
		sc   *scenario
	}{
		{"testdata/golden_udev_chain_and_slow_disk.txt", newScenario().fast(loop0).udevChain(loop0).slow(sda)},
		{"testdata/golden_nothing_found.txt", newScenario().fast(loop0)},
		{"testdata/golden_noisy_neighbour.txt", newScenario().fast(loop0).
			use(scan, "/batch", loop0, "read", 90_000, 360_000).use(ledger, "/", loop0, "write", 2000, 6000).
			tagWaits(scan, loop0, 30, 4).tagWaits(ledger, loop0, 20, 5)},
		{"testdata/golden_noisy_neighbour_calls.txt", newScenario().fast(loop0).
			use(scan, "/batch", loop0, "read", 90_000, 360_000).use(ledger, "/", loop0, "write", 2000, 6000).
			calls(ledger, "/", loop0, "fdatasync", 2000, 20, callTagWait, callDevice)},
		{"testdata/golden_unexplained_latency.txt", newScenario().fast(loop0).
			calls(ledger, "/db", loop0, "pread64", 100, 40, callOther, callOther, callOther2).calls(ledger, "/db", loop0, "fdatasync", 100, 10, callDevice)},
		// iocost held fio: what the iocost probe saw says by how much; without
		// it, the stacks alone name the cause.
		{"testdata/golden_iocost.txt", newScenario().fast(loop0).
			calls(fio, "/ioc", loop0, "io_submit", 600, 8, callIOCost).iocost(loop0, "/ioc")},
		// SCSI commands time out on sda: the finding says which, and that
		// the error handler of its host ran.
		{"testdata/golden_failing_scsi.txt", newScenario().fast(loop0).scsiTimeouts(sda, 3)},
		{"testdata/golden_iocost_untraced.txt", newScenario().fast(loop0).
			calls(fio, "/ioc", loop0, "io_submit", 600, 8, callIOCost)},
		// Two sync jobs keep loop0 busy with their own I/O: device-saturated,
		// no unexplained-latency.
		{"testdata/golden_device_saturated.txt", newScenario().serve(loop0, 8000, msd(4.5), msd(0.005)).
			syncJob(fio, "/", loop0, 2000, 9).syncJob(fio2, "/", loop0, 2000, 9)},
		// A v1 read limit holds one read past the run: it is held, not
		// running at a multiple of the limit.
		{"testdata/golden_cgroup_throttle_held.txt", newScenario().fast(loop0).heldRead(loop0)},
		{"testdata/golden_unexplained_partly.txt", newScenario().fast(loop0).commits(loop0, 50, 30).
			calls(archiver, "/", loop0, "pwrite64", 40, 50, callLock, callOther).calls(archiver, "/", loop0, "fdatasync", 40, 10, callJournal)},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got := render(evaluate(t, defaults(t), tt.sc.run()))
			if *update {
				if err := os.WriteFile(tt.file, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(tt.file)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			if got != string(want) {
				t.Errorf("findings differ from %s (run with -update after checking):\n%s", tt.file, got)
			}
		})
	}
}
