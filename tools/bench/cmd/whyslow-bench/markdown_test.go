package main

import (
	"encoding/json"
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "render tools/bench/results.json and tools/bench/results-vm into BENCHMARKS.md")

// BENCHMARKS.md holds, between its markers, what the generator makes of
// tools/bench/results.json: neither is edited by hand.
func TestBenchmarksMatchResults(t *testing.T) {
	js, err := os.ReadFile("../../results.json")
	if err != nil {
		t.Fatal(err)
	}
	var r Results
	if err := json.Unmarshal(js, &r); err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../../../../BENCHMARKS.md")
	if err != nil {
		t.Fatal(err)
	}
	got, ok := benchSection.body(string(doc))
	if !ok {
		t.Fatal("BENCHMARKS.md has no bench markers")
	}
	if *update {
		if err := writeMarkdown("../../../../BENCHMARKS.md", &r); err != nil {
			t.Fatal(err)
		}
		return
	}
	if want := renderMarkdown(&r); got != want {
		t.Errorf("BENCHMARKS.md differs from the rendering of tools/bench/results.json; rendering:\n%s", want)
	}
}

// The bench-vm section of BENCHMARKS.md is what the generator makes of
// tools/bench/results-vm/*.json, the guests' results of `make bench-vm`.
func TestBenchmarksMatchVMResults(t *testing.T) {
	runs, err := loadVMResults("../../results-vm")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../../../../BENCHMARKS.md")
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := writeVMResults("../../results-vm", "../../../../BENCHMARKS.md"); err != nil {
			t.Fatal(err)
		}
		return
	}
	got, ok := vmSection.body(string(doc))
	if !ok {
		t.Fatal("BENCHMARKS.md has no bench-vm markers")
	}
	if want := renderVM(runs); got != want {
		t.Errorf("BENCHMARKS.md differs from the rendering of tools/bench/results-vm; rendering:\n%s", want)
	}
}

// The bench-vm-serve section of BENCHMARKS.md is what the generator makes
// of tools/bench/results-vm-serve.json, the guest's result of `make
// bench-vm-serve`, or says there is none yet.
func TestBenchmarksMatchVMServeResults(t *testing.T) {
	const file, doc = "../../results-vm-serve.json", "../../../../BENCHMARKS.md"
	want := noVMServeRun
	if _, err := os.Stat(file); err == nil {
		r, err := loadVMServeResults(file)
		if err != nil {
			t.Fatal(err)
		}
		want = renderVMServe(r)
		if *update {
			if err := writeVMServeResults(file, doc); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	text, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := vmServeSection.body(string(text))
	if !ok {
		t.Fatal("BENCHMARKS.md has no bench-vm-serve markers")
	}
	if got != want {
		t.Errorf("BENCHMARKS.md's bench-vm-serve section differs from the rendering of %s; rendering:\n%s", file, want)
	}
}

func TestParseFio(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want fioConfig
		ok   bool
	}{
		{"libaio,32,2", fioConfig{Engine: "libaio", Depth: 32, Jobs: 2}, true},
		{"io_uring,1,1", fioConfig{Engine: "io_uring", Depth: 1, Jobs: 1}, true},
		{"libaio,32", fioConfig{}, false},
		{"libaio,0,2", fioConfig{}, false},
		{",32,2", fioConfig{}, false},
		{"libaio,x,2", fioConfig{}, false},
	} {
		got, err := parseFio(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseFio(%q) = %+v, %v", tt.in, got, err)
		}
	}
}

func TestSelectTools(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want []string
		ok   bool
	}{
		{"none,whyslow,libbpf-tools,bpftrace", []string{"none", "whyslow", "libbpf-tools", "bpftrace"}, true},
		{"none,whyslow,libbpf-tools", []string{"none", "whyslow", "libbpf-tools"}, true},
		{"whyslow,none", nil, false},
		{"none,perf", nil, false},
		{"", nil, false},
	} {
		ts, err := selectTools(strings.Split(tt.in, ","))
		var got []string
		for _, x := range ts {
			got = append(got, x.name)
		}
		if (err == nil) != tt.ok || strings.Join(got, ",") != strings.Join(tt.want, ",") {
			t.Errorf("selectTools(%q) = %v, %v", tt.in, got, err)
		}
	}
}

// A guest has no bpftrace, perf or losetup: the io section on a given
// device with whyslow and libbpf-tools needs none of them.
func TestNeededPrograms(t *testing.T) {
	for _, tt := range []struct {
		o    options
		want string
	}{
		{options{sections: map[string]bool{"io": true}, device: "/dev/nullb0", configs: []string{"none", "whyslow", "libbpf-tools"}},
			"fio,biolatency,stdbuf,execsnoop"},
		{options{sections: map[string]bool{"io": true, "sched": true}, configs: []string{"none", "bpftrace"}},
			"fio,losetup,biolatency,stdbuf,bpftrace,perf,taskset"},
	} {
		selected, err := selectTools(tt.o.configs)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(neededPrograms(tt.o, selected), ","); got != tt.want {
			t.Errorf("configs %v: needed %s, want %s", tt.o.configs, got, tt.want)
		}
	}
}

// A new file gets the markers; a stale begin marker is rewritten; text
// around the section stays.
func TestSectionReplace(t *testing.T) {
	s := section{"<!-- x:begin: today -->", "<!-- x:end -->"}
	for _, tt := range []struct {
		doc, want string
		ok        bool
	}{
		{"a\n<!-- x:begin: today -->\nold\n<!-- x:end -->\nb\n", "a\n<!-- x:begin: today -->\nnew\n<!-- x:end -->\nb\n", true},
		{"a\n<!-- x:begin: yesterday -->\nold\n<!-- x:end -->\n", "a\n<!-- x:begin: today -->\nnew\n<!-- x:end -->\n", true},
		{"a\n<!-- x:end -->\n<!-- x:begin: today -->\n", "a\n<!-- x:end -->\n<!-- x:begin: today -->\n", false},
		{"a\n", "a\n", false},
	} {
		got, ok := s.replace(tt.doc, "new\n")
		if got != tt.want || ok != tt.ok {
			t.Errorf("replace(%q) = %q, %v; want %q, %v", tt.doc, got, ok, tt.want, tt.ok)
		}
		if body, bok := s.body(got); ok && (!bok || body != "new\n") {
			t.Errorf("body(%q) = %q, %v", got, body, bok)
		}
	}
	path := t.TempDir() + "/B.md"
	r := &Results{}
	if err := writeMarkdown(path, r); err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if body, ok := benchSection.body(string(doc)); !ok || body != renderMarkdown(r) || !strings.HasPrefix(string(doc), "# Benchmarks\n\n") {
		t.Errorf("new file:\n%s", doc)
	}
}

// The floor rows of the sched section are rendered after whyslow's, with
// their ratios against no tracing.
func TestSchedFloorRows(t *testing.T) {
	r := &Results{Sched: &SchedResult{
		Command: "taskset -c 0 perf bench sched pipe -l 100000", Rounds: 3,
		None: spread{Median: 5}, Whyslow: spread{Median: 8}, Ratio: spread{Median: 1.6},
		Rows: []SchedRow{{Name: "empty-all", What: "empty programs on all four", UsPerOp: spread{Median: 6.25, P25: 6.1, P75: 6.4}, Ratio: spread{Median: 1.25, P25: 1.2, P75: 1.3}}},
	}}
	out := renderMarkdown(r)
	want := "| empty programs on all four | 6.25 (6.10–6.40) | 1.250 (1.200–1.300) |"
	if !strings.Contains(out, want) {
		t.Errorf("rendered sched section lacks the floor row %q:\n%s", want, out)
	}
	if !strings.Contains(out, "The empty programs") {
		t.Errorf("rendered sched section does not say what the empty programs are:\n%s", out)
	}
}
