package event

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Now reads CLOCK_MONOTONIC, the clock of every event (bpf_ktime_get_ns).
// It has no fallback: a time from another clock would not compare with
// the events', so a failure is an error for the caller to report.
func Now() (Mono, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("reading CLOCK_MONOTONIC: %w", err)
	}
	return Mono(ts.Nano()), nil
}
