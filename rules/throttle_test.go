package rules

import (
	"strings"
	"testing"

	"github.com/whyslow/whyslow/internal/event"
)

var (
	dd        = event.Task{Pid: 700, Tgid: 700, Comm: "dd"}
	readWait  = stack("__schedule", "schedule", "io_schedule_timeout", "submit_bio_wait", "__blkdev_direct_IO_simple")
	heldLimit = uint64(4096)
)

// heldRead: cgroup /hung (v1) may read 4 KiB/s from d, and dd, in it,
// issued one 1 MiB O_DIRECT read at 1 s that is still held at the end of
// the run. Its counters count the read's bytes when the throttle took it:
// 1 MiB between the readings at 0.5 s and 1.5 s, far above the limit.
func (s *scenario) heldRead(d event.Device) *scenario {
	s.tl.Add(event.IOLimit{Time: at(0), Cgroup: "/hung", V1: true, Dev: d, Limit: "rbps", Value: heldLimit})
	for _, c := range []struct {
		ms    float64
		bytes uint64
	}{{0, 0}, {500, 0}, {1500, 1 << 20}, {20_000, 1 << 20}} {
		s.tl.Add(event.CgroupIO{Time: at(c.ms), Cgroup: "/hung", V1: true, Dev: d, Reads: c.bytes >> 20, ReadBytes: c.bytes})
	}
	s.tl.Add(event.CgroupMember{Time: at(500), Cgroup: "/hung", V1: true, Pid: dd.Tgid, Comm: dd.Comm})
	s.tl.Add(event.Process{Time: at(1000), Pid: dd.Tgid, Comm: dd.Comm, Blkio: "/hung"})
	s.tl.Add(event.UnfinishedCall{Time: at(20_000), Start: at(1000), Task: dd, Call: "read", Dev: d,
		InCall: msd(19_000), Asleep: msd(19_000), KernelStack: readWait})
	return s
}

// A read a v1 limit holds past the run: cgroup-throttle says it is held
// and for how long, never that the cgroup's reads ran at some multiple of
// the limit (its counters count the bytes before they are served).
func TestCgroupThrottleHeldRead(t *testing.T) {
	fs := evaluate(t, defaults(t), newScenario().fast(loop0).heldRead(loop0).run())
	if len(fs) == 0 || fs[0].Rule != "cgroup-throttle" {
		t.Fatalf("findings %v, want cgroup-throttle first", rulesOf(fs))
	}
	f := fs[0]
	text := f.Title + " " + f.Explanation
	for _, want := range []string{"/hung", "loop0", "still held when the run ended", "19 s in the kernel", "before it is served"} {
		if !strings.Contains(text, want) {
			t.Errorf("text does not say %q: %s", want, text)
		}
	}
	if strings.Contains(text, "while it did I/O") {
		t.Errorf("text says the reads ran at a rate while they did I/O: %s", text)
	}
}
