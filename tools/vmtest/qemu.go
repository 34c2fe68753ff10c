package vmtest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Disk is a virtio disk of the guest, backed by a raw image file.
type Disk struct {
	Path   string
	Size   int64  // created (sparse) with this size when missing
	Serial string // what /sys/block/vdX/serial says in the guest
	// IOPS, when set, throttles the disk to that many operations per second
	// (qemu's throttling.iops-total): a slow "HDD".
	IOPS int
	// BPS, when set, throttles the disk to that many bytes a second
	// (qemu's throttling.bps-total): writeback to it falls behind a writer.
	BPS int64
}

// Machine is what to boot.
type Machine struct {
	Kernel  string // vmlinuz
	Initrd  string
	CPUs    int
	MemMiB  int
	Disks   []Disk
	Timeout time.Duration // the whole boot, run and power-off
	Console io.Writer     // a copy of the serial console, or nil
}

// StepResult is how one guest step ended.
type StepResult struct {
	Name string
	Code int // exit code; -1 when the step never ended
}

// Boot is what a guest run left behind.
type Boot struct {
	Release string // uname -r in the guest; empty if it never booted
	Steps   []StepResult
	Done    bool // the guest reached its power-off
	// InsmodFailed are the modules the guest could not load.
	InsmodFailed []string
	TimedOut     bool
	Console      []byte
}

// Run boots m and waits for the guest to power off or the timeout.
func (m Machine) Run(ctx context.Context) (*Boot, error) {
	args := []string{
		"-nodefaults", "-nographic", "-no-reboot",
		"-machine", "pc", "-accel", "tcg,thread=single", "-cpu", "max",
		"-smp", strconv.Itoa(m.CPUs), "-m", strconv.Itoa(m.MemMiB),
		"-serial", "stdio", "-monitor", "none",
		"-kernel", m.Kernel, "-initrd", m.Initrd,
		"-append", "console=ttyS0 panic=-1 quiet loglevel=5 rdinit=/init",
	}
	for i, d := range m.Disks {
		if err := ensureImage(d.Path, d.Size); err != nil {
			return nil, err
		}
		drive := fmt.Sprintf("file=%s,if=none,id=disk%d,format=raw,cache=none,aio=threads", d.Path, i)
		if d.IOPS > 0 {
			drive += fmt.Sprintf(",throttling.iops-total=%d", d.IOPS)
		}
		if d.BPS > 0 {
			drive += fmt.Sprintf(",throttling.bps-total=%d", d.BPS)
		}
		args = append(args, "-drive", drive, "-device", fmt.Sprintf("virtio-blk-pci,drive=disk%d,serial=%s", i, d.Serial))
	}
	ctx, cancel := context.WithTimeout(ctx, m.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.WaitDelay = 5 * time.Second
	var console bytes.Buffer
	var out io.Writer = &console
	if m.Console != nil {
		out = io.MultiWriter(&console, m.Console)
	}
	cmd.Stdout, cmd.Stderr = out, out
	err := cmd.Run()
	b := parseConsole(console.Bytes())
	b.Console = console.Bytes()
	if ctx.Err() == context.DeadlineExceeded {
		b.TimedOut = true
		return b, nil
	}
	if err != nil && !b.Done {
		return b, fmt.Errorf("qemu: %v", err)
	}
	return b, nil
}

// ensureImage creates a sparse raw image of size bytes, zeroed.
func ensureImage(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Truncate(size)
}

// parseConsole reads the guest's markers off its console output.
func parseConsole(console []byte) *Boot {
	b := &Boot{}
	open := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(console))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(strings.TrimRight(sc.Text(), "\r"))
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case markBooted:
			if len(f) > 1 {
				b.Release = f[1]
			}
		case markBegin:
			if len(f) > 1 {
				open[f[1]] = len(b.Steps)
				b.Steps = append(b.Steps, StepResult{Name: f[1], Code: -1})
			}
		case markEnd:
			if len(f) > 2 {
				if i, ok := open[f[1]]; ok {
					if c, err := strconv.Atoi(f[2]); err == nil {
						b.Steps[i].Code = c
					}
				}
			}
		case markDone:
			b.Done = true
		case markInsmod:
			if len(f) > 1 {
				b.InsmodFailed = append(b.InsmodFailed, f[1])
			}
		}
	}
	return b
}

// ExtractResults unpacks the tar archive the guest wrote on the raw
// results disk into dir.
func ExtractResults(image, dir string) error {
	f, err := os.Open(image)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	n := 0
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if n == 0 {
				return fmt.Errorf("results disk %s holds no tar archive: %v", image, err)
			}
			return fmt.Errorf("results disk %s: %v", image, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		name := filepath.Clean(h.Name)
		if strings.HasPrefix(name, "..") || filepath.IsAbs(name) {
			return fmt.Errorf("results disk %s: bad name %q", image, h.Name)
		}
		dst := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		w, err := os.Create(dst)
		if err != nil {
			return err
		}
		_, err = io.Copy(w, tr)
		w.Close()
		if err != nil {
			return err
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("results disk %s holds no files", image)
	}
	return nil
}

// ProgressWriter passes on, from a guest's console, only the lines that
// show its progress: the step markers and the top-level test results.
type ProgressWriter struct {
	W       io.Writer
	Prefix  string
	partial []byte
}

func (p *ProgressWriter) Write(b []byte) (int, error) {
	p.partial = append(p.partial, b...)
	for {
		i := bytes.IndexByte(p.partial, '\n')
		if i < 0 {
			break
		}
		line := strings.TrimRight(string(p.partial[:i]), "\r")
		p.partial = p.partial[i+1:]
		if strings.HasPrefix(line, "VMTEST-") || strings.HasPrefix(line, "--- ") || strings.HasPrefix(line, "panic:") ||
			strings.Contains(line, "soft lockup") || strings.Contains(line, "Kernel panic") {
			fmt.Fprintf(p.W, "%s%s\n", p.Prefix, line)
		}
	}
	return len(b), nil
}
