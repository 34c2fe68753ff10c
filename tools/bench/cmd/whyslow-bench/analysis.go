package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// AnalysisResult is the Go benchmarks of tools/bench/.
type AnalysisResult struct {
	Command string        `json:"command"`
	Rows    []AnalysisRow `json:"rows"`
}

// AnalysisRow is one benchmark at one size.
type AnalysisRow struct {
	Bench    string  `json:"bench"`
	Size     string  `json:"size"`
	Seconds  float64 `json:"seconds_per_op"`
	EventsPS float64 `json:"events_per_s"`
	MiBPerOp float64 `json:"alloc_mib_per_op"`
	AllocsOp float64 `json:"allocs_per_op"`
	TraceBPE float64 `json:"trace_bytes_per_event,omitempty"`
	// PeakHeapMiB is the most heap the storm benchmarks saw in use (input included).
	PeakHeapMiB float64 `json:"peak_heap_mib,omitempty"`
}

var benchLine = regexp.MustCompile(`^Benchmark(\w+)/(\w+)-\d+\s+\d+\s+(.*)$`)

func (b *bench) analysis() error {
	args := []string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-benchtime", "2x", "-timeout", "60m", "./tools/bench/"}
	cmd := exec.Command("go", args...)
	cmd.Env = os.Environ()
	if !b.o.no10M {
		cmd.Env = append(cmd.Env, "WHYSLOW_BENCH_10M=1")
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr
	b.logf("go %s", strings.Join(args, " "))
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go test -bench: %v\n%s", err, out.String())
	}
	res := &AnalysisResult{Command: "go " + strings.Join(args, " ")}
	if !b.o.no10M {
		res.Command = "WHYSLOW_BENCH_10M=1 " + res.Command
	}
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		row := AnalysisRow{Bench: m[1], Size: m[2]}
		f := strings.Fields(m[3])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ns/op":
				row.Seconds = v / 1e9
			case "events/s":
				row.EventsPS = v
			case "B/op":
				row.MiBPerOp = v / (1 << 20)
			case "allocs/op":
				row.AllocsOp = v
			case "trace-bytes/event":
				row.TraceBPE = v
			case "peak-heap-MiB":
				row.PeakHeapMiB = v
			}
		}
		res.Rows = append(res.Rows, row)
		b.logf("%s", sc.Text())
	}
	if len(res.Rows) == 0 {
		return fmt.Errorf("no benchmark results in:\n%s", out.String())
	}
	b.res.Analysis = res
	return nil
}
