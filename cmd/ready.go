package cmd

import (
	"fmt"
	"io"
	"os"
	"regexp"

	"github.com/whyslow/whyslow/internal/output"
)

// readyFile is --ready-file: a file that appears, atomically, once every
// probe is attached, so that a script can start its load only then.
type readyFile struct {
	file *output.File
	done bool
}

// oldReady is what a ready file holds: a pid.
var oldReady = regexp.MustCompile(`^[0-9]{1,10}\n?$`)

// newReadyFile prepares --ready-file, once the outputs are checked: a ready
// file an earlier run left at the path (a regular file holding a pid) is
// removed, so that a stale one never reads as ready; a file holding
// anything else is refused, untouched (the run removes nothing it did not
// create). A path that is not a regular file (a pipe) is left as it is and
// gets the pid when the run is ready. A nil file gives a readyFile that
// does nothing.
func newReadyFile(f *output.File) (*readyFile, error) {
	r := &readyFile{file: f}
	if f == nil || f.AsIs() || !f.Exists() {
		return r, nil
	}
	b, err := readSmall(f.Target(), 16)
	if err != nil {
		return nil, fmt.Errorf("--ready-file %s: %w", f.Path, err)
	}
	if !oldReady.Match(b) {
		return nil, usagef("--ready-file %s: the file exists and is not a ready file of an earlier run (it holds something else than a pid): not touching it", f.Path)
	}
	if err := os.Remove(f.Target()); err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("--ready-file %s: removing the old ready file: %w", f.Path, err)
	}
	return r, nil
}

// readSmall reads at most n bytes of a file, and one more to tell a
// longer one.
func readSmall(path string, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n+1)
	m, err := io.ReadFull(f, b)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, err
	}
	return b[:m], nil
}

// signal makes the file appear, holding whyslow's pid; a failure is a
// warning on w, not the end of the run.
func (r *readyFile) signal(w io.Writer) {
	if r.file == nil || r.done {
		return
	}
	r.done = true
	err := r.file.WriteFile(func(out io.Writer) error {
		_, err := fmt.Fprintf(out, "%d\n", os.Getpid())
		return err
	})
	if err != nil {
		fmt.Fprintf(w, "whyslow: warning: %v\n", err)
	}
}
