package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/scenario"
)

// --ready-file appears once the probes are attached, while the run goes on;
// Ctrl-C then ends the run with its report.
func TestReadyFile(t *testing.T) {
	scenario.RequireRoot(t)
	ready := filepath.Join(t.TempDir(), "ready")
	cmd := exec.Command(whyslowBin, "diagnose", "storage", "--duration", "2m", "--format", "json", "--ready-file", ready)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ready file after 30s; stderr: %s", errb.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("whyslow: %v; stderr: %s", err, errb.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("whyslow did not end after SIGINT")
	}
	var rep report.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, out.String())
	}
	ok := 0
	for _, p := range rep.Probes {
		if p.Status == "ok" {
			ok++
		}
	}
	if ok == 0 || rep.DurationSeconds <= 0 || rep.DurationSeconds > 60 {
		t.Errorf("report after the ready file: %d probes ok, observed %.3fs", ok, rep.DurationSeconds)
	}
}
