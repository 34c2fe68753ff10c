package stage

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The research's 125 real stacks (testdata/stacks/<kernel>/, recorded on
// 5.10, 6.1, 6.12 and 6.18, cut walks and trampoline frames included) get
// the stage expected.tsv says the table must give from the stack alone.
func TestResearchStacks(t *testing.T) {
	f, err := os.Open("testdata/stacks/expected.tsv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tab := Default()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		cols := strings.Split(line, "\t")
		path, want := cols[0], cols[1]
		t.Run(path, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata/stacks", path))
			if err != nil {
				t.Fatal(err)
			}
			got := tab.Classify(strings.Split(string(data), "\n"), "")
			if got.Stage != want {
				t.Errorf("stage %s (by %q, %s), want %s: %s", got.Stage, got.Frame, got.Confidence, want, cols[len(cols)-1])
			}
		})
		n++
	}
	if n != 125 {
		t.Errorf("%d stacks in expected.tsv, want the research's 125", n)
	}
}

func TestClassify(t *testing.T) {
	fsyncWait := []string{"__schedule+0x1", "schedule", "io_schedule", "folio_wait_bit_common", "folio_wait_writeback",
		"__filemap_fdatawait_range", "file_write_and_wait_range.isra.0"}
	writeWait := []string{"__schedule", "schedule", "io_schedule", "folio_wait_bit_common", "folio_wait_writeback",
		"folio_wait_stable", "ext4_write_begin", "generic_perform_write"}
	for _, tc := range []struct {
		name   string
		frames []string
		call   string
		want   Result
	}{
		{"empty", nil, "", Result{Stage: Other}},
		{"queue enter", []string{"__schedule+0x628", "schedule+0x23", "__bio_queue_enter+0x149", "blk_mq_submit_bio"}, "pwrite64",
			Result{QueueFreeze, "__bio_queue_enter", High}},
		{"tag beats device", []string{"__schedule", "schedule", "io_schedule", "blk_mq_get_tag", "__blk_mq_alloc_requests", "submit_bio_wait"}, "pwrite64",
			Result{TagWait, "blk_mq_get_tag", High}},
		{"trampolines and repeats", []string{"__schedule", "schedule", "__bio_queue_enter", "bpf_trampoline_6442478979", "__bio_queue_enter"}, "",
			Result{QueueFreeze, "__bio_queue_enter", High}},
		{"sync call's writeback is its own I/O", writeWait, "fsync", Result{Device, "folio_wait_writeback", High}},
		{"write's writeback wait", writeWait, "write", Result{WritebackWait, "folio_wait_writeback", High}},
		{"fsync frames say device", fsyncWait, "", Result{Device, "folio_wait_writeback", High}},
		{"any io_schedule", []string{"__schedule", "schedule", "io_schedule", "mystery_wait"}, "read",
			Result{Device, "io_schedule", Low}},
		{"cut walk, stage frame innermost", []string{"blk_queue_enter+0x5", "submit_bio_noacct"}, "",
			Result{QueueFreeze, "blk_queue_enter", Truncated}},
		{"cut walk, no stage frame", []string{"__submit_bio+0x5", "submit_bio_noacct_nocheck", "blkdev_direct_IO"}, "",
			Result{Other, "truncated: __submit_bio", ""}},
		{"unknown", []string{"__schedule", "schedule", "msleep", "my_driver_wait", "my_driver_ioctl"}, "write",
			Result{Other, "msleep <- my_driver_wait <- my_driver_ioctl", ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Default().Classify(tc.frames, tc.call); got != tc.want {
				t.Errorf("Classify = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// A user's table file adds rules tried before the built-in ones, and
// frames to its lists; bad files fail naming the file, line and problem.
func TestLoad(t *testing.T) {
	dir := t.TempDir()
	user := filepath.Join(dir, "mine.yaml")
	if err := os.WriteFile(user, []byte(`version: 1
ignore:
  prefixes: [my_tracer_]
generic: [my_wait]
rules:
  - stage: lock
    frames: [my_driver_lock]
  - stage: device
    frames: [msleep]
    calls: [ioctl]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	tab, err := Load(user)
	if err != nil {
		t.Fatal(err)
	}
	if got := tab.Classify([]string{"__schedule", "schedule", "my_wait", "my_tracer_hook", "my_driver_lock"}, "write"); got.Stage != Lock {
		t.Errorf("user rule: %+v, want lock", got)
	}
	if got := tab.Classify([]string{"__schedule", "schedule", "__bio_queue_enter"}, "write"); got.Stage != QueueFreeze {
		t.Errorf("built-in rules after the user's: %+v", got)
	}
	if got := tab.Classify([]string{"__schedule", "schedule", "msleep"}, "write"); got.Stage != Other {
		t.Errorf("calls context not met: %+v, want other", got)
	}
	if got := Default().Classify([]string{"__schedule", "schedule", "my_driver_lock"}, ""); got.Stage != Other {
		t.Errorf("the built-in table changed: %+v", got)
	}
	for _, tc := range []struct{ name, data, want string }{
		{"unknown stage", "version: 1\nrules:\n  - stage: disk\n    frames: [x]\n", "bad.yaml:3: rule 1: stage \"disk\" is none of"},
		{"unknown key", "version: 1\nrulez: []\n", "line 2: unknown key \"rulez\""},
		{"unknown rule key", "version: 1\nrules:\n  - stage: lock\n    frame: [x]\n", "line 4: unknown rule key \"frame\""},
		{"no frames", "version: 1\nrules:\n  - stage: lock\n", "rule 1 (lock): no frames"},
		{"no version", "rules: []\n", "version 0: want version: 1"},
		{"not yaml", "version: [1\n", "bad.yaml: yaml:"},
		{"bad confidence", "version: 1\nrules:\n  - stage: lock\n    frames: [x]\n    confidence: sure\n", "confidence \"sure\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "bad.yaml")
			os.WriteFile(p, []byte(tc.data), 0o644)
			_, err := Load(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Load: %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: %v", err)
	}
}
