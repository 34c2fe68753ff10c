// Package output writes the files a command was asked to write (a report,
// a trace, stack files, a ready file) without ever destroying what the run
// did not create:
//
//   - A regular file (or a path where none exists yet) is written to a
//     temporary file in its directory and renamed into place once it is
//     complete: a failed or interrupted write leaves whatever was there
//     untouched, and removes only its own temporary file. A symbolic link
//     to a regular file is followed: the file it points to is replaced and
//     the link stays.
//   - Anything else (a device node such as /dev/null or a terminal, a pipe,
//     /dev/stdout, a socket, or a link to one) is opened and written as it
//     is, never created, truncated nor removed.
//
// Before any work, Set.Check refuses two outputs that are the same file
// (compared by device and inode, links followed; by their resolved path
// when they do not exist yet) and an output that is one of the command's
// inputs: both would make one write destroy the other.
package output

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Set is the outputs and inputs of one command.
type Set struct {
	files  []*File
	inputs []named

	mu      sync.Mutex
	writers []*Writer // in progress: Abort removes their temporary files
	aborted bool
}

// named is an input or an output by the flag that named it.
type named struct {
	flag, path string
	f          *os.File // an open stream (standard output), instead of path
}

// File is one output: the path a flag named, as Check resolved it.
type File struct {
	Flag, Path string
	// NoWait opens a file written in place without waiting: a pipe with no
	// reader is an error instead of a wait for one (a ready file).
	NoWait bool
	set    *Set

	// Set by Check.
	checked bool
	asIs    bool   // not a regular file: written in place
	target  string // the regular file a rename replaces (links followed)
	exists  bool
	mode    os.FileMode // of the file replaced
	uid     int
	gid     int
	id      identity
}

// Add declares an output named by flag; an empty path declares nothing
// and returns nil.
func (s *Set) Add(flag, path string) *File {
	if path == "" {
		return nil
	}
	f := &File{Flag: flag, Path: path, set: s}
	s.files = append(s.files, f)
	return f
}

// AddStream declares an output that is an open stream, such as the
// standard output a report goes to without --output: no other output may
// be the same file.
func (s *Set) AddStream(name string, f *os.File) {
	if f != nil {
		s.inputs = append(s.inputs, named{flag: name, f: f, path: name})
	}
}

// Input declares a file the command reads, named by its flag ("--rules")
// or by what it is ("the trace"): no output may be it. A directory stands
// for the files directly in it.
func (s *Set) Input(flag, path string) {
	if path != "" {
		s.inputs = append(s.inputs, named{flag: flag, path: path})
	}
}

// ConflictError is two outputs that are the same file, or an output that
// is an input: a mistake in how the command was called.
type ConflictError struct {
	// A and B name the two: a flag ("--output") or, for an input or a
	// stream, what it is ("the trace", "standard output").
	A, B         string
	PathA, PathB string
	// Input says B is an input; InDir that PathB is a directory of input
	// files, one of which is PathA.
	Input, InDir bool
}

func (e *ConflictError) Error() string {
	if e.Input {
		what := e.B
		switch {
		case strings.HasPrefix(what, "-") && e.InDir:
			what = "a file of the " + what + " directory"
		case e.InDir:
			what = "a file of " + what
		case strings.HasPrefix(what, "-"):
			what = "the " + what + " file"
		}
		return fmt.Sprintf("%s %s is %s %s: writing it would destroy it", e.A, quote(e.PathA), what, quote(e.PathB))
	}
	if e.PathA == e.PathB || e.PathB == "" {
		return fmt.Sprintf("%s and %s name the same file %s: one would overwrite the other", e.A, e.B, quote(e.PathA))
	}
	return fmt.Sprintf("%s %s and %s %s are the same file: one would overwrite the other", e.A, quote(e.PathA), e.B, quote(e.PathB))
}

// quote shows a path as it was given, quoted only when it holds anything
// unusual.
func quote(p string) string {
	if q := strconv.Quote(p); q[1:len(q)-1] != p || strings.ContainsAny(p, " \t") {
		return q
	}
	return p
}

// identity tells whether two names are the same file: its device and
// inode when it exists, else the absolute path it would be created at.
type identity struct {
	dev, ino uint64
	path     string // when the file does not exist
}

func (a identity) same(b identity) bool {
	if a.path != "" || b.path != "" {
		return a.path != "" && a.path == b.path
	}
	return a.dev == b.dev && a.ino == b.ino
}

func statIdentity(fi os.FileInfo) identity {
	st := fi.Sys().(*syscall.Stat_t)
	return identity{dev: uint64(st.Dev), ino: st.Ino}
}

// Check resolves every output and refuses, before any work, an output it
// cannot write (no such directory, a directory, no permission) and, as a
// *ConflictError, two outputs that are the same file or an output that is
// an input.
func (s *Set) Check() error {
	for _, f := range s.files {
		if err := f.resolve(); err != nil {
			return fmt.Errorf("%s %s: %w", f.Flag, f.Path, err)
		}
	}
	for i, a := range s.files {
		for _, b := range s.files[:i] {
			if a.id.same(b.id) {
				return &ConflictError{A: b.Flag, B: a.Flag, PathA: b.Path, PathB: a.Path}
			}
		}
	}
	for _, in := range s.inputs {
		ids, dir, err := inputIdentities(in)
		if err != nil {
			continue // an input that cannot be read says so when it is read
		}
		for _, f := range s.files {
			for _, id := range ids {
				if f.exists && f.id.same(id) {
					if in.f != nil { // an output stream
						return &ConflictError{A: f.Flag, B: in.flag, PathA: f.Path}
					}
					return &ConflictError{A: f.Flag, B: in.flag, PathA: f.Path, PathB: in.path, Input: true, InDir: dir}
				}
			}
		}
	}
	return nil
}

// inputIdentities are the files an input stands for: itself, or the files
// directly in a directory (dir).
func inputIdentities(in named) (ids []identity, dir bool, err error) {
	if in.f != nil {
		fi, err := in.f.Stat()
		if err != nil {
			return nil, false, err
		}
		return []identity{statIdentity(fi)}, false, nil
	}
	fi, err := os.Stat(in.path)
	if err != nil {
		return nil, false, err
	}
	if !fi.IsDir() {
		return []identity{statIdentity(fi)}, false, nil
	}
	entries, err := os.ReadDir(in.path)
	if err != nil {
		return nil, true, err
	}
	for _, e := range entries {
		if fi, err := os.Stat(filepath.Join(in.path, e.Name())); err == nil && !fi.IsDir() {
			ids = append(ids, statIdentity(fi))
		}
	}
	return ids, true, nil
}

// maxLinks bounds the symbolic links followed to a target, as the kernel
// does (ELOOP).
const maxLinks = 40

// resolve finds what the output is and where it will be written.
func (f *File) resolve() error {
	f.checked = true
	fi, err := os.Stat(f.Path) // links followed, /proc/self/fd/N included
	switch {
	case err == nil && fi.IsDir():
		return errors.New("is a directory")
	case err == nil && !fi.Mode().IsRegular():
		f.asIs, f.exists, f.id = true, true, statIdentity(fi)
		if err := unix.Access(f.Path, unix.W_OK); err != nil {
			return &fs.PathError{Op: "open", Path: f.Path, Err: err}
		}
		return nil
	case err == nil:
		f.exists, f.id = true, statIdentity(fi)
		st := fi.Sys().(*syscall.Stat_t)
		f.mode, f.uid, f.gid = fi.Mode().Perm(), int(st.Uid), int(st.Gid)
		target, err := filepath.EvalSymlinks(f.Path)
		if err == nil {
			tfi, serr := os.Stat(target)
			if serr != nil || !os.SameFile(fi, tfi) {
				err = errors.New("moved")
			}
		}
		if err != nil {
			// A file the path reaches but no path names (an unlinked file
			// behind /proc/self/fd/N): only writable in place.
			f.asIs = true
			return nil
		}
		f.target = target
	case errors.Is(err, fs.ErrNotExist):
		target, err := danglingTarget(f.Path)
		if err != nil {
			return err
		}
		f.target, f.id = target, identity{path: target}
	default:
		return err
	}
	return probeDir(filepath.Dir(f.target))
}

// danglingTarget is the absolute path a new file at path will have: the
// end of its chain of symbolic links, in a directory with links resolved.
func danglingTarget(path string) (string, error) {
	p, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	for range maxLinks {
		dir, err := filepath.EvalSymlinks(filepath.Dir(p))
		if err != nil {
			return "", err
		}
		p = filepath.Join(dir, filepath.Base(p))
		dest, err := os.Readlink(p)
		if errors.Is(err, fs.ErrNotExist) {
			return p, nil
		}
		if err != nil {
			return "", err // EINVAL: it exists and is no link; should not happen
		}
		if !filepath.IsAbs(dest) {
			dest = filepath.Join(dir, dest)
		}
		p = dest
	}
	return "", &fs.PathError{Op: "open", Path: path, Err: unix.ELOOP}
}

// probeDir checks that a file can be created in dir: it creates one and
// removes it at once.
func probeDir(dir string) error {
	f, err := createTemp(dir, ".whyslow-check")
	if err != nil {
		return err
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

// createTemp creates a new file in dir, named after base, with mode 0644
// (less the umask), that no one else has open.
func createTemp(dir, base string) (*os.File, error) {
	var last error
	for i := 0; i < 100; i++ {
		name := filepath.Join(dir, fmt.Sprintf("%s.%d-%d.tmp", base, os.Getpid(), time.Now().UnixNano()%1e9+int64(i)))
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
		last = err
	}
	return nil, last
}

// Writer writes one output: into a temporary file that Commit renames into
// place, or, for a file that is not regular, into the file itself.
type Writer struct {
	file *File
	f    *os.File
	tmp  string // the temporary file; "" when written in place or once renamed
	done bool
}

// Create opens the output for writing. Check must have passed.
func (f *File) Create() (*Writer, error) {
	if !f.checked {
		if err := f.resolve(); err != nil {
			return nil, fmt.Errorf("%s %s: %w", f.Flag, f.Path, err)
		}
	}
	w := &Writer{file: f}
	if f.asIs {
		flag := os.O_WRONLY
		if f.NoWait {
			flag |= unix.O_NONBLOCK
		}
		if fi, err := os.Stat(f.Path); err == nil && fi.Mode().IsRegular() {
			flag |= os.O_TRUNC
		}
		of, err := os.OpenFile(f.Path, flag, 0)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.Flag, err)
		}
		w.f = of
	} else {
		tf, err := createTemp(filepath.Dir(f.target), "."+filepath.Base(f.target))
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", f.Flag, f.Path, err)
		}
		if f.exists {
			// The new file takes the place of the old one: keep who may
			// read it.
			_ = tf.Chmod(f.mode)
			if os.Geteuid() == 0 {
				_ = tf.Chown(f.uid, f.gid)
			}
		}
		w.f, w.tmp = tf, tf.Name()
	}
	s := f.set
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.aborted {
		w.abort()
		return nil, errors.New("aborted")
	}
	s.writers = append(s.writers, w)
	return w, nil
}

// Write implements io.Writer. Its errors do not name the temporary file
// (the user named the output, not it) nor the output (the caller does).
func (w *Writer) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil {
		err = unwrapPath(err)
	}
	return n, err
}

// unwrapPath drops the temporary file's name from a write error: the user
// named the output, not it.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// Sync writes what the file holds to the disk (a file written in place,
// not regular, has nothing to sync).
func (w *Writer) Sync() error {
	if w.file.asIs {
		return nil
	}
	if err := unix.Fdatasync(int(w.f.Fd())); err != nil {
		return fmt.Errorf("%s %s: %w", w.file.Flag, w.file.Path, err)
	}
	return nil
}

// Publish renames the file into place now, while it is still written: for
// a trace streamed during the run, which must be found at its path when
// the run is killed. What was at the path is replaced; Abort no longer
// removes the file.
func (w *Writer) Publish() error {
	if w.tmp == "" {
		return nil
	}
	if err := os.Rename(w.tmp, w.file.target); err != nil {
		return fmt.Errorf("%s %s: %w", w.file.Flag, w.file.Path, unwrapPath(err))
	}
	w.tmp = ""
	return nil
}

// Commit completes the output: it closes the file and renames it into
// place. On error the temporary file is removed and what was at the path
// stays.
func (w *Writer) Commit() error {
	if w.done {
		return nil
	}
	err := w.Sync()
	if cerr := w.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("%s %s: %w", w.file.Flag, w.file.Path, unwrapPath(cerr))
	}
	if err == nil {
		err = w.Publish()
	}
	w.finish()
	if err != nil && w.tmp != "" {
		_ = os.Remove(w.tmp)
	}
	return err
}

// Abort gives the output up: it closes the file and removes the temporary
// file. It never removes anything else: not what was at the path, not a
// file written in place, not a published one.
func (w *Writer) Abort() {
	if w.done {
		return
	}
	w.abort()
	w.finish()
}

func (w *Writer) abort() {
	w.f.Close()
	if w.tmp != "" {
		_ = os.Remove(w.tmp)
	}
}

func (w *Writer) finish() {
	w.done = true
	s := w.file.set
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, o := range s.writers {
		if o == w {
			s.writers = append(s.writers[:i], s.writers[i+1:]...)
			break
		}
	}
}

// Abort removes the temporary files of every output in progress and makes
// any later Create fail: for a command that must end at once (a second
// signal). Outputs already completed stay. It is safe to call while other
// goroutines write.
func (s *Set) Abort() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.aborted = true
	for _, w := range s.writers {
		if w.tmp != "" {
			_ = os.Remove(w.tmp)
		}
	}
}

// AsIs says the output is written in place (Check must have passed): it is
// not a regular file, or one no path names.
func (f *File) AsIs() bool { return f.asIs }

// Target is the regular file a rename replaces or creates (links
// followed), "" for an output written in place.
func (f *File) Target() string { return f.target }

// Exists says there was a file at the path when Check ran.
func (f *File) Exists() bool { return f.exists }

// WriteFile writes an output at once with fn: created, written, then
// committed, or aborted when fn fails.
func (f *File) WriteFile(fn func(io.Writer) error) error {
	w, err := f.Create()
	if err != nil {
		return err
	}
	if err := fn(w); err != nil {
		w.Abort()
		return fmt.Errorf("%s %s: %w", f.Flag, f.Path, err)
	}
	return w.Commit()
}
