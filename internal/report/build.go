package report

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/facts"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/rules"
)

// Meta is what the report records about the run itself.
type Meta struct {
	Version   string    // tool version
	Hostname  string    // empty: the timeline's
	StartedAt time.Time // wall-clock start of the run
	// Duration, MinLatency and Devices are the command-line flags.
	Duration   time.Duration
	MinLatency time.Duration
	Devices    []string
	// RuleErrors are the rules that failed while they were evaluated.
	RuleErrors rules.RuleErrors
	// NotEvaluated are the rules whose needed facts no probe of the run
	// supplied.
	NotEvaluated []rules.NotEvaluated
	// Incomplete says the timeline comes from a trace that was cut, and
	// Cut where and why (tracefile.Info).
	Incomplete bool
	Cut        string
}

// MaxStacks is how many blocked stacks a finding shows.
const MaxStacks = 3

// Build assembles the report. Any of tl and run may be nil (a run that
// derived no facts); findings are ordered by rank and renumbered 1..n.
func Build(tl *timeline.Timeline, run *facts.Run, findings []rules.Finding, meta Meta) *Report {
	r := &Report{
		Schema:                   SchemaID,
		Tool:                     Tool{Name: ToolName, Version: meta.Version},
		Host:                     Host{Hostname: meta.Hostname},
		StartedAt:                meta.StartedAt.Truncate(time.Second),
		RequestedDurationSeconds: seconds(meta.Duration),
		MinLatencyUs:             us(meta.MinLatency),
		DeviceFilter:             nonNil(slices.Clone(meta.Devices)),
		Losses:                   []Loss{},
		Probes:                   []Probe{},
		Devices:                  []Device{},
		Findings:                 []Finding{},
		RuleErrors:               []RuleError{},
	}
	for _, e := range meta.RuleErrors {
		r.RuleErrors = append(r.RuleErrors, ruleError(e))
	}
	for _, n := range meta.NotEvaluated {
		r.NotEvaluated = append(r.NotEvaluated, NotEvaluated{Rule: n.Rule, Reason: n.Reason})
	}
	if meta.StartedAt.IsZero() {
		r.StartedAt = time.Time{}
	}
	var observed time.Duration
	if tl != nil {
		if r.Host.Hostname == "" {
			r.Host.Hostname = tl.Hostname
		}
		r.Host.Kernel = tl.Kernel
		observed = tl.Duration()
		if tl.MinLatency > 0 {
			r.MinLatencyUs = us(tl.MinLatency)
		}
		r.LostEvents = tl.LostEvents()
		for _, l := range tl.Losses {
			r.Losses = append(r.Losses, Loss{Probe: l.Probe, What: l.What, Count: l.Count, Overlap: l.Overlap()})
		}
		for _, p := range tl.Probes {
			r.Probes = append(r.Probes, probe(p))
		}
		r.Trouble = troubleOf(tl)
		r.Coverage = coverageOf(tl)
	}
	if run != nil {
		if r.Host.Kernel == "" {
			r.Host.Kernel = run.Kernel
		}
		if observed <= 0 {
			observed = run.Duration
		}
		if r.MinLatencyUs == 0 {
			r.MinLatencyUs = us(run.MinLatency)
		}
		r.LostEvents = max(r.LostEvents, run.LostEvents)
	}
	if observed <= 0 {
		observed = meta.Duration
	}
	r.Kernel = r.Host.Kernel
	r.DurationSeconds = seconds(observed)
	if meta.Incomplete {
		covered := r.DurationSeconds
		r.Incomplete, r.CoveredSeconds, r.IncompleteReason = true, &covered, meta.Cut
	}
	sort.SliceStable(r.Losses, func(i, j int) bool {
		a, b := r.Losses[i], r.Losses[j]
		return a.Probe < b.Probe || a.Probe == b.Probe && a.What < b.What
	})
	sort.SliceStable(r.Probes, func(i, j int) bool { return r.Probes[i].Name < r.Probes[j].Name })

	byName := map[string]*facts.Device{}
	switch {
	case run != nil:
		for _, d := range run.Devices {
			if d == nil {
				continue
			}
			byName[d.Name] = d
			r.Devices = append(r.Devices, device(d, observed))
		}
	case tl != nil: // no facts: the histograms alone
		for _, h := range tl.Devices {
			r.Devices = append(r.Devices, histDevice(h))
		}
	}
	sort.SliceStable(r.Devices, func(i, j int) bool { return r.Devices[i].Name < r.Devices[j].Name })
	if run != nil {
		r.Affected = affectedOf(run)
	}

	sc := stackCache{}
	for _, f := range findings {
		r.Findings = append(r.Findings, finding(f, byName, sc))
	}
	sort.SliceStable(r.Findings, func(i, j int) bool {
		a, b := r.Findings[i], r.Findings[j]
		if (a.Rank > 0) != (b.Rank > 0) {
			return a.Rank > 0 // unranked last
		}
		if a.Rank != b.Rank {
			return a.Rank < b.Rank
		}
		return a.Score > b.Score
	})
	r.Summary.WorstSeverity = "none"
	for i := range r.Findings {
		r.Findings[i].Rank = i + 1
		if severityOrder(r.Findings[i].Severity) < severityOrder(r.Summary.WorstSeverity) {
			r.Summary.WorstSeverity = r.Findings[i].Severity
		}
	}
	r.Summary.Findings = len(r.Findings)
	return r
}

// affectedOf lists the processes worth a look: the ones with the most time
// in storage calls (run.Processes is in that order), at most MaxAffected,
// and only those with at least the run's --min-latency of it in all and a
// hundredth of the first one's (a shell's reads of its script are not a
// victim of anything).
func affectedOf(run *facts.Run) []Affected {
	var out []Affected
	var top time.Duration
	for _, p := range run.Processes {
		if p == nil {
			continue
		}
		top = max(top, p.Total)
		if len(out) == MaxAffected || p.Total <= 0 || p.Total < run.MinLatency || p.Total < top/100 {
			continue
		}
		out = append(out, affected(p))
	}
	return out
}

func affected(p *facts.Process) Affected {
	out := Affected{Pid: p.Pid, Comm: p.Comm, Cgroup: p.Cgroup, Blkio: p.Blkio, Devices: nonNil(slices.Clone(p.Devices)),
		TotalMs: ms(p.Total), BlockedMs: ms(p.Blocked), Calls: []AffectedCall{}, Stages: []StageShare{}}
	for _, c := range p.Calls {
		out.Calls = append(out.Calls, AffectedCall{Syscall: c.Syscall, Count: c.Latency.Count,
			P50Us: round(c.Latency.P50Us, 1), P99Us: round(c.Latency.P99Us, 1), MaxUs: round(c.Latency.MaxUs, 1), TotalMs: ms(c.Total),
			Unfinished: c.Unfinished, FromArming: c.FromArming})
	}
	for _, u := range p.Unfinished {
		out.Unfinished = append(out.Unfinished, UnfinishedCall{Tid: u.Tid, Comm: u.Comm, Syscall: u.Syscall, Device: u.Device,
			InCallMs: ms(u.InCall), BlockedMs: ms(u.Blocked), Stage: u.Stage, LowerBound: u.LowerBound})
	}
	for _, s := range p.Stages {
		out.Stages = append(out.Stages, StageShare{Stage: s.Stage, TotalMs: ms(s.Total), Share: round(s.Share, 3), Frames: s.Frames})
	}
	return out
}

func ruleError(e rules.RuleError) RuleError {
	return RuleError{Rule: e.Rule, File: e.File, Line: e.Line, Column: e.Column, Error: e.What()}
}

// severityOrder is 0 for the worst severity; "none" sorts after everything.
func severityOrder(s string) int {
	switch rules.Severity(s) {
	case rules.Critical:
		return 0
	case rules.Warning:
		return 1
	case rules.Info:
		return 2
	}
	if s == "none" {
		return 4
	}
	return 3
}

func probe(p event.ProbeStatus) Probe {
	out := Probe{Name: p.Name, Mechanism: string(p.Mechanism), Status: p.Status, Reason: p.Reason, Skipped: []Skip{}}
	for _, s := range p.Skipped {
		out.Skipped = append(out.Skipped, Skip{Mechanism: string(s.Mechanism), Reason: s.Reason})
	}
	return out
}

func device(d *facts.Device, observed time.Duration) Device {
	out := Device{
		Name:       d.Name,
		ID:         d.ID,
		Lower:      nonNil(slices.Clone(d.Lower)),
		Upper:      nonNil(slices.Clone(d.Upper)),
		Submit:     latency(d.Submit),
		Service:    latency(d.Service),
		SubmitCall: latency(d.SubmitCall),
		Stalls:     spanStats(d.Stalls),
		QueueWaits: spanStats(d.QueueWaits),
		Freezes:    spanStats(d.Freezes),
		Uevents:    uevents(d.Uevents, observed),
	}
	return out
}

// uevents counts a device's uevents, in all and per action, with their
// rates over the observed window (0 when it is empty).
func uevents(ps facts.Points, observed time.Duration) UeventStats {
	rate := func(n int) float64 {
		if s := observed.Seconds(); s > 0 {
			return round(float64(n)/s, 2)
		}
		return 0
	}
	byAction := map[string]int{}
	for _, p := range ps {
		byAction[p.What]++
	}
	out := UeventStats{Count: len(ps), PerSecond: rate(len(ps)), ByAction: make([]ActionCount, 0, len(byAction))}
	for a, n := range byAction {
		out.ByAction = append(out.ByAction, ActionCount{Action: a, Count: n, PerSecond: rate(n)})
	}
	slices.SortFunc(out.ByAction, func(a, b ActionCount) int {
		if a.Count != b.Count {
			return b.Count - a.Count
		}
		return strings.Compare(a.Action, b.Action)
	})
	return out
}

func histDevice(h timeline.DeviceHistograms) Device {
	return Device{
		Name:    h.Dev.String(),
		ID:      h.Dev.ID(),
		Lower:   []string{},
		Upper:   []string{},
		Submit:  histLatency(&h.Submit),
		Service: histLatency(&h.Service),
		Uevents: UeventStats{ByAction: []ActionCount{}},
	}
}

func latency(l facts.Latency) Latency {
	return Latency{Count: l.Count, MeanUs: round(l.MeanUs, 1), P50Us: round(l.P50Us, 1), P99Us: round(l.P99Us, 1), MaxUs: round(l.MaxUs, 1)}
}

func histLatency(h *hist.Histogram) Latency {
	return Latency{Count: h.Count, MeanUs: us(h.Mean()), P50Us: us(h.Quantile(0.5)), P99Us: us(h.Quantile(0.99)), MaxUs: us(time.Duration(h.MaxNs))}
}

func spanStats(s facts.Spans) SpanStats {
	var total, longest time.Duration
	for _, sp := range s {
		d := max(sp.Duration(), 0)
		total = facts.SaturatingAdd(total, d)
		longest = max(longest, d)
	}
	return SpanStats{Count: len(s), TotalMs: ms(total), MaxMs: ms(longest)}
}

func finding(f rules.Finding, devices map[string]*facts.Device, sc stackCache) Finding {
	out := Finding{
		Rank:        f.Rank,
		Rule:        f.Rule,
		Severity:    string(f.Severity),
		Score:       round(f.Score, 1),
		Title:       f.Title,
		Explanation: f.Explanation,
		Devices:     nonNil(slices.Clone(f.Devices)),
		Processes:   []Process{},
		Steps:       []Step{},
		Evidence:    Evidence{},
		Remedy:      f.Remedy,
		Precision:   f.Precision,
	}
	for _, p := range f.Processes {
		out.Processes = append(out.Processes, Process{Pid: p.Pid, Comm: p.Comm, Role: p.Role, Part: p.Part, Cgroup: p.Cgroup})
	}
	if t := f.Trigger; t != nil {
		out.Trigger = &Trigger{
			Pid: t.Pid, PPid: t.PPid, Comm: t.Comm, ParentComm: t.ParentComm,
			Filename: t.Filename, Args: nonNil(slices.Clone(t.Args)), Pipeline: t.Pipeline, Count: t.Count,
			PeriodSeconds: seconds(t.Period),
		}
	}
	for _, s := range f.Steps {
		out.Steps = append(out.Steps, Step{Rule: s.Rule, Title: s.Title})
	}
	for _, e := range f.Evidence {
		name, v := e.Name, e.Value
		if d, ok := v.(time.Duration); ok {
			v = ms(d)
			if !hasUnit(name) {
				name += "_ms"
			}
		}
		out.Evidence = append(out.Evidence, EvidenceItem{Name: name, Value: jsonValue(v)})
	}
	key := strings.Join(f.Devices, "\x00")
	st, ok := sc[key]
	if !ok {
		st = stacks(f.Devices, devices)
		sc[key] = st
	}
	out.Stacks = slices.Clone(st)
	return out
}

// stackCache holds the stacks of the findings of one report by their
// devices: thousands of findings on one device (a command each) group its
// spans once.
type stackCache map[string][]Stack

// stacks groups the queue-enter and freeze-wait spans of the devices by
// their frames and returns the MaxStacks groups with the most blocked time.
// Spans without any frame say nothing about where a task blocked; they are
// counted in the device summary but form no group here.
func stacks(names []string, devices map[string]*facts.Device) []Stack {
	type group struct {
		Stack
		total, longest time.Duration
		comms          map[string]int
		first          int
	}
	groups := map[string]*group{}
	seenDev := map[string]bool{}
	// Spans blocked in the same place share their frames: format each
	// stack once.
	type stackID struct {
		first *event.Frame
		n     int
	}
	formatted := map[stackID][]string{}
	format := func(fs []event.Frame) []string {
		if len(fs) == 0 {
			return event.FormatStack(fs)
		}
		id := stackID{&fs[0], len(fs)}
		out, ok := formatted[id]
		if !ok {
			out = event.FormatStack(fs)
			formatted[id] = out
		}
		return out
	}
	n := 0
	for _, name := range names {
		d := devices[name]
		if d == nil || seenDev[name] {
			continue
		}
		seenDev[name] = true
		for _, spans := range []facts.Spans{d.QueueWaits, d.Freezes} {
			for _, sp := range spans {
				if sp.Kind != facts.KindQueueEnter && sp.Kind != facts.KindFreezeWait && sp.Kind != facts.KindFreeze {
					continue
				}
				if len(sp.KernelStack) == 0 && len(sp.UserStack) == 0 {
					continue
				}
				k, u := format(sp.KernelStack), format(sp.UserStack)
				key := sp.Kind + "\x00" + strings.Join(k, "\x01") + "\x00" + strings.Join(u, "\x01")
				g := groups[key]
				if g == nil {
					g = &group{Stack: Stack{Kind: sp.Kind, Kernel: k, User: u}, comms: map[string]int{}, first: n}
					groups[key] = g
					n++
				}
				d := max(sp.Duration(), 0)
				g.Count++
				g.total = facts.SaturatingAdd(g.total, d)
				g.longest = max(g.longest, d)
				g.comms[sp.Comm]++
			}
		}
	}
	all := make([]*group, 0, len(groups))
	for _, g := range groups {
		all = append(all, g)
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].total != all[j].total {
			return all[i].total > all[j].total
		}
		return all[i].first < all[j].first
	})
	out := []Stack{}
	for _, g := range all[:min(len(all), MaxStacks)] {
		s := g.Stack
		s.TotalMs, s.MaxMs = ms(g.total), ms(g.longest)
		s.Processes = make([]string, 0, len(g.comms))
		for c := range g.comms {
			s.Processes = append(s.Processes, c)
		}
		sort.Slice(s.Processes, func(i, j int) bool {
			a, b := s.Processes[i], s.Processes[j]
			return g.comms[a] > g.comms[b] || g.comms[a] == g.comms[b] && a < b
		})
		out = append(out, s)
	}
	return out
}

// hasUnit reports whether an evidence name ends in a unit suffix.
func hasUnit(name string) bool {
	_, ok := unitOf(name)
	return ok
}

// unitOf returns the time unit an evidence name ends in.
func unitOf(name string) (time.Duration, bool) {
	for _, u := range []struct {
		suffix string
		unit   time.Duration
	}{{"_ns", time.Nanosecond}, {"_us", time.Microsecond}, {"_ms", time.Millisecond}, {"_seconds", time.Second}, {"_s", time.Second}} {
		if strings.HasSuffix(name, u.suffix) {
			return u.unit, true
		}
	}
	return 0, false
}

// jsonValue turns a rule's value into plain JSON data (float64, string,
// bool, nil, []any, map[string]any) so that a report read back from JSON
// equals the one written. Non-finite numbers become null; values JSON cannot
// hold become their fmt string.
func jsonValue(v any) any {
	switch x := v.(type) {
	case nil, bool, string:
		return x
	case float64:
		return finite(x)
	case float32:
		return finite(float64(x))
	case time.Duration:
		return ms(x)
	case time.Time:
		return x.Format(time.RFC3339)
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return float64(rv.Int())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return float64(rv.Uint())
	case reflect.Float32, reflect.Float64:
		return finite(rv.Float())
	case reflect.String:
		return rv.String()
	case reflect.Bool:
		return rv.Bool()
	case reflect.Slice, reflect.Array:
		if rv.Kind() == reflect.Slice && rv.IsNil() {
			return []any{}
		}
		out := make([]any, rv.Len())
		for i := range out {
			out[i] = jsonValue(rv.Index(i).Interface())
		}
		return out
	case reflect.Map:
		if rv.Type().Key().Kind() == reflect.String {
			out := make(map[string]any, rv.Len())
			iter := rv.MapRange()
			for iter.Next() {
				out[iter.Key().String()] = jsonValue(iter.Value().Interface())
			}
			return out
		}
	}
	// Anything else (structs, pointers): through encoding/json, then normalized.
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		return fmt.Sprint(v)
	}
	return jsonValue(out)
}

// finite rounds a number to 3 decimals and turns NaN and infinities into null.
func finite(f float64) any {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil
	}
	return round(f, 3)
}

// round rounds to n decimals; non-finite values become 0.
func round(f float64, n int) float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0
	}
	p := math.Pow(10, float64(n))
	r := math.Round(f*p) / p
	if r == 0 {
		return 0 // no -0
	}
	return r
}

func us(d time.Duration) float64      { return round(float64(d)/float64(time.Microsecond), 1) }
func ms(d time.Duration) float64      { return round(float64(d)/float64(time.Millisecond), 2) }
func seconds(d time.Duration) float64 { return round(d.Seconds(), 3) }

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
