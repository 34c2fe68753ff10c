package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// ServeResult is `whyslow serve` under the storm's load for a long time:
// its resident set over the run, which must level off (the flight
// recorder's memory bound) rather than grow.
type ServeResult struct {
	Seconds         float64     `json:"seconds"`
	Window          string      `json:"window"`
	FlightMemoryMiB float64     `json:"flight_memory_mib"`
	Uevents         float64     `json:"uevents_per_s"`
	Execs           float64     `json:"execs_per_s"`
	IOPS            float64     `json:"iops"`
	RSSMiB          []RSSSample `json:"rss_mib"`
	PeakRSSMiB      float64     `json:"peak_rss_mib"`
	// FlightMiB is the most the flight recorder said it held
	// (whyslow_flight_recorder_bytes).
	FlightMiB  float64 `json:"flight_recorder_mib"`
	Windows    float64 `json:"windows"`
	Skipped    float64 `json:"windows_skipped"`
	LostEvents float64 `json:"lost_events"`
	Traces     int     `json:"traces_dumped"`
	CPUSeconds float64 `json:"cpu_seconds"`
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
	p, err := startProc("whyslow serve", readiness{line: servingLine}, b.o.whyslow, "serve", "--listen", addr,
		"--window", "10s", "--flight-recorder-memory", fmt.Sprintf("%dMiB", serveFlightMemory))
	if err != nil {
		return err
	}
	if err := p.waitReady(readyTimeout); err != nil {
		stopAll([]*proc{p})
		return err
	}
	d := b.o.serveTime
	res := &ServeResult{Seconds: d.Seconds(), Window: "10s", FlightMemoryMiB: serveFlightMemory}
	load, err := b.startStormLoad(d)
	if err != nil {
		stopAll([]*proc{p})
		return err
	}
	base := "http://" + addr
	t0 := time.Now()
	lastTrace := t0
	for time.Since(t0) < d+time.Second {
		time.Sleep(10 * time.Second)
		res.RSSMiB = append(res.RSSMiB, RSSSample{At: time.Since(t0).Seconds(), MiB: float64(statusKB(p.pid(), "VmRSS")) / (1 << 20)})
		m, err := scrape(base + "/metrics")
		if err != nil {
			b.logf("serve: /metrics: %v", err)
			continue
		}
		res.FlightMiB = max(res.FlightMiB, m["whyslow_flight_recorder_bytes"]/(1<<20))
		res.Windows, res.Skipped = m["whyslow_windows_total"], m["whyslow_windows_skipped_total"]
		res.LostEvents = m["whyslow_lost_events_total"]
		if time.Since(lastTrace) >= time.Minute {
			lastTrace = time.Now()
			if err := drain(base + "/trace?seconds=60"); err != nil {
				b.logf("serve: /trace: %v", err)
			} else {
				res.Traces++
			}
		}
	}
	ach, fioErr, ueventErr := load.stop()
	res.Uevents, res.Execs, res.IOPS = ach.uevents, ach.execs, ach.iops
	hwm := statusKB(p.pid(), "VmHWM")
	err = p.stop(2 * time.Minute)
	res.PeakRSSMiB = float64(max(hwm, p.maxRSS())) / (1 << 20)
	res.CPUSeconds = p.cpuTime().Seconds()
	for _, e := range []error{err, fioErr, ueventErr} {
		if e != nil {
			return e
		}
	}
	b.logf("serve: %.0f s of storm: RSS %.0f MiB at first, %.0f MiB at the end, peak %.0f MiB; flight recorder at most %.0f MiB",
		res.Seconds, first(res.RSSMiB), last(res.RSSMiB), res.PeakRSSMiB, res.FlightMiB)
	b.res.Serve = res
	return nil
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

// scrape reads a Prometheus text exposition and sums the samples of each
// metric name (over its labels).
func scrape(url string) (map[string]float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		name := line[:i]
		if j := strings.IndexByte(name, '{'); j >= 0 {
			name = name[:j]
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[name] += v
		}
	}
	return out, sc.Err()
}

// drain fetches url and discards the body.
func drain(url string) error {
	resp, err := http.Get(url)
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
