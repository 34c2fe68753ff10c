package output

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// dirEntries lists the names in dir, to see that no temporary file is left.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o640); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var errBoom = errors.New("boom")

// writeOne checks and writes one output with content, failing after it
// when fail is set.
func writeOne(path, content string, fail bool) error {
	var s Set
	f := s.Add("--output", path)
	if err := s.Check(); err != nil {
		return err
	}
	return f.WriteFile(func(w io.Writer) error {
		if _, err := io.WriteString(w, content); err != nil {
			return err
		}
		if fail {
			return errBoom
		}
		return nil
	})
}

// A regular file is replaced whole or not at all; its mode stays; no
// temporary file is left either way.
func TestRegularFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "r.txt")
	if err := writeOne(path, "new", false); err != nil {
		t.Fatal(err)
	}
	if got := read(t, path); got != "new" {
		t.Errorf("new file holds %q", got)
	}
	write(t, path, "old")
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := writeOne(path, "half", true); !errors.Is(err, errBoom) || !strings.HasPrefix(err.Error(), "--output "+path+": ") {
		t.Errorf("err = %v, want boom naming the output", err)
	}
	if got := read(t, path); got != "old" {
		t.Errorf("after a failed write the file holds %q, want the old content", got)
	}
	if err := writeOne(path, "replaced", false); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if got := read(t, path); got != "replaced" || fi.Mode().Perm() != 0o600 {
		t.Errorf("replaced file holds %q with mode %v, want mode 0600 kept", got, fi.Mode().Perm())
	}
	if names := dirEntries(t, dir); len(names) != 1 {
		t.Errorf("files in the directory: %v", names)
	}
}

// A link to a regular file: the file it points to is replaced, the link
// stays a link; a link to nothing yet creates its target.
func TestSymlinkToRegular(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "real.txt")
	link := filepath.Join(dir, "link.txt")
	write(t, target, "old")
	if err := os.Symlink("real.txt", link); err != nil {
		t.Fatal(err)
	}
	if err := writeOne(link, "half", true); !errors.Is(err, errBoom) {
		t.Fatalf("err = %v", err)
	}
	if got := read(t, target); got != "old" {
		t.Errorf("target holds %q after a failed write", got)
	}
	if err := writeOne(link, "new", false); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the link was replaced: %v %v", fi, err)
	}
	if got := read(t, target); got != "new" {
		t.Errorf("target holds %q", got)
	}

	dangling := filepath.Join(dir, "dangling")
	if err := os.Symlink("sub/../later.txt", dangling); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writeOne(dangling, "created", false); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(dir, "later.txt")); got != "created" {
		t.Errorf("the link's target holds %q", got)
	}
	if fi, err := os.Lstat(dangling); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the dangling link was replaced: %v %v", fi, err)
	}
}

// Files that are not regular are written as they are and never removed,
// not even after a failed write, nor the links to them.
func TestNotRegularWrittenInPlace(t *testing.T) {
	dir := t.TempDir()
	full := filepath.Join(dir, "full")
	if os.Geteuid() == 0 {
		// A device node of our own, like /dev/full: writes fail (ENOSPC).
		if err := unix.Mknod(full, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 7))); err != nil {
			t.Fatal(err)
		}
	} else if err := os.Symlink("/dev/full", full); err != nil {
		t.Fatal(err)
	}
	linkToFull := filepath.Join(dir, "link-to-full")
	if err := os.Symlink(full, linkToFull); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	before := map[string]os.FileInfo{}
	for _, p := range []string{full, linkToFull, fifo} {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		before[p] = fi
	}
	for _, p := range []string{full, linkToFull} {
		err := writeOne(p, strings.Repeat("x", 1<<16), false)
		if !errors.Is(err, syscall.ENOSPC) || strings.Contains(err.Error(), ".tmp") {
			t.Errorf("%s: err = %v, want ENOSPC naming the output, not a temporary file", p, err)
		}
	}
	// A pipe: what is written arrives at its reader.
	rd, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if err := writeOne(fifo, "through", false); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	if n, _ := rd.Read(buf); string(buf[:n]) != "through" {
		t.Errorf("read %q from the pipe", buf[:n])
	}
	for p, fi := range before {
		now, err := os.Lstat(p)
		if err != nil || !os.SameFile(fi, now) || now.Mode() != fi.Mode() {
			t.Errorf("%s was replaced or removed: %v", p, err)
		}
	}
	if names := dirEntries(t, dir); len(names) != 3 {
		t.Errorf("files in the directory: %v", names)
	}
}

// Two outputs that are the same file, by any name, are refused before
// anything is written; so is an output that is an input.
func TestConflicts(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	write(t, "r.txt", "report")
	write(t, "v.gz", "trace")
	if err := os.Symlink("r.txt", "link.txt"); err != nil {
		t.Fatal(err)
	}
	if err := os.Link("v.gz", "hard.gz"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir("sub", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(".", "here"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir("rules", 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, "rules/a.yaml", "id: a")
	tests := []struct {
		name    string
		outputs [][2]string
		inputs  [][2]string
		want    string // "" for no conflict
	}{
		{"./ form", [][2]string{{"-o", "r.txt"}, {"--folded", "./r.txt"}}, nil, "-o r.txt and --folded ./r.txt are the same file"},
		{"same string", [][2]string{{"-o", "x.txt"}, {"--folded", "x.txt"}}, nil, "-o and --folded name the same file x.txt"},
		{"through a link", [][2]string{{"-o", "link.txt"}, {"--stacks-out", "r.txt"}}, nil, "are the same file"},
		{"not there yet, through a directory link", [][2]string{{"-o", "new.txt"}, {"--folded", "here/sub/../new.txt"}}, nil, "are the same file"},
		{"absolute", [][2]string{{"-o", "r.txt"}, {"--folded", filepath.Join(dir, "r.txt")}}, nil, "are the same file"},
		{"input", [][2]string{{"-o", "v.gz"}}, [][2]string{{"the trace", "v.gz"}}, "-o v.gz is the trace v.gz: writing it would destroy it"},
		{"input through a hard link", [][2]string{{"-o", "hard.gz"}}, [][2]string{{"the trace", "./v.gz"}}, "is the trace"},
		{"a rule file in a directory", [][2]string{{"-o", "rules/a.yaml"}}, [][2]string{{"--rules", "rules"}}, "-o rules/a.yaml is a file of the --rules directory rules: writing it would destroy it"},
		{"a rule file", [][2]string{{"-o", "./rules/a.yaml"}}, [][2]string{{"--rules", "rules/a.yaml"}}, "-o ./rules/a.yaml is the --rules file rules/a.yaml"},
		{"different files", [][2]string{{"-o", "r.txt"}, {"--folded", "other.txt"}}, [][2]string{{"the trace", "v.gz"}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s Set
			for _, o := range tt.outputs {
				s.Add(o[0], o[1])
			}
			for _, in := range tt.inputs {
				s.Input(in[0], in[1])
			}
			err := s.Check()
			var ce *ConflictError
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Check = %v, want none", err)
			case tt.want != "" && (!errors.As(err, &ce) || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Check = %v, want a conflict %q", err, tt.want)
			}
		})
	}
	if got := read(t, "r.txt") + read(t, "v.gz"); got != "reporttrace" {
		t.Errorf("files changed by Check: %q", got)
	}
	if names := dirEntries(t, dir); len(names) != 7 {
		t.Errorf("files in the directory: %v", names)
	}
}

// The standard output a report goes to conflicts with an output naming
// the same file (/dev/stdout).
func TestStreamConflict(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var s Set
	s.AddStream("standard output", f)
	s.Add("--folded", path)
	if err := s.Check(); err == nil || !strings.Contains(err.Error(), "--folded and standard output name the same file") {
		t.Errorf("Check = %v", err)
	}
}

func TestUnwritable(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct{ path, want string }{
		{dir, "is a directory"},
		{filepath.Join(dir, "missing", "r.txt"), "no such file or directory"},
	} {
		var s Set
		s.Add("--output", tt.path)
		if err := s.Check(); err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "--output ") {
			t.Errorf("%s: Check = %v, want %q", tt.path, err, tt.want)
		}
	}
	loop := filepath.Join(dir, "loop")
	if err := os.Symlink("loop", loop); err != nil {
		t.Fatal(err)
	}
	var s Set
	s.Add("--output", loop)
	if err := s.Check(); err == nil {
		t.Errorf("a link to itself: Check passed")
	}
}

// Abort removes the temporary files of the outputs in progress, and only
// them; Publish puts a file in place while it is written, and then Abort
// leaves it.
func TestAbortAndPublish(t *testing.T) {
	dir := t.TempDir()
	var s Set
	report := s.Add("--output", filepath.Join(dir, "r.txt"))
	trace := s.Add("--record", filepath.Join(dir, "t.gz"))
	write(t, filepath.Join(dir, "r.txt"), "old")
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
	tw, err := trace.Create()
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.Publish(); err != nil {
		t.Fatal(err)
	}
	io.WriteString(tw, "streamed")
	rw, err := report.Create()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(rw, "half")
	s.Abort()
	if names := dirEntries(t, dir); len(names) != 2 {
		t.Errorf("after Abort: %v, want r.txt and t.gz", names)
	}
	if got := read(t, filepath.Join(dir, "r.txt")); got != "old" {
		t.Errorf("the report holds %q", got)
	}
	if got := read(t, filepath.Join(dir, "t.gz")); got != "streamed" {
		t.Errorf("the published trace holds %q", got)
	}
	if _, err := report.Create(); err == nil {
		t.Errorf("Create after Abort succeeded")
	}
}
