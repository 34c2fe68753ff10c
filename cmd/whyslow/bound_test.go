package main

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/timeline"
)

// A small trace that expands to more events than a live run may hold is
// analyzed within the live run's memory bound: the excess is dropped and
// counted as lost ("timeline full"), as a live run counts it.
func TestAnalyzeEventBound(t *testing.T) {
	const n = 1_500_000 // more than 128 MiB of uevents, as estimated
	path := filepath.Join(t.TempDir(), "storm.trace.gz")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	zw, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	w := bufio.NewWriter(zw)
	fmt.Fprintln(w, `{"format":"whyslow.trace","version":2,"encoding":"json-lines","writer":"whyslow test"}`)
	fmt.Fprintln(w, `{"type":"run","version":"test","requested_duration":60000000000}`)
	fmt.Fprintln(w, `{"type":"timeline","start":1000000000,"end":1000000000,"kernel":"6.18.0","hostname":"lab"}`)
	fmt.Fprintln(w, `{"type":"probe","name":"uevent","mechanism":"netlink","status":"ok"}`)
	for i := range n {
		fmt.Fprintf(w, `{"type":"uevent","time":%d,"action":"change","devpath":"/devices/virtual/block/loop0","subsystem":"block","devname":"loop0","devtype":"disk","seqnum":%d}`+"\n", 1000000000+i*1000, i+1)
	}
	fmt.Fprintln(w, `{"type":"checkpoint","time":61000000000}`)
	fmt.Fprintf(w, `{"type":"end","records":%d}`+"\n", n+4)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	zw.Close()
	f.Close()
	fi, _ := os.Stat(path)

	cmd := exec.Command(whyslowBin, "analyze", path, "--format", "json")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("analyze: %v", err)
	}
	var rep report.Report
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatal(err)
	}
	var full uint64
	for _, l := range rep.Losses {
		if l.Probe == "uevent" && l.What == timeline.FullLoss {
			full = l.Count
		}
	}
	rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss // KiB
	t.Logf("a trace of %d KB with %d uevents: %d dropped past the bound, peak RSS %d MiB", fi.Size()/1024, n, full, rss/1024)
	if full == 0 || full >= n || rep.LostEvents != full {
		t.Errorf("%d uevents dropped past the bound (lost %d), want some but not all", full, rep.LostEvents)
	}
	if rss > 1<<20 {
		t.Errorf("peak RSS %d MiB, want under 1 GiB", rss/1024)
	}
}
