package main

// The files whyslow writes: a failed write never destroys what was at the
// path (a device node, a link, a file an earlier output completed), one
// file given twice or an input given as an output is a usage error before
// any work, and the --record trace of a live run stays when its report
// cannot be written.

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/scenario"
	"github.com/whyslow/whyslow/internal/tracefile"
)

var controlTrace = filepath.Join(tracesDir, "loop-control.trace.gz")

// fullDevice makes, in dir, a device node like /dev/full (every write
// fails with ENOSPC) and a link to it.
func fullDevice(t *testing.T, dir string) (node, link string) {
	t.Helper()
	scenario.RequireRoot(t)
	node, link = filepath.Join(dir, "full"), filepath.Join(dir, "link-to-full")
	if err := unix.Mknod(node, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 7))); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(node, link); err != nil {
		t.Fatal(err)
	}
	return node, link
}

// unchanged fails unless path is still the file fi was (same inode, same
// type: a link is still a link).
func unchanged(t *testing.T, path string, fi os.FileInfo) {
	t.Helper()
	now, err := os.Lstat(path)
	if err != nil {
		t.Errorf("%s is gone: %v", path, err)
		return
	}
	if !os.SameFile(fi, now) || now.Mode() != fi.Mode() {
		t.Errorf("%s was replaced: %v, was %v", path, now.Mode(), fi.Mode())
	}
}

func lstat(t *testing.T, path string) os.FileInfo {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

// A write that fails (a device that is full) leaves the device node, or
// the link to it, where it was; an output completed before stays.
func TestFailedWriteKeepsWhatWasThere(t *testing.T) {
	dir := t.TempDir()
	node, link := fullDevice(t, dir)
	nodeFI, linkFI := lstat(t, node), lstat(t, link)
	good := filepath.Join(dir, "good.txt")
	tests := []struct {
		name string
		args []string
		want string // in the error
	}{
		{"device node as --output", []string{"-o", node}, "--output " + node + ": no space left on device"},
		{"link to it as --output", []string{"-o", link}, "--output " + link + ": no space left on device"},
		{"good --output, bad --folded", []string{"-o", good, "--folded", link}, "--folded " + link + ": no space left on device"},
		{"bad --stacks-out, then --folded", []string{"-o", os.DevNull, "--stacks-out", node, "--folded", good}, "--stacks-out " + node},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(good)
			r := run(t, append([]string{"analyze", controlTrace}, tt.args...)...)
			checkOneLineError(t, r, 1, tt.want)
			unchanged(t, node, nodeFI)
			unchanged(t, link, linkFI)
			for _, a := range tt.args {
				if a == good {
					if b, err := os.ReadFile(good); err != nil || len(b) == 0 {
						t.Errorf("the output completed before is gone: %v", err)
					}
				}
			}
		})
	}
	names, _ := os.ReadDir(dir)
	if len(names) != 3 {
		t.Errorf("files left in the directory: %v", names)
	}
}

// One file named twice, by any spelling, is exit 2 before any work: the
// file is not touched.
func TestOneFileTwice(t *testing.T) {
	dir := t.TempDir()
	report := filepath.Join(dir, "r.txt")
	if err := os.WriteFile(report, []byte("yesterday's report"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("r.txt", filepath.Join(dir, "link.txt")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
	}{
		{"./ form", []string{"-o", "r.txt", "--folded", "./r.txt"}},
		{"through a link", []string{"-o", "r.txt", "--stacks-out", "link.txt"}},
		{"absolute and relative", []string{"-o", report, "--folded", "r.txt"}},
		{"not there yet", []string{"-o", "new.txt", "--folded", "./new.txt"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runIn(t, dir, append([]string{"analyze", controlTrace}, tt.args...)...)
			checkOneLineError(t, r, 2, "the same file")
		})
	}
	if b, _ := os.ReadFile(report); string(b) != "yesterday's report" {
		t.Errorf("r.txt now holds %q", b)
	}
	if names, _ := os.ReadDir(dir); len(names) != 2 {
		t.Errorf("files in the directory: %v", names)
	}
	// The report on standard output and an output naming it.
	r := run(t, "analyze", controlTrace, "--folded", "/dev/stdout")
	checkOneLineError(t, r, 2, "--folded and standard output (the report) name the same file")
}

// The trace analyze reads is no output of it, under any name.
func TestInputAsOutput(t *testing.T) {
	dir := t.TempDir()
	trace := filepath.Join(dir, "v.gz")
	orig, err := os.ReadFile(controlTrace)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(trace, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("v.gz", filepath.Join(dir, "alias.gz")); err != nil {
		t.Fatal(err)
	}
	rule := filepath.Join(dir, "mine.yaml")
	if err := os.WriteFile(rule, []byte(brokenRuleYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"analyze", "v.gz", "-o", "v.gz"},
		{"analyze", "v.gz", "--folded", "./alias.gz"},
		{"analyze", "alias.gz", "--stacks-out", "v.gz"},
		{"analyze", "v.gz", "--rules", "mine.yaml", "-o", "mine.yaml"},
	} {
		r := runIn(t, dir, args...)
		checkOneLineError(t, r, 2, "would destroy it")
	}
	if b, _ := os.ReadFile(trace); !bytes.Equal(b, orig) {
		t.Errorf("the trace was changed")
	}
	if b, _ := os.ReadFile(rule); string(b) != brokenRuleYAML {
		t.Errorf("the rule file was changed")
	}
}

// brokenRuleYAML is any rule file: TestInputAsOutput never gets to read it.
const brokenRuleYAML = "id: mine\n"

// runIn runs whyslow in dir.
func runIn(t *testing.T, dir string, args ...string) result {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	defer os.Chdir(wd)
	return run(t, args...)
}

// A live run whose report cannot be written keeps its --record trace, and
// the device node it was to write the report to.
func TestDiagnoseKeepsTheTraceWhenTheReportFails(t *testing.T) {
	dir := t.TempDir()
	node, _ := fullDevice(t, dir)
	nodeFI := lstat(t, node)
	trace := filepath.Join(dir, "run.trace.gz")
	r := run(t, "diagnose", "storage", "--duration", "1s", "--record", trace, "-o", node)
	checkOneLineError(t, r, 1, "--output "+node+": no space left on device")
	unchanged(t, node, nodeFI)
	tl, _, err := tracefile.ReadFile(trace)
	if err != nil {
		t.Fatalf("the trace is gone or broken: %v", err)
	}
	if len(tl.Probes) == 0 || tl.End <= tl.Start {
		t.Errorf("the trace holds no run: %d probes, window %d..%d", len(tl.Probes), tl.Start, tl.End)
	}
	if names, _ := os.ReadDir(dir); len(names) != 3 {
		t.Errorf("files in the directory: %v", names)
	}
	if strings.Contains(r.stderr, ".tmp") {
		t.Errorf("the error names a temporary file: %s", r.stderr)
	}
}

// A --record trace that cannot be written (the device is full) costs the
// trace only: the run goes on, its report is written, and the exit code
// and one line say what failed.
func TestDiagnoseRecordFails(t *testing.T) {
	dir := t.TempDir()
	node, link := fullDevice(t, dir)
	nodeFI, linkFI := lstat(t, node), lstat(t, link)
	report := filepath.Join(dir, "r.txt")
	r := run(t, "diagnose", "storage", "--duration", "2s", "--record", link, "-o", report)
	checkOneLineError(t, r, 1, "--record "+link+": no space left on device")
	unchanged(t, node, nodeFI)
	unchanged(t, link, linkFI)
	if b, err := os.ReadFile(report); err != nil || !strings.Contains(string(b), "storage diagnosis") {
		t.Errorf("no report: %v", err)
	}
}
