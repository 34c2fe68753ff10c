package cmd

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/whyslow/whyslow/internal/output"
)

func TestReadyFileFlag(t *testing.T) {
	ios, _, _ := testIO()
	var got *StorageOptions
	c := NewCmdStorage(ios, func(o *StorageOptions) error { got = o; return nil })
	c.SetArgs([]string{"--ready-file", "/run/whyslow.ready"})
	if err := c.Execute(); err != nil {
		t.Fatal(err)
	}
	if got.ReadyFile != "/run/whyslow.ready" {
		t.Errorf("ReadyFile = %q", got.ReadyFile)
	}
}

// readyOutput is the checked --ready-file output at path.
func readyOutput(t *testing.T, path string) (*output.File, error) {
	t.Helper()
	var s output.Set
	f := s.Add("--ready-file", path)
	f.NoWait = true
	return f, s.Check()
}

func TestReadyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ready")
	if err := os.WriteFile(path, []byte("4242\n"), 0o644); err != nil { // an earlier run's
		t.Fatal(err)
	}
	f, err := readyOutput(t, path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := newReadyFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the stale ready file is still there before the run is ready: %v", err)
	}
	var warn bytes.Buffer
	r.signal(&warn)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) || warn.Len() > 0 {
		t.Errorf("ready file holds %q (want the pid), warnings %q", b, warn.String())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("files left in the directory: %v", entries)
	}
}

// A file at the ready path that no run wrote is refused, untouched.
func TestReadyFileRefusesOtherFiles(t *testing.T) {
	dir := t.TempDir()
	for _, content := range []string{"precious\n", "", "12345678901234567890\n"} {
		path := filepath.Join(dir, "notes")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := readyOutput(t, path)
		if err != nil {
			t.Fatal(err)
		}
		_, err = newReadyFile(f)
		var ue usageError
		if err == nil || !strings.Contains(err.Error(), "not a ready file") || !asUsage(err, &ue) {
			t.Errorf("%q: err = %v, want a usage error saying it is not a ready file", content, err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != content {
			t.Errorf("%q: the file was touched: %q, %v", content, b, err)
		}
	}
}

func asUsage(err error, ue *usageError) bool {
	u, ok := err.(usageError)
	if ok {
		*ue = u
	}
	return ok
}

// A pipe is written as it is: the pid arrives on it, the pipe stays.
func TestReadyFileFIFO(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ready.fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	rd, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	f, err := readyOutput(t, path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := newReadyFile(f)
	if err != nil {
		t.Fatal(err)
	}
	var warn bytes.Buffer
	r.signal(&warn)
	buf := make([]byte, 64)
	n, _ := rd.Read(buf)
	if got := strings.TrimSpace(string(buf[:n])); got != strconv.Itoa(os.Getpid()) || warn.Len() > 0 {
		t.Errorf("read %q from the pipe (want the pid), warnings %q", got, warn.String())
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("the pipe is gone or replaced: %v %v", fi, err)
	}
}

func TestReadyFileBadPath(t *testing.T) {
	if _, err := readyOutput(t, filepath.Join(t.TempDir(), "missing", "ready")); err == nil || !strings.HasPrefix(err.Error(), "--ready-file ") {
		t.Errorf("err = %v, want a --ready-file error before the run", err)
	}
	r, err := newReadyFile(nil)
	if err != nil {
		t.Fatal(err)
	}
	var warn bytes.Buffer
	r.signal(&warn)
	if warn.Len() > 0 {
		t.Error(warn.String())
	}
}
