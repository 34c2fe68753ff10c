// Package diskstat reads /sys/block/<disk>/stat, the kernel's own I/O
// counts of a disk (Documentation/block/stat.rst): what the service
// probe holds its completions against and the trouble watcher its busy
// disks by.
package diskstat

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Stat is what a disk's stat line says.
type Stat struct {
	// IOs are the I/Os completed: fields 1, 5, 12 and 16 (reads,
	// writes, discards, flushes: those the kernel has, 11 fields before
	// 4.18, 15 before 5.5).
	IOs uint64
	// InFlight are the requests in flight (field 9).
	InFlight uint64
	// IOTicks are the milliseconds the disk had I/O in flight (field 10).
	IOTicks uint64
}

// Parse parses one stat line; it fails, naming the field, on a line of
// fewer than 11 fields or a field that is not a number.
func Parse(line string) (Stat, error) {
	f := strings.Fields(line)
	if len(f) < 11 {
		return Stat{}, fmt.Errorf("disk stat %q: %d fields, want at least 11", line, len(f))
	}
	field := func(i int) (uint64, error) {
		n, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("disk stat %q: field %d: %w", line, i+1, err)
		}
		return n, nil
	}
	var s Stat
	for _, i := range []int{0, 4, 11, 15} {
		if i >= len(f) {
			break
		}
		n, err := field(i)
		if err != nil {
			return Stat{}, err
		}
		s.IOs += n
	}
	var err error
	if s.InFlight, err = field(8); err != nil {
		return Stat{}, err
	}
	if s.IOTicks, err = field(9); err != nil {
		return Stat{}, err
	}
	return s, nil
}

// Read reads and parses disk's stat under sysfs ("" is /sys).
func Read(sysfs, disk string) (Stat, error) {
	if sysfs == "" {
		sysfs = "/sys"
	}
	b, err := os.ReadFile(filepath.Join(sysfs, "block", disk, "stat"))
	if err != nil {
		return Stat{}, err
	}
	return Parse(string(b))
}
