// Package blockqueue reads and sets the request-queue attributes of a
// block device in sysfs that the queue-freeze story turns on: its I/O
// scheduler and nr_requests. The scenario helpers of the tests and
// `whyslow selftest` both use it.
package blockqueue

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/whyslow/whyslow/internal/sysattr"
)

// Queue is the state of a block device's request-queue attributes.
type Queue struct {
	Scheduler  string   // the active scheduler, e.g. "mq-deadline" or "none"
	Offered    []string // every scheduler queue/scheduler lists
	NrRequests int
}

// Offers reports whether sched is one of the offered schedulers.
func (q Queue) Offers(sched string) bool { return slices.Contains(q.Offered, sched) }

// Read reads /sys/block/<dev>/queue/{scheduler,nr_requests}.
func Read(dev string) (Queue, error) {
	var q Queue
	b, err := os.ReadFile(attr(dev, "scheduler"))
	if err != nil {
		return q, err
	}
	for _, f := range strings.Fields(string(b)) {
		if strings.HasPrefix(f, "[") && strings.HasSuffix(f, "]") {
			f = strings.Trim(f, "[]")
			q.Scheduler = f
		}
		q.Offered = append(q.Offered, f)
	}
	b, err = os.ReadFile(attr(dev, "nr_requests"))
	if err != nil {
		return q, err
	}
	if q.NrRequests, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
		return q, fmt.Errorf("parsing nr_requests of %s: %w", dev, err)
	}
	return q, nil
}

// Set writes the scheduler and then nr_requests of dev (switching the
// scheduler resets nr_requests, so the order matters).
func Set(dev, sched string, nrRequests int) error {
	if err := sysattr.Write(attr(dev, "scheduler"), sched); err != nil {
		return err
	}
	return sysattr.Write(attr(dev, "nr_requests"), strconv.Itoa(nrRequests))
}

func attr(dev, name string) string {
	return filepath.Join("/sys/block", dev, "queue", name)
}
