package probes

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// directFile is a file or device open with O_DIRECT and a buffer for its
// I/O: the preamble of every test that makes real block I/O from this
// process.
type directFile struct {
	fd  int
	buf []byte // page aligned, as O_DIRECT needs
}

// openDirect opens path with O_DIRECT, for flags (unix.O_RDONLY or
// unix.O_WRONLY), and maps a buffer of size bytes for it: O_DIRECT needs an
// aligned buffer, and anonymous memory is page aligned. It returns an error
// rather than failing a test, so that writer goroutines and the I/O helper
// process can use it too; Close undoes it.
func openDirect(path string, flags, size int) (*directFile, error) {
	fd, err := unix.Open(path, flags|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s with O_DIRECT: %w", path, err)
	}
	buf, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mapping a buffer of %d bytes for %s: %w", size, path, err)
	}
	return &directFile{fd: fd, buf: buf}, nil
}

// Close unmaps the buffer and closes the file.
func (d *directFile) Close() {
	unix.Munmap(d.buf)
	unix.Close(d.fd)
}
