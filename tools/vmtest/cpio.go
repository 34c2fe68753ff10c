package vmtest

import (
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// Archive is an initramfs being assembled: regular files, directories and
// symlinks by absolute path. Write emits it as a newc cpio archive, sorted
// and with zero times, so the same inputs give the same bytes.
type Archive struct {
	entries map[string]entry
}

type entry struct {
	mode uint32 // type and permission bits
	data []byte // file content or symlink target
}

const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
)

// NewArchive returns an empty archive.
func NewArchive() *Archive { return &Archive{entries: map[string]entry{}} }

// Has reports whether name is in the archive.
func (a *Archive) Has(name string) bool {
	_, ok := a.entries[clean(name)]
	return ok
}

// File adds a regular file with permission bits perm, and its parents.
func (a *Archive) File(name string, data []byte, perm uint32) {
	a.add(name, entry{mode: modeFile | perm&0o7777, data: data})
}

// Symlink adds a symbolic link name -> target, and its parents.
func (a *Archive) Symlink(name, target string) {
	a.add(name, entry{mode: modeSymlink | 0o777, data: []byte(target)})
}

// Dir adds a directory and its parents.
func (a *Archive) Dir(name string) {
	name = clean(name)
	for name != "." && name != "" {
		if _, ok := a.entries[name]; !ok {
			a.entries[name] = entry{mode: modeDir | 0o755}
		}
		name = path.Dir(name)
	}
}

func (a *Archive) add(name string, e entry) {
	name = clean(name)
	a.Dir(path.Dir(name))
	a.entries[name] = e
}

// clean makes an absolute path relative, as cpio archives store names.
func clean(name string) string { return strings.TrimPrefix(path.Clean("/"+name), "/") }

// Write writes the archive in the "newc" cpio format the kernel unpacks.
func (a *Archive) Write(w io.Writer) error {
	names := make([]string, 0, len(a.entries))
	for n := range a.entries {
		names = append(names, n)
	}
	sort.Strings(names) // parents sort before their children
	ino := uint32(1)
	for _, n := range names {
		e := a.entries[n]
		if err := writeEntry(w, ino, n, e); err != nil {
			return err
		}
		ino++
	}
	return writeEntry(w, 0, "TRAILER!!!", entry{})
}

func writeEntry(w io.Writer, ino uint32, name string, e entry) error {
	nlink := uint32(1)
	if e.mode&0o170000 == modeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0, 0, 0, len(name)+1, 0)
	buf := make([]byte, 0, len(hdr)+len(name)+4)
	buf = append(buf, hdr...)
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = pad4(buf)
	if _, err := w.Write(buf); err != nil {
		return err
	}
	if len(e.data) == 0 {
		return nil
	}
	if _, err := w.Write(e.data); err != nil {
		return err
	}
	_, err := w.Write(make([]byte, (4-len(e.data)%4)%4))
	return err
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}
