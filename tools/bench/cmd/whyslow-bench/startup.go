package main

import (
	"fmt"
	"path/filepath"
	"time"
)

// StartupResult is launch-to-attached time and peak RSS per tool.
type StartupResult struct {
	Rounds int           `json:"rounds"`
	Tools  []StartupTool `json:"tools"`
}

// StartupTool is one tool over the rounds.
type StartupTool struct {
	Name    string `json:"name"`
	How     string `json:"how"` // how readiness is seen
	ReadyMs spread `json:"ready_ms"`
	RSSMiB  spread `json:"peak_rss_mib"`
}

func (b *bench) startup() error {
	type launcher struct {
		name, how string
		start     func(tag string) (*proc, error)
	}
	ls := []launcher{
		{"whyslow diagnose storage", "--ready-file appears (every probe attached)", func(tag string) (*proc, error) {
			ready := filepath.Join(b.dir, tag+".ready")
			return startWhyslowProc("whyslow", readiness{file: ready}, b.o.whyslow, "diagnose", "storage", "--duration", "2h",
				"--format", "json", "--output", filepath.Join(b.dir, tag+".json"), "--ready-file", ready)
		}},
		{"biolatency (libbpf-tools)", `prints "Tracing block device I/O"`, func(string) (*proc, error) {
			return startProc("biolatency", readiness{line: biolatencyReady}, "stdbuf", "-oL", "biolatency")
		}},
		{"bpftrace tools/bench/biosched.bt", "BEGIN prints ready (after every probe is attached)", func(string) (*proc, error) {
			return startProc("bpftrace", readiness{line: bpftraceReady}, "stdbuf", "-oL", "bpftrace", b.o.script)
		}},
	}
	ready := make([][]float64, len(ls))
	rss := make([][]float64, len(ls))
	for r := 0; r < b.o.startRuns; r++ {
		for k := range ls {
			i := (r + k) % len(ls)
			p, err := ls[i].start(fmt.Sprintf("startup-%d-%d", i, r))
			if err != nil {
				return err
			}
			err = p.waitReady(readyTimeout)
			if serr := p.stop(time.Minute); err == nil {
				err = serr
			}
			if err != nil {
				return err
			}
			ready[i] = append(ready[i], float64(p.readyTime().Microseconds())/1000)
			rss[i] = append(rss[i], float64(p.maxRSS())/(1<<20))
			time.Sleep(200 * time.Millisecond)
		}
		b.logf("round %d/%d: whyslow %.0f ms, biolatency %.0f ms, bpftrace %.0f ms", r+1, b.o.startRuns, ready[0][r], ready[1][r], ready[2][r])
	}
	res := &StartupResult{Rounds: b.o.startRuns}
	for i, l := range ls {
		res.Tools = append(res.Tools, StartupTool{Name: l.name, How: l.how, ReadyMs: spreadOf(ready[i]), RSSMiB: spreadOf(rss[i])})
	}
	b.res.Startup = res
	return nil
}
