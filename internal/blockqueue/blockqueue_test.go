package blockqueue

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRead reads the queue of every block device of this machine that has
// a scheduler file: the active scheduler is one it offers, as the file
// brackets it, and nr_requests is positive.
func TestRead(t *testing.T) {
	files, _ := filepath.Glob("/sys/block/*/queue/scheduler")
	if len(files) == 0 {
		t.Skip("no block device with a queue/scheduler file in /sys/block")
	}
	for _, f := range files {
		dev := filepath.Base(filepath.Dir(filepath.Dir(f)))
		t.Run(dev, func(t *testing.T) {
			q, err := Read(dev)
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := os.ReadFile(f)
			if !q.Offers(q.Scheduler) || !strings.Contains(string(raw), "["+q.Scheduler+"]") {
				t.Errorf("%s: scheduler %q, offered %q; the file says %q", dev, q.Scheduler, q.Offered, strings.TrimSpace(string(raw)))
			}
			if q.NrRequests <= 0 {
				t.Errorf("%s: nr_requests %d", dev, q.NrRequests)
			}
		})
	}
}

func TestReadErrors(t *testing.T) {
	for _, dev := range []string{"whyslow-no-such-device", ""} {
		if q, err := Read(dev); err == nil {
			t.Errorf("Read(%q) = %+v, want an error", dev, q)
		}
	}
	if err := Set("whyslow-no-such-device", "none", 32); err == nil || !strings.Contains(err.Error(), "whyslow-no-such-device") {
		t.Errorf("Set on a missing device: %v, want an error naming it", err)
	}
}
