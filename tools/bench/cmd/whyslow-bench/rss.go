package main

import (
	"fmt"
	"path/filepath"
	"strconv"
	"time"
)

// RSSResult is whyslow's memory over a whole `whyslow diagnose storage`
// run of its default length at the I/O load of section 1: observing,
// then analyzing and writing the report.
type RSSResult struct {
	Seconds float64     `json:"seconds"` // --duration
	Fio     fioConfig   `json:"fio"`
	IOPS    float64     `json:"iops"`
	RSSMiB  []RSSSample `json:"rss_mib"`
	// ObservedPeakMiB is the peak resident set (VmHWM) as the observation
	// ends; PeakRSSMiB the peak over the whole run, the analysis and the
	// report included (the exited process's maxrss).
	ObservedPeakMiB float64 `json:"observed_peak_rss_mib"`
	PeakRSSMiB      float64 `json:"peak_rss_mib"`
	CPUSeconds      float64 `json:"cpu_seconds"`
	// AnalysisSeconds is the end of the observation to the exit.
	AnalysisSeconds float64 `json:"analysis_seconds"`
	LostEvents      uint64  `json:"lost_events"`
	// Losses are the report's, by probe and cause.
	Losses []LossLine `json:"losses,omitempty"`
}

// rssTarget is the bound on the peak RSS of a 60 s run at full
// load, in MiB.
const rssTarget = 100

// rss runs `whyslow diagnose storage --duration -rss-time` to its end
// under fio (section 1's configuration when the io section ran, else -fio,
// else libaio,32,2) and samples its resident set every half second.
func (b *bench) rss() error {
	if b.fio.Engine == "" {
		b.fio = fioConfig{Engine: "libaio", Depth: 32, Jobs: 2}
		if b.o.fio != "" {
			var err error
			if b.fio, err = parseFio(b.o.fio); err != nil {
				return err
			}
		}
	}
	d := b.o.rssTime
	tag := "rss"
	ready := filepath.Join(b.dir, tag+".ready")
	ws, err := startWhyslowProc("whyslow", readiness{file: ready}, b.o.whyslow, "diagnose", "storage", "--duration", d.String(),
		"--format", "json", "--output", filepath.Join(b.dir, tag+".json"), "--ready-file", ready)
	if err != nil {
		return err
	}
	if err := ws.waitReady(readyTimeout); err != nil {
		_ = ws.stop(time.Minute)
		return err
	}
	t0 := time.Now()
	res := &RSSResult{Seconds: d.Seconds(), Fio: b.fio}
	res.Fio.Runtime = (d - time.Second).String()
	type fioDone struct {
		fr  fioRun
		err error
	}
	done := make(chan fioDone, 1)
	go func() {
		// fio ramps up for 1 s before its runtime: it loads the device for
		// the whole observation.
		fr, err := b.runFio(b.fio, d-time.Second)
		done <- fioDone{fr, err}
	}()
	sample := time.NewTicker(500 * time.Millisecond)
	defer sample.Stop()
	var fd *fioDone
	var exitAt time.Time
	for exitAt.IsZero() {
		select {
		case <-ws.exited:
			exitAt = time.Now()
		case f := <-done:
			fd = &f
		case <-sample.C:
			if kb := statusKB(ws.pid(), "VmRSS"); kb > 0 {
				res.RSSMiB = append(res.RSSMiB, RSSSample{At: time.Since(t0).Seconds(), MiB: float64(kb) / (1 << 20)})
			}
			// The observation ends d after ready: the last VmHWM before
			// is the peak of the observation.
			if time.Since(t0) < d {
				if hwm := statusKB(ws.pid(), "VmHWM"); hwm > 0 {
					res.ObservedPeakMiB = float64(hwm) / (1 << 20)
				}
			}
		case <-time.After(d + 5*time.Minute - time.Since(t0)):
			_ = ws.stop(time.Minute)
			return fmt.Errorf("whyslow did not end within 5m of its --duration %s", d)
		}
	}
	if fd == nil {
		f := <-done
		fd = &f
	}
	if err := ws.exitErr(); err != nil {
		return err
	}
	if fd.err != nil {
		return fd.err
	}
	res.AnalysisSeconds = max(0, exitAt.Sub(t0).Seconds()-d.Seconds())
	res.IOPS = fd.fr.IOPS
	res.PeakRSSMiB = float64(ws.maxRSS()) / (1 << 20)
	res.CPUSeconds = ws.cpuTime().Seconds()
	rep, err := readReport(filepath.Join(b.dir, tag+".json"))
	if err != nil {
		return err
	}
	res.LostEvents = rep.LostEvents
	res.Losses = addLosses(nil, rep)
	b.logf("rss: %s for %s at %.0f IOPS: peak RSS %.0f MiB (%.0f MiB while observing), %s s of CPU, %d events lost (%s)",
		b.fio, d, res.IOPS, res.PeakRSSMiB, res.ObservedPeakMiB, strconv.FormatFloat(res.CPUSeconds, 'f', 1, 64), res.LostEvents, lossesText(res.Losses))
	b.res.RSS = res
	return nil
}
