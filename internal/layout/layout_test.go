// Package layout holds the tests that keep the repository's shape: the
// import direction of docs/architecture.md (data flows one way, from the
// probes to the report, and the analysis never depends on the code that
// loads BPF programs), and the README's probe table, generated from the
// probes' declarations.
package layout

import (
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/whyslow/whyslow/"

// rules are what each package may not depend on, even through others.
var rules = []struct {
	pkgs   []string // module-relative import paths
	never  []string // module-relative paths, or full paths of other modules (prefixes)
	except []string // module-relative paths that never does not cover
	why    string
}{
	{
		pkgs:  []string{"internal/hist"},
		never: []string{"internal/", "probes", "rules", "diagnose", "cmd"},
		why:   "the vocabulary of the pipeline: nothing of whyslow below it",
	},
	{
		pkgs:   []string{"internal/event"},
		never:  []string{"internal/", "probes", "rules", "diagnose", "cmd"},
		except: []string{"internal/hist"},
		why:    "the vocabulary of the pipeline: of whyslow only the histogram below it (events that carry one)",
	},
	{
		pkgs:  []string{"internal/timeline", "internal/facts", "internal/stage", "rules", "internal/report", "internal/tracefile", "internal/stackexport", "internal/synth", "internal/symbolize", "internal/flight", "internal/metrics"},
		never: []string{"probes", "diagnose", "cmd", "internal/live", "github.com/cilium/ebpf"},
		why:   "the analysis runs on recorded traces anywhere: it never needs the probes or BPF",
	},
	{
		pkgs:   []string{"internal/blockqueue", "internal/sysattr", "internal/command", "internal/udevd"},
		never:  []string{"internal/", "probes", "rules", "diagnose", "cmd"},
		except: []string{"internal/sysattr"},
		why:    "machine helpers of the selftest and the scenarios: they know nothing of the pipeline",
	},
	{
		pkgs:  []string{"internal/timeline"},
		never: []string{"internal/facts", "rules", "internal/report", "internal/tracefile"},
		why:   "the timeline is the input of the analysis",
	},
	{
		pkgs:  []string{"internal/facts"},
		never: []string{"rules", "internal/report", "internal/tracefile"},
		why:   "facts are what rules read",
	},
	{
		pkgs:  []string{"rules"},
		never: []string{"internal/report", "internal/tracefile"},
		why:   "rules see the facts only, so a live run and a trace give the same findings",
	},
	{
		pkgs:  []string{"probes"},
		never: []string{"internal/facts", "rules", "internal/report", "internal/tracefile", "internal/live", "diagnose", "cmd"},
		why:   "probes deliver events and know nothing of what is made of them",
	},
	{
		pkgs:  []string{"diagnose", "internal/live"},
		never: []string{"cmd", "internal/report"},
		why:   "a run and a trace are used by commands, not the other way round",
	},
	{
		pkgs:  []string{"internal/live"},
		never: []string{"diagnose", "rules"},
		why:   "a live trace prints events; it does not diagnose",
	},
}

// TestImportDirection checks every rule against the module's packages and
// their dependencies, as `go list -deps` sees them (tests excluded).
func TestImportDirection(t *testing.T) {
	cmd := exec.Command("go", "list", "-e", "-json=ImportPath,Deps", module+"...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := map[string][]string{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p struct {
			ImportPath string
			Deps       []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		deps[strings.TrimPrefix(p.ImportPath, module)] = p.Deps
	}
	for _, r := range rules {
		for _, pkg := range r.pkgs {
			ds, ok := deps[pkg]
			if !ok {
				t.Errorf("no package %s: update the rules here and in docs/architecture.md", pkg)
				continue
			}
			for _, bad := range r.never {
				for _, d := range ds {
					rel, ours := strings.CutPrefix(d, module)
					if ours && slices.Contains(r.except, rel) {
						continue
					}
					if bad == "github.com/cilium/ebpf" && strings.HasPrefix(d, bad) ||
						ours && (rel == bad || strings.HasSuffix(bad, "/") && strings.HasPrefix(rel, bad)) {
						t.Errorf("%s depends on %s: %s", pkg, d, r.why)
						break // once per rule
					}
				}
			}
		}
	}
	// cmd is the command line: only main imports it.
	for pkg, ds := range deps {
		if pkg != "cmd/whyslow" && pkg != "cmd" && slices.Contains(ds, module+"cmd") {
			t.Errorf("%s depends on cmd: only cmd/whyslow (main) may", pkg)
		}
	}
}

// No built program is committed: the only ELF files in the repository are
// the generated BPF objects (*_bpfel.o, *_bpfel_test.o) that go build
// embeds.
func TestNoCommittedBinaries(t *testing.T) {
	out, err := exec.Command("git", "-C", "../..", "ls-files", "-z").Output()
	if err != nil {
		t.Skipf("not a git checkout (git ls-files: %v): nothing to check", err)
	}
	for _, name := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		if strings.HasSuffix(name, "_bpfel.o") || strings.HasSuffix(name, "_bpfel_test.o") {
			continue
		}
		f, err := os.Open(filepath.Join("..", "..", name))
		if err != nil {
			continue // deleted in the work tree
		}
		magic := make([]byte, 4)
		n, _ := io.ReadFull(f, magic)
		f.Close()
		if n == 4 && string(magic) == "\x7fELF" {
			t.Errorf("%s is a committed binary: remove it and add it to .gitignore", name)
		}
	}
}
