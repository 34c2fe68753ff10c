package cmd

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestAnalyzeFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want AnalyzeOptions
	}{
		{"defaults", []string{"t.gz"}, AnalyzeOptions{Trace: "t.gz", Outputs: Outputs{Format: "text", FailOn: "none"}}},
		{"everything", []string{"t.gz", "-f", "html", "-o", "r.html", "--device", "loop0", "--rules", "/r", "--fail-on", "critical", "--stacks-out", "s.pb.gz", "--folded", "s.folded"},
			AnalyzeOptions{Trace: "t.gz", RulesDir: "/r", Devices: []string{"loop0"}, Outputs: Outputs{Format: "html", Output: "r.html", FailOn: "critical", StacksOut: "s.pb.gz", Folded: "s.folded"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ios, _, _ := testIO()
			var got *AnalyzeOptions
			c := NewCmdAnalyze(ios, func(o *AnalyzeOptions) error { got = o; return nil })
			c.SetArgs(tt.args)
			if err := c.Execute(); err != nil {
				t.Fatal(err)
			}
			if got.Trace != tt.want.Trace || got.RulesDir != tt.want.RulesDir || !slices.Equal(got.Devices, tt.want.Devices) || got.Outputs != tt.want.Outputs {
				t.Fatalf("options\n got %+v\nwant %+v", *got, tt.want)
			}
		})
	}
}

func TestFormatsAndOutputsAreChecked(t *testing.T) {
	for _, args := range [][]string{
		{"analyze", "t.gz", "--format", "pdf"},
		{"diagnose", "storage", "--format", "xml"},
		{"diagnose", "storage", "--record", "x", "--folded", "x"},
		{"analyze", "t.gz", "--output", "r", "--stacks-out", "r"},
	} {
		ios, _, errb := testIO()
		if code := Execute(ios, args); code != ExitUsage {
			t.Errorf("%v: exit %d, want %d (%s)", args, code, ExitUsage, errb)
		}
	}
	for _, f := range []string{"markdown", "html"} {
		ios, _, errb := testIO()
		c := NewCmdStorage(ios, func(*StorageOptions) error { return nil })
		c.SetArgs([]string{"--format", f})
		if err := c.Execute(); err != nil {
			t.Errorf("--format %s refused: %v %s", f, err, errb)
		}
	}
}

// A failed analysis leaves none of the files it was to write.
func TestAnalyzeLeavesNoFilesOnError(t *testing.T) {
	dir := t.TempDir()
	trace := filepath.Join(dir, "bad.trace.gz")
	if err := os.WriteFile(trace, []byte("not a trace"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, folded := filepath.Join(dir, "r.md"), filepath.Join(dir, "s.folded")
	ios, _, errb := testIO()
	if code := Execute(ios, []string{"analyze", trace, "-f", "markdown", "-o", out, "--folded", folded}); code != ExitError {
		t.Fatalf("exit %d, want %d", code, ExitError)
	}
	if !strings.Contains(errb.String(), trace) {
		t.Errorf("error %q does not name the trace", errb)
	}
	for _, p := range []string{out, folded} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s was left behind", p)
		}
	}
}
