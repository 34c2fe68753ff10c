package main

import (
	"sync/atomic"
	"testing"
	"time"
)

// A uevent writer that cannot keep its rate still stops when told to: the
// writers of make bench-vm-serve, far behind their rate on one TCG vCPU,
// once caught up in ever longer batches and checked their stop only
// between them, so the guest did not end after its hour. /dev/null stands
// for the uevent file, at a rate no machine writes.
func TestUeventStormStopsBehindRate(t *testing.T) {
	var n atomic.Int64
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- ueventStorm("/dev/null", 1e12, stop, &n) }()
	time.Sleep(300 * time.Millisecond)
	close(stop)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the writer did not stop within 30 s of its stop (%d writes)", n.Load())
	}
	if n.Load() == 0 {
		t.Fatal("the writer wrote nothing")
	}
}
