package cmd

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/whyslow/whyslow/diagnose"
	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/stackexport"
	"github.com/whyslow/whyslow/internal/tracefile"
	"github.com/whyslow/whyslow/rules"
)

// FuzzAnalyze drives the whole of `whyslow analyze` on arbitrary bytes: the
// trace reader, the analysis with the built-in rules, every report format
// and both stack files. Whatever the input, nothing panics or hangs, a bad
// trace is one error line of visible text, the built-in rules never fail,
// the JSON report is a report, the text and Markdown reports hold only
// visible text and no host string starts a line of them, and no output
// grows out of proportion to the input.
//
// Seeds are small, so that each execution is quick and mutations reach
// deep: excerpts of the recorded traces of testdata/traces (a few records
// of every type), plain and compressed; the format's example; hand-made
// traces with values at the bounds, odd or hostile ones. Inputs that once
// failed are kept in testdata/fuzz/FuzzAnalyze.
//
//	go test ./cmd -run '^$' -fuzz '^FuzzAnalyze$' -fuzztime 3m
func FuzzAnalyze(f *testing.F) {
	traces, _ := filepath.Glob(filepath.Join("..", "testdata", "traces", "*.trace.gz"))
	if len(traces) == 0 {
		f.Fatal("no traces in testdata/traces")
	}
	for _, p := range traces {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		ex := excerpt(f, data, 2)
		f.Add(ex)
		f.Add(gzipped(f, ex))
	}
	if ex, err := os.ReadFile(filepath.Join("..", "internal", "tracefile", "testdata", "v1-example.trace")); err == nil {
		f.Add(ex)
	}
	for _, lines := range handMade {
		f.Add([]byte(traceText(lines...)))
	}
	f.Add(hostileSeed(f))
	set, err := rules.Default()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) { analyzeAll(t, set, data) })
}

// hostileSeed is the plain text of a trace of the udev freeze chain, three
// runs, whose device name, host name and command arguments are hostile
// (hostile_test.go).
func hostileSeed(f *testing.F) []byte {
	var b bytes.Buffer
	if err := tracefile.Write(&b, storyTimeline(hostileDev, hostileHost, hostileArgs, 3), tracefile.Info{Version: "seed", Devices: []string{hostileDev}}); err != nil {
		f.Fatal(err)
	}
	zr, err := gzip.NewReader(&b)
	if err != nil {
		f.Fatal(err)
	}
	plain, err := io.ReadAll(zr)
	if err != nil {
		f.Fatal(err)
	}
	return plain
}

// gzipped compresses data as a trace file is.
func gzipped(f *testing.F, data []byte) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := zw.Write(data); err != nil {
		f.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		f.Fatal(err)
	}
	return b.Bytes()
}

// FuzzAnalyzeRecords is FuzzAnalyze with the framing kept right: a header,
// a run record with the fuzzed device filter, the fuzzed timeline record and
// records (one per line), and an end record that counts them, so that the
// mutations reach the analysis and the reports rather than the reader's
// checks of the framing.
//
//	go test ./cmd -run '^$' -fuzz FuzzAnalyzeRecords -fuzztime 3m
func FuzzAnalyzeRecords(f *testing.F) {
	for _, lines := range handMade {
		f.Add("loop0", lines[0], strings.Join(lines[1:], "\n"))
	}
	traces, _ := filepath.Glob(filepath.Join("..", "testdata", "traces", "*.trace.gz"))
	for _, p := range traces {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(excerpt(f, data, 2))), "\n")
		f.Add("", lines[2], strings.Join(lines[3:len(lines)-1], "\n"))
	}
	lines := strings.Split(strings.TrimSpace(string(hostileSeed(f))), "\n")
	f.Add(hostileDev, lines[2], strings.Join(lines[3:len(lines)-1], "\n"))
	set, err := rules.Default()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, devices, timeline, records string) {
		filter, _ := json.Marshal(strings.Fields(devices))
		lines := []string{
			`{"format":"whyslow.trace","version":1,"encoding":"json-lines","writer":"whyslow 0.1.0"}`,
			`{"type":"run","version":"0.1.0","started_at":"2026-11-03T10:00:00Z","requested_duration":20000000000,"device_filter":` + string(filter) + `}`,
			strings.ReplaceAll(timeline, "\n", " "),
		}
		for _, r := range strings.Split(records, "\n") {
			if strings.TrimSpace(r) != "" && !strings.Contains(r, `"type":"end"`) {
				lines = append(lines, r)
			}
		}
		lines = append(lines, fmt.Sprintf(`{"type":"end","records":%d}`, len(lines)-1))
		analyzeAll(t, set, []byte(strings.Join(lines, "\n")+"\n"))
	})
}

// analyzeAll is what analyze does with a trace, checked: see FuzzAnalyze.
func analyzeAll(t *testing.T, set *rules.Set, data []byte) {
	tl, info, err := tracefile.Read(bytes.NewReader(data))
	if err != nil {
		checkErrorLine(t, fmt.Errorf("reading trace x.trace: %w", err))
		return
	}
	res, err := diagnose.Analyze(tl, set, info.Devices)
	if err != nil {
		t.Fatalf("analysis: %v", err)
	}
	if len(res.RuleErrors) > 0 {
		t.Fatalf("a built-in rule failed: %v", res.RuleErrors)
	}
	// --device names from the trace's run record, as analyze checks them.
	if err := checkTraceDevices("x.trace", info.Devices, res.Devices); err != nil {
		checkErrorLine(t, err)
	}
	limit := 1<<20 + 64*len(data)
	rep := buildReport(res, info)
	for _, format := range reportFormats {
		var b bytes.Buffer
		if err := render(&b, rep, res, format); err != nil {
			t.Fatalf("--format %s: %v", format, err)
		}
		if b.Len() == 0 || b.Len() > limit {
			t.Fatalf("--format %s: %d bytes of report from %d bytes of trace", format, b.Len(), len(data))
		}
		switch format {
		case "json":
			var back report.Report
			if err := json.Unmarshal(b.Bytes(), &back); err != nil || back.Schema != report.SchemaID {
				t.Fatalf("the JSON report does not read back (%v):\n%s", err, b.Bytes())
			}
		case "text", "markdown":
			if r := visibleText(b.String()); r != "" {
				t.Fatalf("--format %s holds %q raw", format, r)
			}
			// Each finding has one heading; prose (a host string in it
			// included) cannot make another.
			heading := findingHeading[format]
			if n := len(heading.FindAllIndex(b.Bytes(), -1)); n != len(rep.Findings) {
				t.Fatalf("--format %s: %d finding headings for %d findings:\n%s", format, n, len(rep.Findings), b.Bytes())
			}
		case "html":
			if r := visibleText(strings.ReplaceAll(b.String(), "\t", " ")); r != "" {
				t.Fatalf("--format html holds %q raw", r)
			}
		}
	}
	var b bytes.Buffer
	if err := stackexport.Folded(&b, res.Timeline); err != nil {
		t.Fatalf("folded: %v", err)
	}
	if b.Len() > limit {
		t.Fatalf("folded: %d bytes from %d", b.Len(), len(data))
	}
	b.Reset()
	if err := stackexport.Pprof(&b, res.Timeline, info.StartedAt); err != nil {
		t.Fatalf("pprof: %v", err)
	}
}

// findingHeading matches the line that starts a finding, by format.
var findingHeading = map[string]*regexp.Regexp{
	"text":     regexp.MustCompile(`(?m)^#\d+ `),
	"markdown": regexp.MustCompile(`(?m)^### \d+\. `),
}

// checkErrorLine wants an error to print as one line of visible text on
// stderr, as execute prints it.
func checkErrorLine(t *testing.T, err error) {
	t.Helper()
	ios, _, errb := testIO()
	if code := execute(ios, &cobra.Command{SilenceErrors: true, SilenceUsage: true, RunE: func(*cobra.Command, []string) error { return err }}, nil); code != ExitError {
		t.Fatalf("exit %d for %v", code, err)
	}
	s := errb.String()
	if strings.Count(s, "\n") != 1 || !strings.HasSuffix(s, "\n") || len(s) < 12 {
		t.Fatalf("the error is not one line: %q", s)
	}
	if r := visibleText(s); r != "" {
		t.Fatalf("the error holds %q raw: %q", r, s)
	}
}

// excerpt is a recorded trace cut down, uncompressed: its header, run,
// timeline and status records, at most n records of each event type, and an
// end record counting them.
func excerpt(f *testing.F, compressed []byte, n int) []byte {
	zr, err := gzip.NewReader(bytes.NewReader(compressed))
	if err != nil {
		f.Fatal(err)
	}
	sc := bufio.NewScanner(zr)
	sc.Buffer(nil, tracefile.MaxLine)
	var out []string
	seen := map[string]int{}
	for sc.Scan() {
		line := sc.Text()
		if len(out) == 0 {
			out = append(out, line) // the header
			continue
		}
		var rec struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			f.Fatalf("a recorded trace has a bad line: %v", err)
		}
		switch rec.Type {
		case "end":
		case "run", "timeline", "probe", "loss", "holder", "device":
			out = append(out, line)
		default:
			if seen[rec.Type] < n {
				seen[rec.Type]++
				out = append(out, line)
			}
		}
	}
	if err := sc.Err(); err != nil {
		f.Fatal(err)
	}
	return []byte(strings.Join(out, "\n") + fmt.Sprintf("\n{\"type\":\"end\",\"records\":%d}\n", len(out)-1))
}

// traceText is a trace of the records given after its header and run record.
func traceText(lines ...string) string {
	all := append([]string{
		`{"format":"whyslow.trace","version":1,"encoding":"json-lines","writer":"whyslow 0.1.0"}`,
		`{"type":"run","version":"0.1.0","started_at":"2026-11-03T10:00:00Z","requested_duration":20000000000,"device_filter":[]}`,
	}, lines...)
	all = append(all, fmt.Sprintf(`{"type":"end","records":%d}`, len(all)-1))
	return strings.Join(all, "\n") + "\n"
}

// handMade are small traces with extreme, odd or hostile values: at the
// bounds of docs/trace-format.md, and one beyond (an error).
var handMade = [][]string{
	{`{"type":"timeline","start":0,"end":9223372036854775807,"min_latency":9223372036854775807}`},
	{`{"type":"timeline","start":0,"end":31622400000000000,"min_latency":31622400000000000}`},
	{`{"type":"timeline","start":5,"end":5}`},
	{
		`{"type":"timeline","start":3600000000000,"end":31626000000000000}`,
		`{"type":"device","dev":{"major":7,"minor":0,"name":"loop0"},"submit":{"count":18446744073709551615,"sum_ns":18446744073709551615,"max_ns":31622400000000000,"slots":[[327,18446744073709551615],[0,18446744073709551615]]},"service":{"count":1,"sum_ns":9223372036854775807,"max_ns":31622400000000000,"slots":[[327,1]]}}`,
		`{"type":"slow_submit","start":0,"latency":31622400000000000,"task":{"pid":1,"tgid":1,"comm":"fio"},"dev":{"major":7,"minor":0,"name":"loop0"}}`,
		`{"type":"offcpu","start":0,"duration":31622400000000000,"task":{"pid":1,"tgid":1,"comm":"fio"},"waker":{"pid":2,"comm":"udev"},"kernel_stack":[{"addr":1,"symbol":"__bio_queue_enter"}]}`,
		`{"type":"offcpu","start":3,"duration":9,"task":{"pid":2,"tgid":2,"comm":"udev"},"kernel_stack":[{"addr":1,"symbol":"blk_mq_freeze_queue_wait"}]}`,
		`{"type":"freeze","start":0,"duration":31622400000000000,"task":{"pid":1,"tgid":1,"comm":"fio"},"dev":{"major":7,"minor":0,"name":"loop0"}}`,
		`{"type":"queue_enter","start":1,"duration":5,"task":{"pid":1,"tgid":1,"comm":"fio"},"dev":{"major":7,"minor":0}}`,
		`{"type":"uevent","time":31629600000000000,"action":"change","subsystem":"block","devname":"loop0"}`,
		`{"type":"sysfs_write","time":2,"task":{"pid":2,"comm":"udev"},"device":"loop0","attr":"queue/scheduler"}`,
		`{"type":"loss","probe":"offcpu","what":"ring buffer full","count":1}`,
		`{"type":"loss","probe":"offcpu","what":"ring buffer full","count":18446744073709551615}`,
	},
	{
		`{"type":"timeline","start":1000,"end":2000,"hostname":"h\u001b[2J","kernel":"</script>"}`,
		`{"type":"exec","time":1100,"task":{"pid":9,"tgid":9,"comm":{"base64":"/w=="}},"ppid":1,"parent_comm":"cron","filename":"/bin/x","args":["x","\u202e","a\n#1 CRITICAL forged"]}`,
		`{"type":"exec","time":1200,"task":{"pid":10,"tgid":10,"comm":"x"},"ppid":1,"parent_comm":"cron","filename":"/bin/x"}`,
		`{"type":"exec","time":1300,"task":{"pid":11,"tgid":11,"comm":"x"},"ppid":1,"parent_comm":"cron","filename":"/bin/x"}`,
		`{"type":"exit","time":1150,"pid":9,"exit_code":256}`,
		`{"type":"uevent","time":1110,"action":"change","subsystem":"block","devname":"/dev/sda"}`,
		`{"type":"slow_submit","start":1120,"latency":50,"task":{"pid":3,"comm":"dd"},"dev":{"major":8,"minor":0}}`,
	},
}
