package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/whyslow/whyslow/internal/metrics"
)

// ServeResult is `whyslow serve` under the storm's load for a long time:
// its resident set over the run, which must level off (the flight
// recorder's memory bound) rather than grow.
type ServeResult struct {
	Seconds         float64     `json:"seconds"`
	Window          string      `json:"window"`
	FlightMemoryMiB float64     `json:"flight_memory_mib"`
	TargetUevents   int         `json:"target_uevents_per_s,omitempty"`
	TargetExecs     int         `json:"target_execs_per_s,omitempty"`
	Uevents         float64     `json:"uevents_per_s"`
	Execs           float64     `json:"execs_per_s"`
	IOPS            float64     `json:"iops"`
	RSSMiB          []RSSSample `json:"rss_mib"`
	PeakRSSMiB      float64     `json:"peak_rss_mib"`
	// FlightMiB is the most the flight recorder said it held
	// (whyslow_flight_recorder_bytes).
	FlightMiB float64 `json:"flight_recorder_mib"`
	// Flight is what the flight recorder held over the run.
	Flight     []RSSSample `json:"flight_recorder_mib_over_time,omitempty"`
	Windows    float64     `json:"windows"`
	Skipped    float64     `json:"windows_skipped"`
	LostEvents float64     `json:"lost_events"`
	// LostDistinct is whyslow_lost_events_distinct_total: each lost event
	// once (LostEvents, the sum over whyslow_lost_events_total's causes,
	// counts a block completion no program saw once per probe that missed
	// it); nil from a whyslow without it.
	LostDistinct *float64 `json:"lost_events_distinct,omitempty"`
	// Losses are whyslow_lost_events_total by probe and reason, as last
	// scraped.
	Losses     map[string]float64 `json:"losses,omitempty"`
	Traces     int                `json:"traces_dumped"`
	CPUSeconds float64            `json:"cpu_seconds"`
	// StopSeconds is how long serve took to end after SIGINT.
	StopSeconds float64 `json:"stop_seconds"`
	// Problems are what failed at the end of the run (a step that did
	// not end in its bound, a tool's error): the results before them
	// stand.
	Problems []string `json:"problems,omitempty"`
}

// serveFlightMemory is the --flight-recorder-memory of the benchmark.
const serveFlightMemory = 64

var servingLine = regexp.MustCompile(`serving on http://(\S+) `)

// serve runs whyslow serve (10 s windows) under the storm's load for
// -serve-time, sampling its RSS and its metrics every 10 s and dumping
// /trace?seconds=60 every minute.
func (b *bench) serve() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	ln.Close()
	p, err := startWhyslowProc("whyslow serve", readiness{line: servingLine}, b.o.whyslow, "serve", "--listen", addr,
		"--window", "10s", "--flight-recorder-memory", fmt.Sprintf("%dMiB", serveFlightMemory))
	if err != nil {
		return err
	}
	if err := p.waitReady(readyTimeout); err != nil {
		stopAll([]*proc{p})
		return err
	}
	d := b.o.serveTime
	res := &ServeResult{Seconds: d.Seconds(), Window: "10s", FlightMemoryMiB: serveFlightMemory,
		TargetUevents: b.o.uevents, TargetExecs: b.o.execs}
	load, err := b.startStormLoad(d)
	if err != nil {
		stopAll([]*proc{p})
		return err
	}
	var at atomic.Value // the step the section is in, for its watchdog
	at.Store("measuring")
	defer b.serveWatchdog(d+loadStopTimeout+fioGrace+serveStopTimeout+5*time.Minute, &at).Stop()
	base := "http://" + addr
	t0 := time.Now()
	lastTrace, lastLog := t0, t0
	var dumping atomic.Bool
	var traces atomic.Int64
	var dumps sync.WaitGroup
	for time.Since(t0) < d+time.Second {
		time.Sleep(10 * time.Second)
		now := time.Since(t0).Seconds()
		rss := float64(statusKB(p.pid(), "VmRSS")) / (1 << 20)
		res.RSSMiB = append(res.RSSMiB, RSSSample{At: now, MiB: rss})
		m, series, err := scrape(base + "/metrics")
		if err != nil {
			b.logf("serve: /metrics: %v", err)
			continue
		}
		flight := m["whyslow_flight_recorder_bytes"] / (1 << 20)
		res.Flight = append(res.Flight, RSSSample{At: now, MiB: flight})
		res.FlightMiB = max(res.FlightMiB, flight)
		res.Windows, res.Skipped = m["whyslow_windows_total"], m["whyslow_windows_skipped_total"]
		res.LostEvents = m["whyslow_lost_events_total"]
		if v, ok := m["whyslow_lost_events_distinct_total"]; ok {
			res.LostDistinct = &v
		}
		res.Losses = map[string]float64{}
		for name, v := range series {
			if strings.HasPrefix(name, "whyslow_lost_events_total{") {
				res.Losses[strings.TrimPrefix(name, "whyslow_lost_events_total")] = v
			}
		}
		// A long run says how it goes, for whoever watches its log (a
		// guest's console).
		if time.Since(lastLog) >= time.Minute {
			lastLog = time.Now()
			b.logf("serve: %.0f s: RSS %.0f MiB, flight recorder %.1f MiB, %.0f windows (%.0f skipped), %.0f events lost, %.1f s of CPU, peak RSS %.0f MiB",
				now, rss, flight, res.Windows, res.Skipped, res.LostEvents, m["process_cpu_seconds_total"],
				float64(statusKB(p.pid(), "VmHWM"))/(1<<20))
		}
		// A dump runs beside the sampling (one at a time: under TCG one
		// takes a minute or more, and the RSS while it is written is part
		// of what is measured).
		if time.Since(lastTrace) >= time.Minute && !dumping.Load() {
			lastTrace = time.Now()
			dumping.Store(true)
			dumps.Add(1)
			go func() {
				defer dumps.Done()
				defer dumping.Store(false)
				if err := drain(base + "/trace?seconds=60"); err != nil {
					b.logf("serve: /trace: %v", err)
				} else {
					traces.Add(1)
				}
			}()
		}
	}
	dumps.Wait() // bounded by traceClient's timeout
	res.Traces = int(traces.Load())
	// Each stop step is bounded and named on the log, so that a stop that
	// does not end says which step it is in; the results are kept whatever
	// fails (b.res.Serve is set before any error return).
	b.res.Serve = res
	step := func(name string) func() {
		at.Store(name)
		b.logf("serve: %s", name)
		t := time.Now()
		return func() { b.logf("serve: %s: done in %.1f s", name, time.Since(t).Seconds()) }
	}
	done := step("stopping the storm's load")
	ach, fioErr, ueventErr, stuckErr := load.stop(loadStopTimeout)
	done()
	res.Uevents, res.Execs, res.IOPS = ach.uevents, ach.execs, ach.iops
	hwm := statusKB(p.pid(), "VmHWM")
	done = step("stopping whyslow serve (SIGINT)")
	t1 := time.Now()
	err = p.stop(serveStopTimeout)
	res.StopSeconds = time.Since(t1).Seconds()
	done()
	res.PeakRSSMiB = float64(max(hwm, p.maxRSS())) / (1 << 20)
	res.CPUSeconds = p.cpuTime().Seconds()
	b.logf("serve: %.0f s of storm (%.0f uevents/s, %.0f execs/s, %.0f IOPS): RSS %.0f MiB at first, %.0f MiB at the end, peak %.0f MiB; flight recorder at most %.0f MiB; %.0f events lost; serve ended %.1f s after SIGINT",
		res.Seconds, res.Uevents, res.Execs, res.IOPS, first(res.RSSMiB), last(res.RSSMiB), res.PeakRSSMiB, res.FlightMiB, res.LostEvents, res.StopSeconds)
	var errs []error
	for _, e := range []error{stuckErr, err, fioErr, ueventErr} {
		if e != nil {
			res.Problems = append(res.Problems, e.Error())
			errs = append(errs, e)
		}
	}
	return errors.Join(errs...)
}

// serveStopTimeout bounds how long whyslow serve may take to end after
// SIGINT before it is killed (and the kill named).
const serveStopTimeout = 2 * time.Minute

// serveWatchdog prints, when the serve section is still running at after,
// the step it is in and every goroutine's stack: the bounds of each step
// should never let it come to that.
func (b *bench) serveWatchdog(after time.Duration, step *atomic.Value) *time.Timer {
	return time.AfterFunc(after, func() {
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		b.logf("serve: still running %v after its start, at step %q; goroutines:\n%s", after, step.Load(), buf[:n])
	})
}

func first(s []RSSSample) float64 {
	if len(s) == 0 {
		return 0
	}
	return s[0].MiB
}

func last(s []RSSSample) float64 {
	if len(s) == 0 {
		return 0
	}
	return s[len(s)-1].MiB
}

// The HTTP clients of the serve section: a request to a serve that does
// not answer fails after its timeout instead of holding the run.
var (
	metricsClient = &http.Client{Timeout: time.Minute}
	traceClient   = &http.Client{Timeout: 5 * time.Minute}
)

// scrape reads a Prometheus text exposition: the samples of each metric
// name summed over its labels, and each series (name and labels) alone.
func scrape(url string) (sums, series map[string]float64, err error) {
	resp, err := metricsClient.Get(url)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, nil, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return metrics.ParseText(resp.Body)
}

// drain fetches url and discards the body.
func drain(url string) error {
	resp, err := traceClient.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}
