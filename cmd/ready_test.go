package cmd

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
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

func TestReadyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ready")
	if err := os.WriteFile(path, []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := newReadyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the stale ready file is still there before the run is ready: %v", err)
	}
	var warn bytes.Buffer
	r.signal(&warn)
	r.cleanup()
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

func TestReadyFileNeverReady(t *testing.T) {
	dir := t.TempDir()
	r, err := newReadyFile(filepath.Join(dir, "ready"))
	if err != nil {
		t.Fatal(err)
	}
	r.cleanup()
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("a run that never got ready left %v", entries)
	}
}

func TestReadyFileBadPath(t *testing.T) {
	_, err := newReadyFile(filepath.Join(t.TempDir(), "missing", "ready"))
	if err == nil || !strings.HasPrefix(err.Error(), "--ready-file: ") {
		t.Errorf("err = %v, want a --ready-file error before the run", err)
	}
	r, err := newReadyFile("")
	if err != nil {
		t.Fatal(err)
	}
	var warn bytes.Buffer
	r.signal(&warn)
	r.cleanup()
	if warn.Len() > 0 {
		t.Error(warn.String())
	}
}
