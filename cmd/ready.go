package cmd

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// readyFile is --ready-file: a file that appears, atomically, once every
// probe is attached, so that a script can start its load only then.
type readyFile struct {
	path, tmp string
	done      bool
}

// newReadyFile removes an old file at path (so that a stale one never
// reads as ready) and creates the temporary file that signal renames to
// path, so that an unusable path fails before the run. An empty path
// gives a readyFile that does nothing.
func newReadyFile(path string) (*readyFile, error) {
	r := &readyFile{path: path}
	if path == "" {
		return r, nil
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("--ready-file: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return nil, fmt.Errorf("--ready-file: %w", err)
	}
	fmt.Fprintf(f, "%d\n", os.Getpid())
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return nil, fmt.Errorf("--ready-file: %w", err)
	}
	r.tmp = f.Name()
	return r, nil
}

// signal makes the file appear; a failure is a warning on w, not the end of
// the run.
func (r *readyFile) signal(w io.Writer) {
	if r.tmp == "" || r.done {
		return
	}
	r.done = true
	if err := os.Rename(r.tmp, r.path); err != nil {
		fmt.Fprintf(w, "whyslow: warning: --ready-file: %v\n", err)
		os.Remove(r.tmp)
	}
}

// cleanup removes the temporary file when the run never got ready.
func (r *readyFile) cleanup() {
	if r.tmp != "" && !r.done {
		os.Remove(r.tmp)
	}
}
