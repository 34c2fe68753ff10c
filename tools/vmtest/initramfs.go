package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// AddHostFile copies a host file into the archive at guest, keeping its
// permission bits; symlinks are followed.
func (a *Archive) AddHostFile(host, guest string) error {
	data, err := os.ReadFile(host)
	if err != nil {
		return err
	}
	st, err := os.Stat(host)
	if err != nil {
		return err
	}
	a.File(guest, data, uint32(st.Mode().Perm()))
	return nil
}

// AddProgram copies a host program to guest along with the shared libraries
// ldd says it loads, at the paths the dynamic loader will look for them.
func (a *Archive) AddProgram(ctx context.Context, host, guest string) error {
	if err := a.AddHostFile(host, guest); err != nil {
		return err
	}
	libs, err := sharedLibs(ctx, host)
	if err != nil {
		return err
	}
	for _, l := range libs {
		if a.Has(l) {
			continue
		}
		if err := a.AddHostFile(l, l); err != nil {
			return fmt.Errorf("%s needs %s: %w", host, l, err)
		}
	}
	return nil
}

// sharedLibs lists the libraries a dynamic executable loads, by ldd.
// A static executable has none.
func sharedLibs(ctx context.Context, bin string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "ldd", bin).CombinedOutput()
	if err != nil {
		if bytes.Contains(out, []byte("not a dynamic executable")) {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %v: %s", bin, err, out)
	}
	return parseLdd(out)
}

// parseLdd reads ldd's output: "name => /path (addr)" and "/path (addr)"
// lines give a library; "not found" is an error.
func parseLdd(out []byte) ([]string, error) {
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "linux-vdso") || strings.Contains(line, "statically linked") {
			continue
		}
		if strings.Contains(line, "not found") {
			return nil, fmt.Errorf("missing library: %s", line)
		}
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			libs = append(libs, f[0])
		}
	}
	return libs, sc.Err()
}

// AddModules adds kernel modules with everything they depend on, in load
// order, decompressed (busybox insmod reads plain .ko files), and returns
// their guest paths in the order to insmod them. A module built into the
// kernel adds nothing.
func (a *Archive) AddModules(ctx context.Context, k *Unpacked, names ...string) ([]string, error) {
	var order []string
	seen := map[string]bool{}
	for _, n := range names {
		out, err := exec.CommandContext(ctx, "modprobe", "-d", k.Root, "-S", k.Release, "--show-depends", n).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("modprobe --show-depends %s for %s: %v: %s", n, k.Release, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 || f[0] != "insmod" {
				continue // "builtin X"
			}
			host := f[1]
			rel, err := filepath.Rel(k.Root, host)
			if err != nil || strings.HasPrefix(rel, "..") {
				return nil, fmt.Errorf("module %s outside %s", host, k.Root)
			}
			guest := "/" + strings.TrimSuffix(strings.TrimSuffix(rel, ".xz"), ".zst")
			if seen[guest] {
				continue
			}
			seen[guest] = true
			data, err := readModule(ctx, host)
			if err != nil {
				return nil, err
			}
			a.File(guest, data, 0o644)
			order = append(order, guest)
		}
	}
	return order, nil
}

// readModule returns a module file's contents, decompressed.
func readModule(ctx context.Context, p string) ([]byte, error) {
	var tool string
	switch path.Ext(p) {
	case ".xz":
		tool = "xz"
	case ".zst":
		tool = "zstd"
	default:
		return os.ReadFile(p)
	}
	out, err := exec.CommandContext(ctx, tool, "-dc", p).Output()
	if err != nil {
		return nil, fmt.Errorf("%s -dc %s: %v", tool, p, err)
	}
	return out, nil
}
