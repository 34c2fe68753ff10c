package rules

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"text/template"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"

	"github.com/whyslow/whyslow/internal/escape"
	"github.com/whyslow/whyslow/internal/facts"
)

// Evaluate runs the rules on the facts of a run and returns the findings,
// ranked: by score (descending), then severity, rule id and device.
//
// Device rules run once per device and command rules once per device and
// command, in rule-id order. Then chains are built: a finding whose rule
// `explains` R is merged into R's finding on the same device, as an earlier
// Step, carrying its trigger, processes, evidence, explanation and remedy;
// this repeats up the chain, so a cause of a cause ends in the same finding.
// When several findings of one rule explain the same target, the
// highest-scoring one is merged and the others stay findings of their own,
// as does a cause whose target did not fire. Run rules run last, seeing the
// number of findings so far.
//
// A rule that fails at run time (an expression or template error) is
// reported in the returned error, a RuleErrors naming each failed rule, its
// file position and the device; the findings of the other rules are still
// returned. A rule whose needs no probe of the run supplied is not
// evaluated (Set.NotEvaluated says which, and why).
func Evaluate(set *Set, run *facts.Run) ([]Finding, error) {
	if run == nil {
		run = &facts.Run{}
	}
	ev := &evaluation{set: set}
	var items []*item
	var rulesToRun []*Rule
	for _, r := range set.Rules() {
		if r.missing(run) == "" {
			rulesToRun = append(rulesToRun, r)
		}
	}
	for _, r := range rulesToRun {
		switch r.Scope {
		case ScopeDevice:
			for _, d := range run.Devices {
				if d == nil {
					continue
				}
				items = ev.add(items, r, DeviceEnv{Run: run, Device: d}, TemplateData{Run: run, Device: d}, d.Name)
			}
		case ScopeCommand:
			for _, d := range run.Devices {
				for _, c := range run.Commands {
					if d == nil || c == nil {
						continue
					}
					items = ev.add(items, r, CommandEnv{Run: run, Device: d, Command: c},
						TemplateData{Run: run, Device: d, Command: c}, d.Name)
				}
			}
		}
	}
	items = ev.chain(items)
	n := len(items)
	explained := explainedBy(items)
	for _, r := range rulesToRun {
		if r.Scope == ScopeRun {
			items = ev.add(items, r, RunEnv{Run: run, Findings: n, Explained: explained}, TemplateData{Run: run, Findings: n}, "")
		}
	}
	slices.SortStableFunc(items, func(a, b *item) int {
		return cmp.Or(
			// A run rule's finding (unexplained-latency, nothing-found) is
			// about what the others leave unexplained: it follows them.
			cmp.Compare(runScoped(a), runScoped(b)),
			// An info finding names no fault (device-saturated: the
			// device does what the load asks): it follows the warnings
			// and critical findings of its scope, whatever its score.
			cmp.Compare(infoRank(a), infoRank(b)),
			cmp.Compare(b.f.Score, a.f.Score),
			cmp.Compare(severityRank(a.f.Severity), severityRank(b.f.Severity)),
			cmp.Compare(a.f.Rule, b.f.Rule),
			cmp.Compare(a.dev, b.dev),
			cmp.Compare(a.f.Title, b.f.Title),
		)
	})
	out := make([]Finding, len(items))
	for i, it := range items {
		it.f.Rank = i + 1
		out[i] = *it.f
	}
	return out, ev.err()
}

// runScoped is 1 for a finding of a run-scope rule, else 0.
func runScoped(it *item) int {
	if it.rule != nil && it.rule.Scope == ScopeRun {
		return 1
	}
	return 0
}

// infoRank is 1 for a finding of severity info, else 0.
func infoRank(it *item) int {
	if it.f.Severity == Info {
		return 1
	}
	return 0
}

func severityRank(s Severity) int {
	switch s {
	case Critical:
		return 0
	case Warning:
		return 1
	case Info:
		return 2
	}
	return 3
}

// item is a finding with what chaining needs.
type item struct {
	f    *Finding
	rule *Rule
	dev  string
}

type evaluation struct {
	set  *Set
	errs RuleErrors // one per failed rule, in the order they failed
}

// RuleError is a rule that failed while it was evaluated: its first
// failure, and how many more it had.
type RuleError struct {
	Rule string // the rule's id
	File string // the file it was loaded from
	// Line and Column are where, in File, the expression or template that
	// failed is.
	Line, Column int
	Device       string // the device it was evaluated for; "" for run rules
	Field        string // what failed: "when", "score", "evidence: NAME", "title", ...
	Message      string // what went wrong
	More         int    // further failures of the same rule (other devices or fields)
}

// Error is "FILE:LINE:COL: rule ID: " and What.
func (e RuleError) Error() string {
	return fmt.Sprintf("%s:%d:%d: rule %s: %s", e.File, e.Line, e.Column, e.Rule, e.What())
}

// What is the failure without its place: "FIELD (on DEVICE): MESSAGE",
// with " (and N more)" when the rule failed more than once. The device
// and the message, which may quote host strings, are escaped
// (escape.String): it is one line of text for a terminal.
func (e RuleError) What() string {
	s := e.Field
	if e.Device != "" {
		s += " (on " + escape.String(e.Device) + ")"
	}
	s += ": " + escape.String(e.Message)
	if e.More > 0 {
		s += fmt.Sprintf(" (and %d more)", e.More)
	}
	return s
}

// RuleErrors are the rules that failed in one evaluation. As an error it is
// one line, the failures separated by "; ".
type RuleErrors []RuleError

func (es RuleErrors) Error() string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "; ")
}

func (ev *evaluation) fail(r *Rule, dev, field string, at pos, err error) {
	for i := range ev.errs {
		if ev.errs[i].Rule == r.ID {
			ev.errs[i].More++
			return
		}
	}
	msg := strings.Join(strings.Fields(err.Error()), " ") // one line, whatever expr or a template said
	ev.errs = append(ev.errs, RuleError{Rule: r.ID, File: r.File, Line: max(at.line, 1), Column: max(at.col, 1),
		Device: dev, Field: field, Message: msg})
}

func (ev *evaluation) err() error {
	if len(ev.errs) == 0 {
		return nil
	}
	return ev.errs
}

// run evaluates one program, turning runtime errors into an error at the
// expression's place in the rule file.
func (ev *evaluation) run(r *Rule, dev, field string, p *vm.Program, env any) (any, bool) {
	out, err := safeRun(p, env)
	if err != nil {
		at := r.pos[field]
		var fe *file.Error
		if errors.As(err, &fe) {
			if r.src != nil && r.nodes[field] != nil {
				off := fe.From
				if fe.Line > 0 {
					off = lineColOffset(r.nodes[field].Value, fe.Line, fe.Column)
				}
				at = r.src.scalarPos(r.nodes[field], off)
			}
			err = errors.New(fe.Message)
		}
		ev.fail(r, dev, field, at, err)
		return nil, false
	}
	return out, true
}

func safeRun(p *vm.Program, env any) (out any, err error) {
	defer func() {
		if x := recover(); x != nil {
			err = fmt.Errorf("%v", x)
		}
	}()
	return expr.Run(p, env)
}

// add evaluates one rule in one environment and appends its finding.
func (ev *evaluation) add(items []*item, r *Rule, env any, data TemplateData, dev string) []*item {
	v, ok := ev.run(r, dev, "when", r.when, env)
	if !ok || v != true {
		return items
	}
	f := &Finding{Rule: r.ID, Severity: r.Severity, stages: slices.Clone(r.Stages)}
	if dev != "" {
		f.Devices = []string{dev}
	}
	if r.score != nil {
		v, ok := ev.run(r, dev, "score", r.score, env)
		if !ok {
			return items
		}
		f.Score = toFloat(v)
		if math.IsNaN(f.Score) || math.IsInf(f.Score, 0) {
			ev.fail(r, dev, "score", r.pos["score"], fmt.Errorf("not a finite number: %v", f.Score))
			return items
		}
	}
	data.Score = f.Score
	data.Ev = map[string]any{}
	for _, e := range r.evidence {
		v, ok := ev.run(r, dev, "evidence: "+e.name, e.prog, env)
		if !ok {
			return items
		}
		data.Ev[e.name] = v
		f.Evidence = append(f.Evidence, Evidence{Name: e.name, Value: v})
	}
	if r.processes != nil {
		v, ok := ev.run(r, dev, "processes", r.processes, env)
		if !ok {
			return items
		}
		ps, err := processes(v)
		if err != nil {
			ev.fail(r, dev, "processes", r.pos["processes"], err)
			return items
		}
		f.Processes = ps
	}
	if r.precision != nil {
		v, ok := ev.run(r, dev, "precision", r.precision, env)
		if !ok {
			return items
		}
		f.Precision = joinPrecision(nil, strs(v))
	}
	if r.Trigger && data.Command != nil {
		f.Trigger = trigger(data.Command)
	}
	var err error
	exec := func(field string, t *template.Template) string {
		if t == nil || err != nil {
			return ""
		}
		var sb strings.Builder
		if e := t.Execute(&sb, data); e != nil {
			err = e
			at, msg := r.pos[field], e.Error()
			if r.src != nil && r.nodes[field] != nil {
				at, msg = templateErrAt(r.src, r.nodes[field], field, e)
			}
			ev.fail(r, dev, field, at, errors.New(msg))
		}
		return strings.TrimSpace(sb.String())
	}
	f.Title = strings.Join(strings.Fields(exec("title", r.title)), " ")
	f.Explanation = tidy(exec("explain", r.explain))
	f.Remedy = tidy(exec("remedy", r.remedy))
	if err != nil {
		return items
	}
	step := f.Title
	if r.step != nil {
		step = strings.Join(strings.Fields(exec("step", r.step)), " ")
	}
	f.Steps = []Step{{Rule: r.ID, Title: step}}
	return append(items, &item{f: f, rule: r, dev: dev})
}

// explainedBy is what the findings of items cover: their devices and the
// processes they name (by process id), and finding by finding the stages
// they explain.
func explainedBy(items []*item) facts.Explained {
	var e facts.Explained
	for _, it := range items {
		c := facts.Cover{Rule: it.f.Rule, Devices: slices.Clone(it.f.Devices), Stages: slices.Clone(it.f.stages)}
		for _, d := range it.f.Devices {
			if !slices.Contains(e.Devices, d) {
				e.Devices = append(e.Devices, d)
			}
		}
		for _, p := range it.f.Processes {
			t := facts.Task{Pid: p.Pid, Tgid: p.Tgid, Comm: p.Comm}
			e.Tasks = append(e.Tasks, t)
			c.Tasks = append(c.Tasks, t)
		}
		e.Covers = append(e.Covers, c)
	}
	slices.Sort(e.Devices)
	return e
}

// processes converts what a processes expression gave: facts.Tasks, a
// facts.Task, or a list (from concat) of those.
func processes(v any) ([]Process, error) {
	var out []Process
	seen := map[Process]bool{}
	var walk func(v any) error
	walk = func(v any) error {
		switch x := v.(type) {
		case nil:
		case facts.Task:
			p := Process{Pid: x.Pid, Tgid: x.Tgid, Comm: x.Comm, Role: x.Role, Part: x.Part, Cgroup: x.Cgroup}
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		case facts.Tasks:
			for _, t := range x {
				_ = walk(t)
			}
		case []facts.Task:
			for _, t := range x {
				_ = walk(t)
			}
		case []any:
			for _, t := range x {
				if err := walk(t); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("got %s, want facts.Tasks (e.g. Device.Freezes.Tasks().As(\"freezer\"))", reflect.TypeOf(v))
		}
		return nil
	}
	return out, walk(v)
}

func trigger(c *facts.Command) *Trigger {
	t := &Trigger{PPid: c.PPid, Comm: c.Comm, ParentComm: c.ParentComm, Filename: c.Filename,
		Args: slices.Clone(c.Args), Pipeline: c.Pipeline, Count: c.Count, Period: c.Period}
	if len(c.Pids) > 0 {
		t.Pid = c.Pids[0]
	}
	return t
}

// chain merges cause findings into the findings they explain, deepest
// causes first, so chains of any length collapse into one finding.
func (ev *evaluation) chain(items []*item) []*item {
	depth := map[string]int{}
	var depthOf func(r *Rule, seen int) int
	depthOf = func(r *Rule, seen int) int {
		if d, ok := depth[r.ID]; ok {
			return d
		}
		t := ev.set.Rule(r.Explains)
		d := 0
		if t != nil && seen <= len(ev.set.rules) { // bounded: a cycle cannot loop forever
			d = 1 + depthOf(t, seen+1)
		}
		depth[r.ID] = d
		return d
	}
	order := slices.Clone(items)
	slices.SortStableFunc(order, func(a, b *item) int {
		return cmp.Or(cmp.Compare(depthOf(b.rule, 0), depthOf(a.rule, 0)), cmp.Compare(b.f.Score, a.f.Score))
	})
	gone := map[*item]bool{}
	type slot struct {
		target *item
		rule   string
	}
	taken := map[slot]bool{}
	type place struct{ rule, dev string }
	// The findings of each rule on each device, the highest score first
	// (the first of equal ones); those merged away as causes themselves are
	// dropped from the front: a cause goes to the first one left.
	byPlace := map[place][]*item{}
	for _, t := range items {
		byPlace[place{t.rule.ID, t.dev}] = append(byPlace[place{t.rule.ID, t.dev}], t)
	}
	for _, ts := range byPlace {
		slices.SortStableFunc(ts, func(a, b *item) int { return cmp.Compare(b.f.Score, a.f.Score) })
	}
	for _, c := range order {
		if c.rule.Explains == "" || c.dev == "" {
			continue
		}
		var target *item
		ts := byPlace[place{c.rule.Explains, c.dev}]
		for len(ts) > 0 && gone[ts[0]] {
			ts = ts[1:]
		}
		byPlace[place{c.rule.Explains, c.dev}] = ts
		for _, t := range ts {
			if t != c {
				target = t
				break
			}
		}
		if target == nil || taken[slot{target, c.rule.ID}] {
			continue
		}
		taken[slot{target, c.rule.ID}] = true
		merge(target.f, c.f)
		gone[c] = true
	}
	var out []*item
	for _, it := range items {
		if !gone[it] {
			out = append(out, it)
		}
	}
	return out
}

// merge makes cause an earlier part of effect's chain.
func merge(effect, cause *Finding) {
	effect.Steps = append(slices.Clone(cause.Steps), effect.Steps...)
	if effect.stages != nil && cause.stages != nil {
		for _, st := range cause.stages {
			if !slices.Contains(effect.stages, st) {
				effect.stages = append(effect.stages, st)
			}
		}
	} else {
		effect.stages = nil // one of them explains every stage
	}
	if effect.Trigger == nil {
		effect.Trigger = cause.Trigger
	}
	have := make(map[Process]bool, len(effect.Processes))
	for _, p := range effect.Processes {
		have[p] = true
	}
	for _, p := range cause.Processes {
		if !have[p] {
			have[p] = true
			effect.Processes = append(effect.Processes, p)
		}
	}
	for _, d := range cause.Devices {
		if !slices.Contains(effect.Devices, d) {
			effect.Devices = append(effect.Devices, d)
		}
	}
	if severityRank(cause.Severity) < severityRank(effect.Severity) {
		effect.Severity = cause.Severity
	}
	effect.Score = max(effect.Score, cause.Score)
	effect.Precision = joinPrecision(splitPrecision(effect.Precision), splitPrecision(cause.Precision))
	effect.Explanation = joinText(cause.Explanation, effect.Explanation, "\n\n")
	if cause.Remedy != effect.Remedy {
		effect.Remedy = joinText(cause.Remedy, effect.Remedy, "\n\n")
	}
	names := map[string]bool{}
	for _, e := range effect.Evidence {
		names[e.Name] = true
	}
	for _, e := range cause.Evidence {
		if names[e.Name] {
			e.Name = cause.Rule + "." + e.Name
		}
		names[e.Name] = true
		effect.Evidence = append(effect.Evidence, e)
	}
}

// precisionSep separates the sources of a finding's Precision.
const precisionSep = "; "

func splitPrecision(p string) []string {
	if p == "" {
		return nil
	}
	return strings.Split(p, precisionSep)
}

// joinPrecision joins sources without repeats or empty ones, the most
// precise first, else in the order given.
func joinPrecision(a, b []string) string {
	var out []string
	for _, s := range append(slices.Clone(a), b...) {
		s = strings.TrimSpace(s)
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	slices.SortStableFunc(out, func(x, y string) int { return cmp.Compare(precisionRank(x), precisionRank(y)) })
	return strings.Join(out, precisionSep)
}

// precisionRank orders sources from the most precise: measured at the
// function, then by tracepoints, then inferred.
func precisionRank(s string) int {
	switch {
	case strings.HasPrefix(s, "direct:"):
		return 0
	case strings.HasPrefix(s, "tracepoint"):
		return 1
	}
	return 2
}

func joinText(a, b, sep string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + sep + b
}

// toFloat converts a number of any Go numeric type to float64; other values give 0.
func toFloat(v any) float64 {
	switch x := v.(type) {
	case float64:
		return x
	case float32:
		return float64(x)
	case int:
		return float64(x)
	case time.Duration:
		return float64(x)
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return float64(rv.Int())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return float64(rv.Uint())
	case reflect.Float32, reflect.Float64:
		return rv.Float()
	}
	return 0
}

// num formats a number for prose: integers plainly, others with one decimal.
func num(v any) string {
	f := toFloat(v)
	if math.Abs(f-math.Round(f)) < 0.05 || math.Abs(f) >= 100 {
		return fmt.Sprintf("%.0f", f)
	}
	return fmt.Sprintf("%.1f", f)
}

// dur formats a duration rounded for prose: 30s, 2.5s, 28ms, 450µs.
func dur(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return d.Round(time.Second).String()
	case d >= time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= 10*time.Millisecond:
		return d.Round(time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}

// plural gives "1 stall", "3 stalls".
func plural(n any, word string) string {
	s := num(n)
	if s == "1" {
		return s + " " + word
	}
	return s + " " + word + "s"
}

// strs converts a list of any element type to strings.
func strs(v any) []string {
	if s, ok := v.([]string); ok {
		return s
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Slice && rv.Kind() != reflect.Array {
		if v == nil {
			return nil
		}
		return []string{fmt.Sprint(v)}
	}
	out := make([]string, rv.Len())
	for i := range out {
		out[i] = fmt.Sprint(rv.Index(i).Interface())
	}
	return out
}

// list joins words as prose: "a", "a and b", "a, b and c". It takes a list
// of anything.
func list(v any) string {
	s := strs(v)
	switch len(s) {
	case 0:
		return ""
	case 1:
		return s[0]
	}
	return strings.Join(s[:len(s)-1], ", ") + " and " + s[len(s)-1]
}

// tidy collapses runs of spaces inside each line of prose (templates leave
// them around actions), keeping each line's indentation.
func tidy(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		body := strings.TrimLeft(l, " ")
		lines[i] = l[:len(l)-len(body)] + strings.Join(strings.Fields(body), " ")
	}
	return strings.Join(lines, "\n")
}
