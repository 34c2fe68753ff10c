package stackexport

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func kframes(names ...string) []event.Frame {
	out := make([]event.Frame, len(names))
	for i, n := range names {
		out[i] = event.Frame{Addr: 0xffffffff81000000 + uint64(i)*0x100, Symbol: n, Offset: uint64(0x10 * (i + 1)), Module: "kernel"}
	}
	return out
}

var (
	enter  = kframes("__schedule", "schedule", "__bio_queue_enter", "blk_mq_submit_bio", "__submit_bio", "vfs_write")
	freeze = kframes("__schedule", "schedule", "blk_mq_freeze_queue_wait", "elevator_change", "elv_iosched_store", "vfs_write")
	libc   = []event.Frame{{Addr: 0x7f0000001000, Symbol: "pwrite", Offset: 0x57, Module: "/usr/lib/x86_64-linux-gnu/libc.so.6"}, {Addr: 0x401000, Module: "/usr/bin/fio"}}
)

func story() *timeline.Timeline {
	tl := &timeline.Timeline{Start: 1e9, End: 11e9}
	fio := event.Task{Pid: 10, Tgid: 10, Comm: "fio"}
	udev := event.Task{Pid: 20, Tgid: 20, Comm: "(udev-worker)"}
	hostile := event.Task{Pid: 30, Tgid: 30, Comm: "a;b c\nd"}
	for i := 0; i < 3; i++ {
		// the offset differs: the same function, one group
		e := append([]event.Frame(nil), enter...)
		e[2].Offset += uint64(i)
		tl.Add(event.OffCPU{Start: event.Mono(2e9 + i*1e9), Duration: 15 * time.Millisecond, Task: fio, KernelStack: e, UserStack: libc})
	}
	tl.Add(event.OffCPU{Start: 2e9, Duration: 18 * time.Millisecond, Task: udev, KernelStack: freeze})
	tl.Add(event.OffCPU{Start: 3e9, Duration: 2500 * time.Microsecond, Task: hostile})
	tl.Sort()
	return tl
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test ./stackexport -update creates it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file:\n%s", path, got)
	}
}

func TestStacksGroupsAndRanks(t *testing.T) {
	st := Stacks(story())
	if len(st) != 3 {
		t.Fatalf("%d groups, want 3 (offsets in one function must not split a group): %+v", len(st), st)
	}
	if st[0].Comm != "fio" || st[0].Count != 3 || st[0].Micros() != 45000 || st[0].Kind != "queue-enter" {
		t.Errorf("first group = %s %s count %d %dµs", st[0].Comm, st[0].Kind, st[0].Count, st[0].Micros())
	}
	if st[1].Comm != "(udev-worker)" || st[1].Kind != "freeze-wait" || st[1].Micros() != 18000 {
		t.Errorf("second group = %s %s %dµs", st[1].Comm, st[1].Kind, st[1].Micros())
	}
}

func TestFolded(t *testing.T) {
	var b bytes.Buffer
	if err := Folded(&b, story()); err != nil {
		t.Fatal(err)
	}
	golden(t, "sample.folded", b.Bytes())
	for _, line := range strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n") {
		i := strings.LastIndexByte(line, ' ')
		if i < 0 || strings.ContainsAny(line[i+1:], "; ") {
			t.Errorf("line %q does not end in a value", line)
		}
	}
	if !strings.HasPrefix(b.String(), "fio;fio+0x401000;pwrite [libc.so.6];vfs_write;") {
		t.Errorf("first line is not root first (comm, user outermost, then kernel): %q", b.String())
	}
}

// The profile must parse with pprof itself and hold the blocked time.
func TestPprofParsesWithGoToolPprof(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH")
	}
	path := filepath.Join(t.TempDir(), "stacks.pb.gz")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := Pprof(f, story(), time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	f.Close()

	out, err := exec.Command(goBin, "tool", "pprof", "-raw", path).CombinedOutput()
	if err != nil {
		t.Fatalf("go tool pprof -raw: %v\n%s", err, out)
	}
	raw := string(out)
	if !regexp.MustCompile(`(?m)^\s+3\s+45000: `).MatchString(raw) || !regexp.MustCompile(`(?m)^\s+1\s+18000: `).MatchString(raw) {
		t.Errorf("pprof -raw lacks the samples 3/45000µs and 1/18000µs:\n%s", raw)
	}
	for _, want := range []string{"samples/count blocked/microseconds", "[no stack captured]", "__bio_queue_enter", "blk_mq_freeze_queue_wait", "pwrite", `comm:[fio]`, `kind:[freeze-wait]`} {
		if !strings.Contains(raw, want) {
			t.Errorf("pprof -raw output lacks %q:\n%s", want, raw)
		}
	}
	out, err = exec.Command(goBin, "tool", "pprof", "-top", "-sample_index=blocked", path).CombinedOutput()
	if err != nil {
		t.Fatalf("go tool pprof -top: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "65.50ms") && !strings.Contains(string(out), "65500us") {
		t.Errorf("pprof -top does not total 65.5ms of blocked time:\n%s", out)
	}
}

func TestEmptyTimeline(t *testing.T) {
	var b bytes.Buffer
	if err := Folded(&b, &timeline.Timeline{}); err != nil || b.Len() != 0 {
		t.Errorf("folded of nothing = %q, %v", b.String(), err)
	}
	b.Reset()
	if err := Pprof(&b, nil, time.Time{}); err != nil || b.Len() == 0 {
		t.Errorf("pprof of nothing: %d bytes, %v", b.Len(), err)
	}
}
