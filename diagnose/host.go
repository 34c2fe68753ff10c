package diagnose

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
)

// KernelRelease returns the running kernel's release, e.g. "6.18.44".
func KernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// ReadHolders lists the block device stacking from <sysfs>/block/*/slaves.
func ReadHolders(sysfs string) ([]event.Holder, error) {
	uppers, err := os.ReadDir(filepath.Join(sysfs, "block"))
	if err != nil {
		return nil, fmt.Errorf("reading block devices: %w", err)
	}
	var out []event.Holder
	for _, u := range uppers {
		lowers, err := os.ReadDir(filepath.Join(sysfs, "block", u.Name(), "slaves"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading slaves of %s: %w", u.Name(), err)
		}
		for _, l := range lowers {
			out = append(out, event.Holder{Upper: u.Name(), Lower: wholeDisk(sysfs, l.Name())})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Upper != out[j].Upper {
			return out[i].Upper < out[j].Upper
		}
		return out[i].Lower < out[j].Lower
	})
	return out, nil
}

// wholeDisk maps a partition name (sda1) to its disk (sda) through
// <sysfs>/class/block/<name>/partition; other names are returned unchanged.
func wholeDisk(sysfs, name string) string {
	if _, err := os.Stat(filepath.Join(sysfs, "class", "block", name, "partition")); err != nil {
		return name
	}
	target, err := filepath.EvalSymlinks(filepath.Join(sysfs, "class", "block", name))
	if err != nil {
		return name
	}
	return filepath.Base(filepath.Dir(target))
}
