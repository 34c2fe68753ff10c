// Package metrics is what `whyslow serve` shows Prometheus on /metrics:
// the findings of the last window, the latency histograms of every device
// (mapped exactly from the in-kernel log-linear histograms: Buckets), the
// queue freezes and the application's blocked time by stage, the events
// lost, what each probe runs on, the rules' reloads, the flight recorder,
// and the Go process's own collectors. docs/serve.md lists them.
//
// Label values are bounded (Limit): devices to MaxDevices (the rest are
// summed under device="_other"), loss causes to MaxReasons per probe; the
// other labels are closed sets (probes, mechanisms, statuses, stages,
// severities) or the rule set's ids. No label holds a pid, a command or a
// path.
package metrics

import (
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/whyslow/whyslow/internal/escape"
	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/flight"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/rules"
)

// Bounds of the label values.
const (
	// MaxDevices is how many devices get a label value of their own.
	MaxDevices = 64
	// MaxReasons is how many loss causes each probe gets a label value
	// of its own for.
	MaxReasons = 16
)

// Metrics holds what /metrics shows, updated by serve as it goes, and
// collects it for Prometheus. Safe for concurrent use.
type Metrics struct {
	devices Limit
	reasons map[string]*Limit // by probe

	mu          sync.Mutex
	version     string
	kernel      string
	findings    map[findingKey]float64
	hists       map[string]*deviceHists // by device label: cumulative
	freezes     map[string]float64      // by device label
	stages      map[[2]string]float64   // by stage, device label: seconds
	losses      map[[2]string]uint64    // by probe, reason label
	lostOnce    uint64                  // every lost event once (event.Distinct)
	probes      []event.ProbeStatus
	rulesLoaded int
	reloads     map[string]uint64 // by result
	reloadOK    bool
	ruleErrors  map[string]uint64
	windows     uint64
	skipped     uint64
	windowEnd   time.Time
	windowDur   time.Duration
	flight      flight.Stats
	// The sums of the window being counted: how many, their memory.
	windowSums      int
	windowSumsBytes int64
	// armed is the state of an armed mode, read at each scrape (nil:
	// every program attached all the run).
	armed func() Armed
}

// Armed is the state of an armed mode (--armed-mode): whether the
// programs on the hot hooks are attached now, for how long they were in
// all, and how many times they were attached.
type Armed struct {
	Armed   bool
	Seconds float64
	Armings uint64
}

// SetArmed makes /metrics show an armed mode's state, which state gives
// at each scrape (it must not block long, nor call into Metrics).
func (m *Metrics) SetArmed(state func() Armed) {
	m.mu.Lock()
	m.armed = state
	m.mu.Unlock()
}

type findingKey struct{ rule, severity, device string }

type deviceHists struct{ submit, service hist.Histogram }

// New returns the metrics of a serve run of whyslow version on kernel.
func New(version, kernel string) *Metrics {
	return &Metrics{
		devices:    Limit{Max: MaxDevices},
		reasons:    map[string]*Limit{},
		version:    version,
		kernel:     kernel,
		findings:   map[findingKey]float64{},
		hists:      map[string]*deviceHists{},
		freezes:    map[string]float64{},
		stages:     map[[2]string]float64{},
		losses:     map[[2]string]uint64{},
		reloads:    map[string]uint64{},
		reloadOK:   true,
		ruleErrors: map[string]uint64{},
	}
}

// Registry returns a registry with these metrics and Go's process and
// runtime collectors.
func (m *Metrics) Registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(m,
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector())
	return reg
}

// Device is the label value of a device (Limit).
func (m *Metrics) Device(name string) string { return m.devices.Label(name) }

// Window is what one evaluated window adds: its findings replace the
// previous window's; the freezes, the blocked time by stage (seconds, by
// stage and device name) and the rule errors add to the totals.
type Window struct {
	End        time.Time
	Duration   time.Duration
	Findings   []rules.Finding
	Freezes    map[string]uint64           // by device name
	Stages     map[[2]string]time.Duration // by stage, device name
	RuleErrors rules.RuleErrors
}

// AddWindow records an evaluated window.
func (m *Metrics) AddWindow(w Window) {
	findings := map[findingKey]float64{}
	for _, f := range w.Findings {
		devs := f.Devices
		if len(devs) == 0 {
			devs = []string{""}
		}
		for _, d := range devs {
			if d != "" {
				d = m.Device(d)
			}
			k := findingKey{rule: label(f.Rule), severity: string(f.Severity), device: d}
			findings[k] = max(findings[k], f.Score)
		}
	}
	freezes := map[string]uint64{}
	for d, n := range w.Freezes {
		freezes[m.Device(d)] += n
	}
	stages := map[[2]string]time.Duration{}
	for k, v := range w.Stages {
		stages[[2]string{label(k[0]), m.Device(k[1])}] += v
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.findings = findings
	for d, n := range freezes {
		m.freezes[d] += float64(n)
	}
	for k, v := range stages {
		m.stages[k] += v.Seconds()
	}
	for _, e := range w.RuleErrors {
		m.ruleErrors[label(e.Rule)]++
	}
	m.windows++
	m.windowEnd, m.windowDur = w.End, w.Duration
}

// SkipWindow counts a window that was not evaluated (the previous one was
// still being evaluated).
func (m *Metrics) SkipWindow() {
	m.mu.Lock()
	m.skipped++
	m.mu.Unlock()
}

// SetHistograms records the cumulative histograms of every device (a
// state of the probes' counters).
func (m *Metrics) SetHistograms(devs []timeline.DeviceHistograms) {
	hs := map[string]*deviceHists{}
	for _, d := range devs {
		l := m.Device(d.Dev.String())
		h := hs[l]
		if h == nil {
			h = &deviceHists{}
			hs[l] = h
		}
		h.submit.Merge(&d.Submit)
		h.service.Merge(&d.Service)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	// A device seen before keeps its series (its counts only grow).
	for l, h := range hs {
		m.hists[l] = h
	}
}

// SetLosses records every loss so far (cumulative), by probe and cause.
func (m *Metrics) SetLosses(losses []event.Loss) {
	out := map[[2]string]uint64{}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range losses {
		lim := m.reasons[l.Probe]
		if lim == nil {
			lim = &Limit{Max: MaxReasons}
			m.reasons[l.Probe] = lim
		}
		k := [2]string{label(l.Probe), lim.Label(l.What)}
		out[k] = timeline.SaturatingSum(out[k], l.Count)
	}
	// A cause counted before stays, at its highest count: counters never
	// go down.
	for k, v := range out {
		m.losses[k] = max(m.losses[k], v)
	}
	m.lostOnce = max(m.lostOnce, event.Distinct(losses))
}

// SetProbes records what each probe runs on.
func (m *Metrics) SetProbes(ps []event.ProbeStatus) {
	m.mu.Lock()
	m.probes = append([]event.ProbeStatus(nil), ps...)
	m.mu.Unlock()
}

// Rules records a load of the rules (and the stage table): how many
// rules are in use, and whether the load (a reload: first false) failed,
// what failed to load staying in use.
func (m *Metrics) Rules(loaded int, reload, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rulesLoaded = loaded
	if reload {
		result := "ok"
		if !ok {
			result = "error"
		}
		m.reloads[result]++
		m.reloadOK = ok
	}
}

// SetFlight records what the flight recorder holds.
func (m *Metrics) SetFlight(st flight.Stats) {
	m.mu.Lock()
	m.flight = st
	m.mu.Unlock()
}

// SetWindowSums records the sums held for the window being counted
// (flight.WindowSums: how many, and their estimated memory).
func (m *Metrics) SetWindowSums(n int, bytes int64) {
	m.mu.Lock()
	m.windowSums, m.windowSumsBytes = n, bytes
	m.mu.Unlock()
}

// label makes a value from a rule file or the host printable: a control
// character or invalid UTF-8 cannot reach a scrape.
func label(v string) string { return strings.ToValidUTF8(escape.String(v), "\uFFFD") }

var (
	descFinding = prometheus.NewDesc("whyslow_finding",
		"A finding of the last window evaluated, present while it holds: its score (the milliseconds of I/O delay it explains; the highest of the rule's findings on the device). device is \"\" for a finding that names none, \"_other\" past the device bound.",
		[]string{"rule", "severity", "device"}, nil)
	descSubmit = prometheus.NewDesc("whyslow_submit_latency_seconds",
		"Latency of every bio's submission (block_bio_queue to getting a request or merging: frozen-queue, throttling and tag waits), per device, since serve started. Buckets end at 2^k-1 ns: exact counts of the in-kernel log-linear histogram.",
		[]string{"device"}, nil)
	descService = prometheus.NewDesc("whyslow_service_latency_seconds",
		"Latency of every request at the device (issue to completion, what iostat sees), per device, since serve started. Buckets end at 2^k-1 ns: exact counts of the in-kernel log-linear histogram.",
		[]string{"device"}, nil)
	descFreezes = prometheus.NewDesc("whyslow_queue_freezes_total",
		"Queue freezes seen, per device (direct freeze probe, or inferred from freezers' off-CPU stacks).",
		[]string{"device"}, nil)
	descStages = prometheus.NewDesc("whyslow_stage_seconds_total",
		"Time the application's storage system calls spent blocked, by stage (queue_freeze, tag_wait, device, ...) and device.",
		[]string{"stage", "device"}, nil)
	descLost = prometheus.NewDesc("whyslow_lost_events_total",
		"Events the probes could not deliver or whyslow could not keep, by probe and cause (\"_other\" past 16 causes of a probe).",
		[]string{"probe", "reason"}, nil)
	descLostOnce = prometheus.NewDesc("whyslow_lost_events_distinct_total",
		"Events lost, each counted once: the causes of several probes that count the same events (block completions no program saw: service, submit, devfault) count once, at the largest probe's count. Sum whyslow_lost_events_total for each probe's own view, not for a total.",
		nil, nil)
	descProbe = prometheus.NewDesc("whyslow_probe_info",
		"What each probe runs on: 1 per probe, with its mechanism (empty when unavailable) and status (ok or unavailable).",
		[]string{"probe", "mechanism", "status"}, nil)
	descRules = prometheus.NewDesc("whyslow_rules_loaded",
		"Rules in use.", nil, nil)
	descReloads = prometheus.NewDesc("whyslow_rules_reloads_total",
		"Reloads of --rules and --stages on SIGHUP, by result (ok, error: what failed to load stays in use as before, stderr says why).",
		[]string{"result"}, nil)
	descReloadOK = prometheus.NewDesc("whyslow_rules_last_reload_success",
		"1 unless the last reload of --rules or --stages failed (then the previous rules or stage table are in use).", nil, nil)
	descRuleErrors = prometheus.NewDesc("whyslow_rule_errors_total",
		"Windows in which a rule failed as it was evaluated (its findings are missing there).",
		[]string{"rule"}, nil)
	descWindows = prometheus.NewDesc("whyslow_windows_total",
		"Windows evaluated.", nil, nil)
	descSkipped = prometheus.NewDesc("whyslow_windows_skipped_total",
		"Windows not evaluated because the previous one was still being evaluated.", nil, nil)
	descWindowEnd = prometheus.NewDesc("whyslow_window_end_timestamp_seconds",
		"When the last window evaluated ended (Unix time).", nil, nil)
	descWindowLen = prometheus.NewDesc("whyslow_window_seconds",
		"Length of the last window evaluated.", nil, nil)
	descFlightBytes = prometheus.NewDesc("whyslow_flight_recorder_bytes",
		"Memory the flight recorder's events and checkpoints take (estimated).", nil, nil)
	descFlightMax = prometheus.NewDesc("whyslow_flight_recorder_max_bytes",
		"The flight recorder's memory bound (--flight-recorder-memory).", nil, nil)
	descFlightHeld = prometheus.NewDesc("whyslow_flight_recorder_held_seconds",
		"How much of the recent run the flight recorder holds.", nil, nil)
	descFlightEvents = prometheus.NewDesc("whyslow_flight_recorder_events",
		"Events the flight recorder holds.", nil, nil)
	descWindowSums = prometheus.NewDesc("whyslow_window_sums",
		"Sums (process x device x call histograms, blocked stacks, memory stalls, processes' I/O) held for the window being counted, as of the latest checkpoint; exited processes' sums are folded, then dropped, past their bound.", nil, nil)
	descWindowSumsBytes = prometheus.NewDesc("whyslow_window_sums_bytes",
		"Memory the sums held for the window being counted take (estimated).", nil, nil)
	descFolded = prometheus.NewDesc("whyslow_label_values_folded",
		"Distinct values of a bounded label folded into \"_other\" (devices past 64).",
		[]string{"label"}, nil)
	descArmed = prometheus.NewDesc("whyslow_armed",
		"In an armed mode (--armed-mode, experimental): 1 while the programs on the hot hooks (sys_enter, sys_exit, sched_switch, sched_waking) are attached, 0 while they are not (storage calls and off-CPU waits are then not seen). Absent without --armed-mode (always attached).", nil, nil)
	descArmedSeconds = prometheus.NewDesc("whyslow_armed_seconds_total",
		"In an armed mode: time the programs on the hot hooks were attached since serve started.", nil, nil)
	descArmings = prometheus.NewDesc("whyslow_armings_total",
		"In an armed mode: times the programs on the hot hooks were attached (armed mode auto, on a trouble signal after a quiet spell).", nil, nil)
	descBuild = prometheus.NewDesc("whyslow_build_info",
		"whyslow's version and the kernel it runs on.", []string{"version", "kernel"}, nil)
)

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFinding, descSubmit, descService, descFreezes, descStages, descLost,
		descLostOnce, descProbe, descRules, descReloads, descReloadOK, descRuleErrors, descWindows, descSkipped, descWindowEnd,
		descWindowLen, descFlightBytes, descFlightMax, descFlightHeld, descFlightEvents, descWindowSums, descWindowSumsBytes,
		descFolded, descArmed, descArmedSeconds, descArmings, descBuild} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	folded := m.devices.Folded()
	m.mu.Lock()
	armed := m.armed
	m.mu.Unlock()
	if armed != nil {
		st := armed()
		on := 0.0
		if st.Armed {
			on = 1
		}
		ch <- prometheus.MustNewConstMetric(descArmed, prometheus.GaugeValue, on)
		ch <- prometheus.MustNewConstMetric(descArmedSeconds, prometheus.CounterValue, st.Seconds)
		ch <- prometheus.MustNewConstMetric(descArmings, prometheus.CounterValue, float64(st.Armings))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	for k, v := range m.findings {
		gauge(descFinding, v, k.rule, k.severity, k.device)
	}
	for _, dev := range sortedKeys(m.hists) {
		h := m.hists[dev]
		for _, x := range []struct {
			d *prometheus.Desc
			h *hist.Histogram
		}{{descSubmit, &h.submit}, {descService, &h.service}} {
			n, sum, b := Buckets(x.h)
			ch <- prometheus.MustNewConstHistogram(x.d, n, sum, b, dev)
		}
	}
	for d, n := range m.freezes {
		counter(descFreezes, n, d)
	}
	for k, v := range m.stages {
		counter(descStages, v, k[0], k[1])
	}
	for k, v := range m.losses {
		counter(descLost, float64(v), k[0], k[1])
	}
	counter(descLostOnce, float64(m.lostOnce))
	for _, p := range m.probes {
		gauge(descProbe, 1, label(p.Name), string(p.Mechanism), string(p.Status))
	}
	gauge(descRules, float64(m.rulesLoaded))
	for _, r := range []string{"ok", "error"} {
		counter(descReloads, float64(m.reloads[r]), r)
	}
	ok := 0.0
	if m.reloadOK {
		ok = 1
	}
	gauge(descReloadOK, ok)
	for r, n := range m.ruleErrors {
		counter(descRuleErrors, float64(n), r)
	}
	counter(descWindows, float64(m.windows))
	counter(descSkipped, float64(m.skipped))
	if !m.windowEnd.IsZero() {
		gauge(descWindowEnd, float64(m.windowEnd.UnixNano())/1e9)
		gauge(descWindowLen, m.windowDur.Seconds())
	}
	gauge(descFlightBytes, float64(m.flight.Bytes))
	gauge(descFlightMax, float64(m.flight.MaxBytes))
	gauge(descFlightHeld, m.flight.Held.Seconds())
	gauge(descWindowSums, float64(m.windowSums))
	gauge(descWindowSumsBytes, float64(m.windowSumsBytes))
	gauge(descFlightEvents, float64(m.flight.Events))
	gauge(descFolded, float64(folded), "device")
	gauge(descBuild, 1, label(m.version), label(m.kernel))
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
