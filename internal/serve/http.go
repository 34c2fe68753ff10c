package serve

import (
	"bytes"
	"fmt"
	"html"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/flight"
	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/internal/tracefile"
)

// contentTypes are the content types of the report formats.
var contentTypes = map[string]string{
	"text":     "text/plain; charset=utf-8",
	"json":     "application/json",
	"markdown": "text/markdown; charset=utf-8",
	"html":     "text/html; charset=utf-8",
}

// handler serves the endpoints.
func (a *agent) handler() http.Handler {
	mux := http.NewServeMux()
	reg := a.m.Registry()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /report", a.report)
	mux.HandleFunc("GET /trace", a.trace)
	mux.HandleFunc("GET /healthz", a.healthz)
	mux.HandleFunc("GET /{$}", a.index)
	return mux
}

func (a *agent) index(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	fmt.Fprintf(w, `<!DOCTYPE html><html><head><meta charset="utf-8"><title>whyslow on %[1]s</title></head><body>
<h1>whyslow serve on %[1]s</h1>
<ul>
<li><a href="/metrics">/metrics</a>: Prometheus metrics</li>
<li><a href="/report?format=html">/report</a>?format=text|json|markdown|html: the report of the last window (%[2]s)</li>
<li><a href="/trace?seconds=60">/trace</a>?seconds=N: the last N seconds as a trace for <code>whyslow analyze</code> (at most %[3]s)</li>
<li><a href="/healthz">/healthz</a></li>
</ul></body></html>
`, html.EscapeString(a.host), a.opts.Window, a.opts.FlightRecorder)
}

// report serves the last window's report.
func (a *agent) report(w http.ResponseWriter, r *http.Request) {
	format := r.URL.Query().Get("format")
	if format == "" {
		format = "text"
	}
	ct, ok := contentTypes[format]
	if !ok {
		http.Error(w, fmt.Sprintf("format %q: want one of %s", format, strings.Join(report.FormatNames(), ", ")), http.StatusBadRequest)
		return
	}
	win := a.lastWindow()
	if win == nil {
		w.Header().Set("Retry-After", strconv.Itoa(int(a.opts.Window.Seconds())))
		http.Error(w, fmt.Sprintf("no window evaluated yet: the first ends %s after the start", a.opts.Window), http.StatusServiceUnavailable)
		return
	}
	var b bytes.Buffer
	if err := report.Write(&b, win.rep, win.run, format); err != nil {
		http.Error(w, "rendering the report: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("X-Whyslow-Window-Start", win.start.UTC().Format(time.RFC3339Nano))
	w.Header().Set("X-Whyslow-Window-End", win.end.UTC().Format(time.RFC3339Nano))
	w.Write(b.Bytes())
}

// healthz says whether the probes run and the windows go on: unhealthy
// when no tick came for three ticks and 10 s (the loop is stuck).
func (a *agent) healthz(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	since := time.Since(a.lastTick)
	last := a.last
	a.mu.Unlock()
	if stale := 3*a.opts.Tick + 10*time.Second; since > stale {
		http.Error(w, fmt.Sprintf("unhealthy: the flight recorder was last rotated %s ago", since.Round(time.Second)), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	running := 0
	for _, p := range a.statuses {
		if p.Status == event.StatusOK {
			running++
		}
	}
	msg := fmt.Sprintf("ok: %d of %d probes running", running, len(a.statuses))
	if last != nil {
		msg += fmt.Sprintf("; last window ended %s ago", time.Since(last.end).Round(time.Second))
	} else {
		msg += "; first window not evaluated yet"
	}
	fmt.Fprintln(w, msg)
}

// trace dumps the last seconds the flight recorder holds as a trace file.
func (a *agent) trace(w http.ResponseWriter, r *http.Request) {
	seconds := a.opts.FlightRecorder
	if s := r.URL.Query().Get("seconds"); s != "" {
		n, err := strconv.ParseFloat(s, 64)
		if err != nil || n <= 0 || n > a.opts.FlightRecorder.Seconds() {
			http.Error(w, fmt.Sprintf("seconds=%q: want a number of seconds above 0, at most %g (--flight-recorder)", s, a.opts.FlightRecorder.Seconds()), http.StatusBadRequest)
			return
		}
		seconds = time.Duration(n * float64(time.Second))
	}
	select {
	case a.dumping <- struct{}{}:
		defer func() { <-a.dumping }()
	default:
		w.Header().Set("Retry-After", "5")
		http.Error(w, "another /trace dump is being written; one at a time", http.StatusServiceUnavailable)
		return
	}
	now, err := event.Now()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	end := a.state(now, false)
	from, parts, losses, ok := a.rec.Since(now.Add(-seconds))
	if !ok {
		http.Error(w, "the flight recorder holds no checkpoint yet", http.StatusServiceUnavailable)
		return
	}
	tl := &timeline.Timeline{Start: from.At, End: now, Kernel: a.kernel, Hostname: a.host, MinLatency: a.opts.MinLatency,
		Probes: append([]event.ProbeStatus(nil), a.statuses...), Coverage: a.coverage(from.At, now)}
	a.mu.Lock()
	tl.Holders = a.holders
	a.mu.Unlock()
	devs, counted := flight.Delta(end, from)
	tl.Devices = devs
	// The sums along the states held, one at a time, within the bound of
	// a window's sums.
	sums := flight.WindowSums{Bound: a.opts.WindowSums}
	prev := from.Carried()
	a.rec.EachState(from, end, func(st flight.State) {
		sums.Add(st, prev)
		prev = st.Carried()
	})
	sums.Add(end, prev)
	sums.Take(tl)
	for _, l := range append(losses, counted...) {
		tl.AddLoss(l)
	}
	// A trace holds the events that began at most tracefile.EventSlack
	// before its window: a span that began earlier (a task blocked for
	// over an hour) cannot be recorded, and is counted.
	oldest := from.At.Add(-tracefile.EventSlack + time.Minute)
	for i, p := range parts {
		q := *p // DropBefore gives q new slices, if any, never p's
		if early := q.DropBefore(oldest); len(early) > 0 {
			for probe, n := range early {
				tl.AddLoss(event.Loss{Probe: probe, What: "began over 59 min before the dump's window (not recordable)", Count: n})
			}
			parts[i] = &q
		}
	}
	info := tracefile.Info{Version: a.opts.Version, StartedAt: a.wall(from.At), Duration: now.Sub(from.At), Devices: a.opts.Devices}
	name := fmt.Sprintf("whyslow-%s-%s.trace.gz", safeName(a.host), a.wall(now).UTC().Format("20060102T150405Z"))
	w.Header().Set("Content-Type", "application/gzip")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", name))
	w.Header().Set("X-Whyslow-Trace-Seconds", strconv.FormatFloat(now.Sub(from.At).Seconds(), 'f', 3, 64))
	rec := tracefile.NewRecorder(w, info)
	err = rec.Begin(tl)
	for _, p := range parts {
		if err == nil {
			err = rec.AppendPart(p)
		}
	}
	if err == nil {
		err = rec.Finish(tl)
	}
	if err != nil {
		fmt.Fprintf(a.opts.Log, "whyslow: /trace: writing the trace to %s: %v\n", r.RemoteAddr, err)
	}
}

// safeName keeps the characters of a host name that are safe in a file
// name.
func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
			return r
		}
		return '_'
	}, s)
}
