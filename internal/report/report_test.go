package report

import (
	"bytes"
	"encoding/json"
	"flag"
	"github.com/whyslow/whyslow/internal/escape"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/facts"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/rules"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./report -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test ./report -update rewrites it)\n--- got:\n%s", path, got)
	}
}

func TestGolden(t *testing.T) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			r := sc.make().build()
			var text, js bytes.Buffer
			if err := Text(&text, r, TextOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := JSON(&js, r); err != nil {
				t.Fatal(err)
			}
			golden(t, sc.name+".txt.golden", text.Bytes())
			golden(t, sc.name+".json.golden", js.Bytes())
		})
	}
}

func TestJSONRoundTrips(t *testing.T) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			r := sc.make().build()
			var first bytes.Buffer
			if err := JSON(&first, r); err != nil {
				t.Fatal(err)
			}
			if !bytes.HasSuffix(first.Bytes(), []byte("}\n")) {
				t.Errorf("JSON does not end with a newline")
			}
			var back Report
			dec := json.NewDecoder(bytes.NewReader(first.Bytes()))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&back); err != nil {
				t.Fatalf("decoding the report: %v", err)
			}
			if !reflect.DeepEqual(r, &back) {
				t.Errorf("report read back differs from the one written:\nwrote %+v\nread  %+v", r, &back)
			}
			var second bytes.Buffer
			if err := JSON(&second, &back); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(first.Bytes(), second.Bytes()) {
				t.Errorf("re-encoding changed the bytes:\n%s\n---\n%s", first.Bytes(), second.Bytes())
			}
		})
	}
}

// Consumers index arrays without checking for null; only trigger may be null.
func TestJSONHasNoNullArrays(t *testing.T) {
	r := Build(nil, nil, []rules.Finding{{Rule: "bare", Severity: rules.Info}}, Meta{})
	var b bytes.Buffer
	if err := JSON(&b, r); err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case nil:
			if !strings.HasSuffix(path, ".trigger") {
				t.Errorf("%s is null", path)
			}
		case map[string]any:
			for k, e := range x {
				walk(path+"."+k, e)
			}
		case []any:
			for _, e := range x {
				walk(path+"[]", e)
			}
		}
	}
	walk("$", doc)
	for _, k := range []string{"losses", "probes", "devices", "findings", "device_filter"} {
		if _, ok := doc[k].([]any); !ok {
			t.Errorf("%s = %v, want an array", k, doc[k])
		}
	}
	f := doc["findings"].([]any)[0].(map[string]any)
	for _, k := range []string{"devices", "processes", "steps", "stacks"} {
		if _, ok := f[k].([]any); !ok {
			t.Errorf("findings[0].%s = %v, want an array", k, f[k])
		}
	}
	if _, ok := f["evidence"].(map[string]any); !ok {
		t.Errorf("findings[0].evidence = %v, want an object", f["evidence"])
	}
}

func TestBuildOrdersAndRanksFindings(t *testing.T) {
	tests := []struct {
		name      string
		in        []rules.Finding
		wantRules []string
		worst     string
	}{
		{"by rank", []rules.Finding{{Rank: 3, Rule: "c", Severity: rules.Info}, {Rank: 1, Rule: "a", Severity: rules.Warning}, {Rank: 2, Rule: "b", Severity: rules.Critical}}, []string{"a", "b", "c"}, "critical"},
		{"unranked by score, after ranked", []rules.Finding{{Rule: "low", Score: 1, Severity: rules.Info}, {Rule: "high", Score: 9, Severity: rules.Info}, {Rank: 1, Rule: "ranked", Severity: rules.Warning}}, []string{"ranked", "high", "low"}, "warning"},
		{"none", nil, []string{}, "none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Build(nil, nil, tt.in, Meta{})
			got := []string{}
			for i, f := range r.Findings {
				got = append(got, f.Rule)
				if f.Rank != i+1 {
					t.Errorf("finding %q has rank %d at position %d", f.Rule, f.Rank, i+1)
				}
			}
			if !reflect.DeepEqual(got, tt.wantRules) {
				t.Errorf("order = %v, want %v", got, tt.wantRules)
			}
			if r.Summary.WorstSeverity != tt.worst || r.Summary.Findings != len(tt.in) {
				t.Errorf("summary = %+v, want worst %q and %d findings", r.Summary, tt.worst, len(tt.in))
			}
		})
	}
}

func TestBuildStacks(t *testing.T) {
	a := kframes("__bio_queue_enter", "blk_mq_submit_bio")
	b := kframes("blk_mq_freeze_queue_wait", "elevator_change")
	c := kframes("blk_mq_freeze_queue_wait", "queue_requests_store")
	d := kframes("__bio_queue_enter", "submit_bio_noacct")
	dev := &facts.Device{
		Name: "sdx",
		QueueWaits: facts.Spans{
			span(facts.KindQueueEnter, 0, 10, 1, "fio", "sdx", a, nil),
			span(facts.KindQueueEnter, 20, 10, 2, "dd", "sdx", a, nil),
			span(facts.KindQueueEnter, 40, 5, 2, "dd", "sdx", a, nil),
			span(facts.KindQueueEnter, 60, 1, 3, "cp", "sdx", d, nil),
			span(facts.KindQueueEnter, 60, 50, 3, "cp", "sdx", nil, nil),                // no frames
			span(facts.KindIOWait, 0, 500, 4, "pg", "sdx", kframes("io_schedule"), nil), // other kind
			span(facts.KindQueueEnter, 0, 8, 1, "fio", "sdx", a, writerUser),            // same kernel, other user stack
		},
		Freezes: facts.Spans{
			span(facts.KindFreezeWait, 0, 12, 9, "udev", "sdx", b, nil),
			span(facts.KindFreezeWait, 0, 2, 9, "udev", "sdx", c, nil),
		},
	}
	other := &facts.Device{Name: "sdy", Freezes: facts.Spans{span(facts.KindFreezeWait, 0, 900, 9, "udev", "sdy", c, nil)}}
	devs := map[string]*facts.Device{"sdx": dev, "sdy": other}

	got := stacks([]string{"sdx", "sdx", "missing"}, devs)
	want := []Stack{
		{Kind: facts.KindQueueEnter, Count: 3, TotalMs: 25, MaxMs: 10, Processes: []string{"dd", "fio"}, Kernel: event.FormatStack(a), User: []string{}},
		{Kind: facts.KindFreezeWait, Count: 1, TotalMs: 12, MaxMs: 12, Processes: []string{"udev"}, Kernel: event.FormatStack(b), User: []string{}},
		{Kind: facts.KindQueueEnter, Count: 1, TotalMs: 8, MaxMs: 8, Processes: []string{"fio"}, Kernel: event.FormatStack(a), User: event.FormatStack(writerUser)},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("stacks =\n%+v\nwant\n%+v", got, want)
	}
	if got := stacks(nil, devs); got == nil || len(got) != 0 {
		t.Errorf("stacks of no devices = %#v, want an empty slice", got)
	}
}

func TestBuildEvidenceIsPlainJSON(t *testing.T) {
	type pair struct {
		A int    `json:"a"`
		B string `json:"b"`
	}
	in := []rules.Evidence{
		{Name: "wait", Value: 1500 * time.Microsecond},
		{Name: "wait_us", Value: 1500 * time.Microsecond},
		{Name: "count", Value: int32(7)},
		{Name: "big", Value: uint64(1 << 40)},
		{Name: "ratio", Value: 2.0 / 3},
		{Name: "nan", Value: math.NaN()},
		{Name: "names", Value: []string{"x", "y"}},
		{Name: "none", Value: []int(nil)},
		{Name: "pair", Value: pair{A: 1, B: "z"}},
		{Name: "ptr", Value: &pair{A: 2}},
		{Name: "func", Value: func() {}},
	}
	r := Build(nil, nil, []rules.Finding{{Rule: "r", Evidence: in}}, Meta{})
	want := Evidence{
		{"wait_ms", 1.5},
		{"wait_us", 1.5}, // a Duration is in ms whatever the name says: the name keeps its suffix
		{"count", 7.0},
		{"big", float64(1 << 40)},
		{"ratio", 0.667},
		{"nan", nil},
		{"names", []any{"x", "y"}},
		{"none", []any{}},
		{"pair", map[string]any{"a": 1.0, "b": "z"}},
		{"ptr", map[string]any{"a": 2.0, "b": ""}},
	}
	got := r.Findings[0].Evidence
	if !reflect.DeepEqual(got[:len(want)], want) {
		t.Errorf("evidence =\n%#v\nwant\n%#v", got[:len(want)], want)
	}
	if s, ok := got[len(want)].Value.(string); !ok || !strings.HasPrefix(s, "0x") {
		t.Errorf("a func value = %#v, want its fmt string", got[len(want)].Value)
	}
	var b bytes.Buffer
	if err := JSON(&b, r); err != nil {
		t.Fatalf("a report with odd evidence does not encode: %v", err)
	}
	if !strings.Contains(b.String(), `"wait_ms": 1.5,`) || strings.Index(b.String(), `"wait_ms"`) > strings.Index(b.String(), `"count"`) {
		t.Errorf("evidence not written in the rule's order:\n%s", b.String())
	}
}

func TestBuildWithoutFactsUsesHistograms(t *testing.T) {
	tl := &timeline.Timeline{End: event.Mono(10 * time.Second)}
	h := tl.Device(event.Device{Major: 8, Minor: 0, Name: "sda"})
	for _, v := range []uint64{1000, 2000, 3000, 40000} {
		h.Submit.Add(v)
	}
	r := Build(tl, nil, nil, Meta{})
	if len(r.Devices) != 1 || r.Devices[0].Name != "sda" || r.Devices[0].ID != "8:0" || r.Devices[0].Submit.Count != 4 || r.Devices[0].Submit.MaxUs != 40 {
		t.Errorf("devices = %+v", r.Devices)
	}
	if r.DurationSeconds != 10 {
		t.Errorf("duration = %v, want 10", r.DurationSeconds)
	}
}

func TestBuildRounds(t *testing.T) {
	run := &facts.Run{Devices: []*facts.Device{{Name: "d", Submit: facts.Latency{P50Us: 7.349, MaxUs: math.Inf(1)},
		Stalls: facts.Spans{{Start: 0, End: 1234567 * time.Nanosecond}}, Uevents: facts.Points{{}, {}, {}}}}}
	r := Build(nil, run, []rules.Finding{{Score: 512.2871}}, Meta{Duration: 7 * time.Second})
	d := r.Devices[0]
	if d.Submit.P50Us != 7.3 || d.Submit.MaxUs != 0 || d.Stalls.TotalMs != 1.23 || d.Uevents.PerSecond != 0.43 {
		t.Errorf("device = %+v", d)
	}
	if r.Findings[0].Score != 512.3 {
		t.Errorf("score = %v, want 512.3", r.Findings[0].Score)
	}
}

func hostile() *Report {
	sc := freezeChain()
	f := &sc.findings[1]
	f.Trigger.Args = []string{"fake-arcconf", "\x1b[2J\x1b]0;pwned\x07", "x\n#9 CRITICAL score 999.0  all is fine", "\u202egnp.exe"}
	f.Trigger.Comm = "evil\x1b[31m"
	f.Trigger.ParentComm = "cron\r\x1b[K"
	f.Trigger.Filename = "/tmp/\x9b31mevil"
	f.Processes[1].Comm = "(udev\x1b[8m)"
	f.Evidence = append(f.Evidence, rules.Evidence{Name: "path\x1b[1m", Value: "/sys/block/loop0/\x1b[5mqueue\nfake line"})
	f.Title = "title\x1b[?1049h"
	sc.run.Devices[1].Name = "loop0\x1b[0m"
	sc.tl.Probes[0].Reason = "bad\x00\x7f\xff"
	sc.meta.RuleErrors = rules.RuleErrors{{Rule: "r\x1b[31m", File: "/tmp/\x1b]0;x\x07.yaml", Line: 1, Column: 1, Field: "when", Message: "no\x1b[2Jpe"}}
	return sc.build()
}

func TestTextEscapesHostStrings(t *testing.T) {
	var b bytes.Buffer
	if err := Text(&b, hostile(), TextOptions{}); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, c := range []string{"\x1b", "\x07", "\x9b", "\u202e", "\r", "\x00", "\x7f", "\xff"} {
		if strings.Contains(out, c) {
			t.Errorf("text output contains %q raw", c)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "#9") || strings.HasPrefix(strings.TrimLeft(line, " │"), "fake line") {
			t.Errorf("a host string started a line of its own: %q", line)
		}
	}
	for _, want := range []string{`\x1b[2J`, `\n#9 CRITICAL`, `\u202egnp.exe`, `evil\x1b[31m`, `/tmp/\x9b31mevil`, `\x1b[5mqueue\nfake line`, `bad\x00\x7f\xff`} {
		if !strings.Contains(out, want) {
			t.Errorf("text output lacks the escaped form %q", want)
		}
	}
}

var sgr = regexp.MustCompile(`\x1b\[[0-9;]*m`)

// With colours on, the only escapes are the report's own colours: removing
// them gives the plain output.
func TestColorOnlyAddsStyles(t *testing.T) {
	for _, r := range []*Report{hostile(), degraded().build(), nothingFound().build()} {
		var plain, color bytes.Buffer
		if err := Text(&plain, r, TextOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := Text(&color, r, TextOptions{Color: true}); err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(plain.Bytes(), color.Bytes()) {
			t.Errorf("colour output equals plain output")
		}
		for _, m := range sgr.FindAllString(color.String(), -1) {
			switch m {
			case sgrBold, sgrRed, sgrYellow, sgrCyan, sgrDim, sgrReset:
			default:
				t.Errorf("unexpected escape %q in colour output", m)
			}
		}
		if stripped := sgr.ReplaceAllString(color.String(), ""); stripped != plain.String() {
			t.Errorf("colour output without its styles differs from plain output:\n%s\n---\n%s", stripped, plain.String())
		}
	}
}

func TestFmtDur(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "0"},
		{850, "850ns"},
		{7349 * time.Nanosecond, "7.3µs"},
		{123456 * time.Nanosecond, "123µs"},
		{999700 * time.Nanosecond, "1.0ms"},
		{28130 * time.Microsecond, "28ms"},
		{2 * time.Second, "2.0s"},
		{12600 * time.Millisecond, "13s"},
		{90 * time.Second, "90s"},
		{150 * time.Second, "2m30s"},
		{-3 * time.Millisecond, "-3.0ms"},
		{99 * time.Hour, "99h0m0s"},
		{100 * time.Hour, "100h"},
		{math.MaxInt64, "2562048h"},
		{math.MinInt64, "-2562048h"},
	}
	for _, tt := range tests {
		if got := fmtDur(tt.d); got != tt.want {
			t.Errorf("fmtDur(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

// What the renderers compute from a report's numbers (any trace can put
// extreme ones there) always has a short form.
func TestFormatsOfExtremeNumbers(t *testing.T) {
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"seconds beyond a Duration", fmtSeconds(9223372036.855), "2562048h"},
		{"milliseconds beyond a Duration", fmtMs(1e300), "2.78e+293h"},
		{"negative beyond a Duration", fmtUs(-1e17), "-27777778h"},
		{"NaN", fmtUs(math.NaN()), "-"},
		{"infinity", fmtMs(math.Inf(-1)), "-"},
		{"evidence in seconds", evidenceValue("period_s", 1e12), "277777778h"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}

func TestTimeTicks(t *testing.T) {
	tests := []struct {
		dur  float64
		want []float64
	}{
		{5, []float64{0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5}},
		{60, []float64{0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60}},
		{0, []float64{0}},
		{math.NaN(), []float64{0}},
		{math.Inf(1), []float64{0}},
		{9223372036.855, []float64{0, 1.8e9, 3.6e9, 5.4e9, 7.2e9, 9e9}},
	}
	for _, tt := range tests {
		if got := timeTicks(tt.dur); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("timeTicks(%v) = %v, want %v", tt.dur, got, tt.want)
		}
	}
}

// schemaTables names, for every object of the report, the heading of its
// table in docs/report-schema.md.
var schemaTables = map[reflect.Type]string{
	reflect.TypeFor[Report]():           "Top level",
	reflect.TypeFor[Tool]():             "`tool`",
	reflect.TypeFor[Host]():             "`host`",
	reflect.TypeFor[Loss]():             "`losses[]`",
	reflect.TypeFor[Probe]():            "`probes[]`",
	reflect.TypeFor[Skip]():             "`probes[].skipped[]`",
	reflect.TypeFor[Device]():           "`devices[]`",
	reflect.TypeFor[Latency]():          "latency objects: `submit`, `service`, `submit_call`",
	reflect.TypeFor[SpanStats]():        "spans objects: `stalls`, `queue_waits`, `freezes`",
	reflect.TypeFor[UeventStats]():      "`uevents`",
	reflect.TypeFor[ActionCount]():      "`uevents.by_action[]`",
	reflect.TypeFor[Finding]():          "`findings[]`",
	reflect.TypeFor[Process]():          "`findings[].processes[]`",
	reflect.TypeFor[Step]():             "`findings[].steps[]`",
	reflect.TypeFor[Trigger]():          "`trigger`",
	reflect.TypeFor[Stack]():            "`stacks[]`",
	reflect.TypeFor[RuleError]():        "`rule_errors[]`",
	reflect.TypeFor[NotEvaluated]():     "`not_evaluated[]`",
	reflect.TypeFor[Summary]():          "`summary`",
	reflect.TypeFor[Affected]():         "`affected[]`",
	reflect.TypeFor[AffectedCall]():     "`affected[].calls[]`",
	reflect.TypeFor[StageShare]():       "`affected[].stages[]`",
	reflect.TypeFor[UnfinishedCall]():   "`affected[].unfinished[]`",
	reflect.TypeFor[Trouble]():          "`trouble`",
	reflect.TypeFor[TroubleSource]():    "`trouble.sources[]`",
	reflect.TypeFor[TroubleSignal]():    "`trouble.signals[]`",
	reflect.TypeFor[ArmedInterval]():    "`trouble.armed[]`",
	reflect.TypeFor[PSIStall]():         "`trouble.psi`",
	reflect.TypeFor[Coverage]():         "`coverage`",
	reflect.TypeFor[CoverageInterval](): "`coverage.armed[]`",
	reflect.TypeFor[CoverageProbe]():    "`coverage.probes[]`",
}

// docTables reads the tables of a Markdown page: the names in the first
// column of each table's rows (in backticks), by the heading above it.
func docTables(doc string) map[string][]string {
	out := map[string][]string{}
	heading := ""
	for _, line := range strings.Split(doc, "\n") {
		switch {
		case strings.HasPrefix(line, "#"):
			heading = strings.TrimSpace(strings.TrimLeft(line, "#"))
		case strings.HasPrefix(line, "| `"):
			cell, _, _ := strings.Cut(strings.TrimPrefix(line, "| "), " |")
			out[heading] = append(out[heading], strings.Trim(cell, "`"))
		}
	}
	return out
}

// Every JSON field of the report must be in the table of its own object in
// docs/report-schema.md, and every row of that table must be a field of the
// object, so the docs cannot fall behind the code.
func TestSchemaDocumentsEveryField(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "report-schema.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(doc, []byte(SchemaID)) {
		t.Errorf("docs/report-schema.md does not name the schema id %q", SchemaID)
	}
	tables := docTables(string(doc))
	marshaler := reflect.TypeFor[json.Marshaler]()
	seen := map[reflect.Type]bool{}
	var walk func(path string, typ reflect.Type)
	walk = func(path string, typ reflect.Type) {
		for !typ.Implements(marshaler) && (typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice) {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || seen[typ] || typ.Implements(marshaler) {
			return
		}
		seen[typ] = true
		heading, ok := schemaTables[typ]
		if !ok {
			t.Errorf("%s (%s) is an object without a table: document it in docs/report-schema.md under a heading of its own and name it in schemaTables", path, typ)
		}
		documented, ok := tables[heading]
		if heading != "" && !ok {
			t.Errorf("docs/report-schema.md has no table under the heading %q (for %s)", heading, path)
		}
		fields := map[string]bool{}
		for i := range typ.NumField() {
			f := typ.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" {
				t.Errorf("%s.%s has no json name", path, f.Name)
				continue
			}
			fields[name] = true
			if heading != "" && !slices.Contains(documented, name) {
				t.Errorf("field %s.%s (`%s`) is not in the table %q of docs/report-schema.md", path, f.Name, name, heading)
			}
			walk(path+"."+name, f.Type)
		}
		for _, d := range documented {
			if !fields[d] {
				t.Errorf("the table %q of docs/report-schema.md documents `%s`, which %s does not have", heading, d, path)
			}
		}
	}
	walk("report", reflect.TypeFor[Report]())
	if len(seen) < len(schemaTables) {
		t.Errorf("walked %d types, %d have tables", len(seen), len(schemaTables))
	}
}

// The example in the docs must be exactly what JSON writes for it: known
// fields only, in the order and form the encoder uses.
func TestSchemaExampleIsAReport(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "report-schema.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```json\n")
	example, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("docs/report-schema.md has no ```json example")
	}
	var r Report
	dec := json.NewDecoder(strings.NewReader(example))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("the example is not a report: %v", err)
	}
	if r.Schema != SchemaID {
		t.Errorf("the example's schema is %q, want %q", r.Schema, SchemaID)
	}
	var b bytes.Buffer
	if err := JSON(&b, &r); err != nil {
		t.Fatal(err)
	}
	if b.String() != example {
		t.Errorf("the example is not what JSON writes for it:\n%s", b.String())
	}
}

func TestChainLine(t *testing.T) {
	tr := &Trigger{Comm: "arcconf", ParentComm: "monitor.sh", Filename: "/opt/bin/arcconf", PeriodSeconds: 30}
	steps := []Step{{Title: "change uevents on sda"}, {Title: "submissions stall"}}
	tests := []struct {
		name string
		f    Finding
		want string
	}{
		{"one step, no trigger", Finding{Steps: steps[1:]}, ""},
		{"steps only", Finding{Steps: steps}, "change uevents on sda → submissions stall"},
		{"trigger led", Finding{Steps: steps, Trigger: tr}, "monitor.sh runs arcconf every 30s → change uevents on sda → submissions stall"},
		{"trigger led, one step", Finding{Steps: steps[1:], Trigger: tr}, "monitor.sh runs arcconf every 30s → submissions stall"},
		{"trigger already a step", Finding{Steps: append([]Step{{Title: "monitor.sh runs arcconf every 30s"}}, steps...), Trigger: tr}, "monitor.sh runs arcconf every 30s → change uevents on sda → submissions stall"},
		{"hostile step", Finding{Steps: []Step{{Title: "a\x1b[2J"}, {Title: "b\nc"}}}, `a\x1b[2J → b\nc`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := chainLine(&tt.f); got != tt.want {
				t.Errorf("chainLine = %q, want %q", got, tt.want)
			}
		})
	}
}

// Uevents are counted per action, the most frequent first, with rates; the
// device tables show them compactly.
func TestUeventsByAction(t *testing.T) {
	pts := func(actions ...string) facts.Points {
		var out facts.Points
		for i, a := range actions {
			out = append(out, facts.Point{At: time.Duration(i) * time.Second, What: a})
		}
		return out
	}
	tests := []struct {
		name     string
		points   facts.Points
		observed time.Duration
		want     []ActionCount
		cell     string
	}{
		{"none", nil, 10 * time.Second, []ActionCount{}, "0"},
		{"one action", pts("change", "change", "change"), 10 * time.Second, []ActionCount{{"change", 3, 0.3}}, "0.30/s (change 3)"},
		{"most frequent first, ties by name", pts("remove", "change", "add", "change", "add", "change"), 4 * time.Second,
			[]ActionCount{{"change", 3, 0.75}, {"add", 2, 0.5}, {"remove", 1, 0.25}}, "1.50/s (change 3, add 2, remove 1)"},
		{"at most three named", pts("a", "b", "c", "d", "e", "a"), 2 * time.Second,
			[]ActionCount{{"a", 2, 1}, {"b", 1, 0.5}, {"c", 1, 0.5}, {"d", 1, 0.5}, {"e", 1, 0.5}}, "3.00/s (a 2, b 1, c 1, +2 more)"},
		{"no window, no rate", pts("change"), 0, []ActionCount{{"change", 1, 0}}, "0.00/s (change 1)"},
		{"hostile action", pts("ch\x1b[2Jange"), time.Second, []ActionCount{{"ch\x1b[2Jange", 1, 1}}, `1.00/s (ch\x1b[2Jange 1)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := uevents(tt.points, tt.observed)
			if u.Count != len(tt.points) || !reflect.DeepEqual(u.ByAction, tt.want) {
				t.Errorf("uevents = %+v, want count %d by action %+v", u, len(tt.points), tt.want)
			}
			if got := ueventCell(u, escape.String); got != tt.cell {
				t.Errorf("cell %q, want %q", got, tt.cell)
			}
		})
	}
}

func TestShellQuote(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"getconfig", "getconfig"},
		{"", "''"},
		{"a b", "'a b'"},
		{"it's", `"it's"`},
		{"x\n#1 forged", `"x\n#1 forged"`},
		{`a\n "q"` + "\x1b", `"a\\n \"q\"\x1b"`},
		{"bad\xff \ufffd", `"bad\xff \ufffd"`},
	} {
		if got := shellQuote(tt.in); got != tt.want {
			t.Errorf("shellQuote(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}
