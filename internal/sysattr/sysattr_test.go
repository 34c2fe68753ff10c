package sysattr

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "attr")
	if err := os.WriteFile(file, []byte("old value that is longer\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(file, "mq-deadline"); err != nil {
		t.Fatal(err)
	}
	// a regular file keeps what the write did not cover: the kernel's
	// attributes take the one write whole
	if b, _ := os.ReadFile(file); !strings.HasPrefix(string(b), "mq-deadline\n") {
		t.Errorf("file holds %q, want it to start with %q", b, "mq-deadline\n")
	}
	if err := Write(filepath.Join(dir, "missing"), "1"); !os.IsNotExist(err) {
		t.Errorf("writing a missing attribute: %v, want not-exist (attributes are never created)", err)
	}
	// a real attribute that refuses the value: the error names both
	if os.Geteuid() == 0 {
		p := "/proc/sys/vm/dirty_ratio"
		if _, err := os.Stat(p); err == nil {
			if err := Write(p, "not-a-number"); err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "not-a-number") {
				t.Errorf("writing a bad value to %s: %v, want an error naming both", p, err)
			}
		}
	}
}
