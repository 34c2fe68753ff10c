// Package sysattr writes the kernel's attribute files (sysfs, procfs,
// cgroupfs) as `echo value > path` does: one write of the value and a
// newline, whose error is the kernel's answer.
package sysattr

import (
	"fmt"
	"os"
)

// Write writes value and a newline to the attribute file path, which must
// exist. The error names the value and the file.
func Write(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(value + "\n"); err != nil {
		f.Close()
		return fmt.Errorf("writing %q to %s: %w", value, path, err)
	}
	return f.Close()
}
