// Package vmtest runs whyslow's real-kernel tests on other kernels: it
// fetches Debian's cloud kernels, builds a busybox initramfs holding the
// statically built test binaries, whyslow and the tools the scenarios drive,
// boots each kernel under qemu and brings the results back.
package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Kernel is one kernel of the matrix: a Debian suite's cloud kernel, or a
// kernel from elsewhere put in the cache by hand.
type Kernel struct {
	Name  string // short name used on the command line, e.g. "6.1"
	Suite string // the Debian suite that ships it; "" for a kernel from elsewhere
	// Release is, for a kernel from elsewhere, its uname -r: Fetch then uses
	// the tree <cache>/kernels/<Release>/ as it is (boot/vmlinuz-<Release>,
	// with BTF, and lib/modules/<Release>/ with modules.dep) and runs no apt.
	Release string
}

// Matrix is the kernels `make vmtest` runs, oldest first.
var Matrix = []Kernel{
	{Name: "5.10", Suite: "bullseye"},
	{Name: "6.1", Suite: "bookworm"},
	{Name: "6.12", Suite: "trixie"},
}

// Select returns the kernels named in names ("all" or empty: the whole
// matrix), or an error naming an unknown one.
func Select(names []string) ([]Kernel, error) {
	if len(names) == 0 || (len(names) == 1 && names[0] == "all") {
		return Matrix, nil
	}
	var out []Kernel
	for _, n := range names {
		var found bool
		for _, k := range Matrix {
			if k.Name == n {
				out = append(out, k)
				found = true
			}
		}
		if !found {
			var known []string
			for _, k := range Matrix {
				known = append(known, k.Name)
			}
			return nil, fmt.Errorf("unknown kernel %q (known: %s)", n, strings.Join(known, ", "))
		}
	}
	return out, nil
}

// metaPackage depends on the suite's current cloud kernel image.
const metaPackage = "linux-image-cloud-amd64"

// Unpacked is a kernel package unpacked in the cache.
type Unpacked struct {
	Release string // uname -r, e.g. "6.1.0-50-cloud-amd64"
	Package string // the .deb it came from
	Vmlinuz string // path of the kernel image
	Root    string // the unpacked tree: Root/lib/modules/Release holds the modules (depmod run)
}

// apt runs apt-get or apt-cache with a private state, cache and sources list
// under dir, so that the host's apt configuration is neither used nor changed.
type apt struct{ dir string }

func (a apt) options() []string {
	return []string{
		"-o", "Dir::State=" + filepath.Join(a.dir, "state"),
		"-o", "Dir::State::status=/dev/null",
		"-o", "Dir::Cache=" + filepath.Join(a.dir, "cache"),
		"-o", "Dir::Etc::SourceList=" + filepath.Join(a.dir, "sources.list"),
		"-o", "Dir::Etc::SourceParts=/dev/null",
		"-o", "Debug::NoLocking=1",
		"-o", "APT::Sandbox::User=root",
		"-q",
	}
}

func (a apt) run(ctx context.Context, tool string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, tool, append(a.options(), args...)...)
	cmd.Dir = a.dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %v: %s", tool, strings.Join(args, " "), err, lastLines(stderr.String(), 5))
	}
	return out, nil
}

// Fetcher downloads and unpacks kernels into a cache directory.
type Fetcher struct {
	Cache   string        // e.g. ~/.cache/whyslow-vmtest
	Mirror  string        // Debian mirror, e.g. http://deb.debian.org/debian
	Keyring string        // the archive keyring apt checks the suites with
	MaxAge  time.Duration // package lists older than this are refreshed
	Log     func(format string, args ...any)
}

// Fetch returns kernel k unpacked, downloading it when the cache lacks the
// suite's current version. A kernel from elsewhere (k.Release) must be in
// the cache already.
func (f *Fetcher) Fetch(ctx context.Context, k Kernel) (*Unpacked, error) {
	if k.Release != "" {
		return f.cached(k)
	}
	a := apt{dir: filepath.Join(f.Cache, "apt")}
	if err := f.updateLists(ctx, a); err != nil {
		return nil, err
	}
	pkg, err := f.resolve(ctx, a, k)
	if err != nil {
		return nil, err
	}
	release := strings.TrimPrefix(pkg, "linux-image-")
	u := &Unpacked{Release: release, Package: pkg, Root: filepath.Join(f.Cache, "kernels", release)}
	u.Vmlinuz = filepath.Join(u.Root, "boot", "vmlinuz-"+release)
	modules := filepath.Join(u.Root, "lib", "modules", release)
	if _, err := os.Stat(filepath.Join(modules, "modules.dep")); err == nil {
		return u, nil
	}
	debs := filepath.Join(f.Cache, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return nil, err
	}
	deb, err := f.download(ctx, a, pkg, debs)
	if err != nil {
		return nil, err
	}
	f.Log("unpacking %s", filepath.Base(deb))
	tmp := u.Root + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, tmp).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("dpkg-deb -x %s: %v: %s", deb, err, out)
	}
	// trixie ships modules under usr/lib (merged /usr); depmod and modprobe
	// -d look under lib/modules.
	if _, err := os.Stat(filepath.Join(tmp, "lib", "modules")); os.IsNotExist(err) {
		if err := os.MkdirAll(filepath.Join(tmp, "lib"), 0o755); err != nil {
			return nil, err
		}
		if err := os.Rename(filepath.Join(tmp, "usr", "lib", "modules"), filepath.Join(tmp, "lib", "modules")); err != nil {
			return nil, fmt.Errorf("%s: no lib/modules or usr/lib/modules: %w", deb, err)
		}
	}
	if out, err := exec.CommandContext(ctx, "depmod", "-b", tmp, release).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("depmod -b %s %s: %v: %s", tmp, release, err, out)
	}
	os.RemoveAll(u.Root)
	if err := os.Rename(tmp, u.Root); err != nil {
		return nil, err
	}
	if _, err := os.Stat(u.Vmlinuz); err != nil {
		return nil, fmt.Errorf("%s has no kernel image: %w", deb, err)
	}
	return u, nil
}

// cached returns a kernel from elsewhere from the cache, as it is there.
func (f *Fetcher) cached(k Kernel) (*Unpacked, error) {
	root := filepath.Join(f.Cache, "kernels", k.Release)
	u := &Unpacked{Release: k.Release, Root: root, Vmlinuz: filepath.Join(root, "boot", "vmlinuz-"+k.Release)}
	for _, p := range []string{u.Vmlinuz, filepath.Join(root, "lib", "modules", k.Release, "modules.dep")} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("kernel %s (from elsewhere): %w: put its vmlinuz and its modules (depmod -b %s %s) under %s", k.Name, err, root, k.Release, root)
		}
	}
	return u, nil
}

// updateLists writes the private sources list and runs apt-get update when
// the lists are missing or older than MaxAge.
func (f *Fetcher) updateLists(ctx context.Context, a apt) error {
	for _, d := range []string{"state/lists/partial", "cache/archives/partial"} {
		if err := os.MkdirAll(filepath.Join(a.dir, d), 0o755); err != nil {
			return err
		}
	}
	var sources strings.Builder
	for _, k := range Matrix {
		if k.Suite != "" {
			fmt.Fprintf(&sources, "deb [signed-by=%s] %s %s main\n", f.Keyring, f.Mirror, k.Suite)
		}
	}
	path := filepath.Join(a.dir, "sources.list")
	old, _ := os.ReadFile(path)
	stamp := filepath.Join(a.dir, "updated")
	st, err := os.Stat(stamp)
	if string(old) == sources.String() && err == nil && time.Since(st.ModTime()) < f.MaxAge {
		return nil
	}
	if err := os.WriteFile(path, []byte(sources.String()), 0o644); err != nil {
		return err
	}
	f.Log("apt-get update (%s)", f.Mirror)
	if _, err := a.run(ctx, "apt-get", "update"); err != nil {
		return err
	}
	return os.WriteFile(stamp, nil, 0o644)
}

// imageDep matches the cloud metapackage's dependency on the real image.
var imageDep = regexp.MustCompile(`\b(linux-image-[0-9][^ ,()]*-cloud-amd64)\b`)

// resolve finds the image package the suite's cloud metapackage depends on.
func (f *Fetcher) resolve(ctx context.Context, a apt, k Kernel) (string, error) {
	out, err := a.run(ctx, "apt-cache", "show", metaPackage+"/"+k.Suite)
	if err != nil {
		return "", fmt.Errorf("kernel %s: %w", k.Name, err)
	}
	return parseImageDep(out, k)
}

// parseImageDep picks, from apt-cache show output, the image package of
// kernel k's version.
func parseImageDep(show []byte, k Kernel) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(show))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "Depends:") {
			continue
		}
		for _, m := range imageDep.FindAllStringSubmatch(line, -1) {
			if strings.HasPrefix(strings.TrimPrefix(m[1], "linux-image-"), k.Name+".") {
				return m[1], nil
			}
		}
	}
	return "", fmt.Errorf("kernel %s: %s in %s depends on no linux-image-%s.*-cloud-amd64", k.Name, metaPackage, k.Suite, k.Name)
}

// download fetches pkg's .deb into dir unless it is there already.
func (f *Fetcher) download(ctx context.Context, a apt, pkg, dir string) (string, error) {
	if m, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb")); len(m) == 1 {
		return m[0], nil
	}
	f.Log("downloading %s", pkg)
	cmd := exec.CommandContext(ctx, "apt-get", append(a.options(), "download", pkg)...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s: %v: %s", pkg, err, lastLines(string(out), 5))
	}
	m, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
	if len(m) != 1 {
		return "", fmt.Errorf("apt-get download %s left %d .deb files in %s", pkg, len(m), dir)
	}
	return m[0], nil
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
