// Package rules evaluates declarative diagnosis rules on the facts of a run
// and turns the matches into ranked findings.
//
// A rule is one YAML file:
//
//	id: queue-freeze-stall          # [a-z0-9-], unique
//	title: "{{.Device.Name}} ..."   # text/template
//	severity: critical              # critical | warning | info
//	scope: device                   # device | command | run
//	when: Device.Freezes.Count() > 0            # expr, bool
//	score: Device.Stalls.UnionMs()              # expr, number: ms of I/O delay explained
//	explain: "..."                  # text/template
//	remedy: "..."                   # text/template
//	evidence:                       # ordered name: expr
//	  - freezes: Device.Freezes.Count()
//	processes: Device.Freezes.Tasks().As("freezer")  # expr: facts.Tasks or concat(...) of them
//	trigger: true                   # command scope: the Command is the chain's trigger
//	explains: other-rule-id         # this finding is a cause of that rule's finding on the same device
//	precision: Device.Freezes.Sources()  # expr: string or strings, how the facts were measured
//	needs: [Device.Freezes]         # facts it cannot do without ("A | B": either)
//	optional: [Device.Stalls]       # other facts, supplied by probes, it reads
//
// Expressions (github.com/expr-lang/expr) are compiled once, at load, against
// a typed environment per scope: DeviceEnv (evaluated per device), CommandEnv
// (per device and command) and RunEnv (once, after the others). Besides the
// fields and methods of the facts package and expr's builtins (duration("2s"),
// concat, max, len, ...), they may call ms(duration) float, pct(a, b) = 100*a/b
// and ratio(a, b) = a/b (both 0 when b is 0). Durations compare only with
// durations: write ms(Command.Period) > 5 or Command.Period > duration("5ms").
//
// Templates see TemplateData: .Run, .Device, .Command, .Findings, .Score and
// .Ev, the evidence values by name; with the functions ms, pct, num (a
// number with at most one decimal), dur (a rounded duration), join, plural
// ("{{plural 3 "stall"}}" is "3 stalls") and list ("a, b and c").
//
// Every error in a rule file names file:line:column, including errors inside
// an expression or a template, mapped back to the file.
package rules

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"text/template"

	"github.com/expr-lang/expr/vm"
	"gopkg.in/yaml.v3"

	"github.com/whyslow/whyslow/internal/facts"
)

// Scope says what a rule is evaluated for.
type Scope string

// Scopes.
const (
	ScopeDevice  Scope = "device"  // once per device
	ScopeCommand Scope = "command" // once per device and command
	ScopeRun     Scope = "run"     // once, after the device and command rules
)

// DeviceEnv is what a device-scope expression sees.
type DeviceEnv struct {
	Run    *facts.Run
	Device *facts.Device
}

// CommandEnv is what a command-scope expression sees.
type CommandEnv struct {
	Run     *facts.Run
	Device  *facts.Device
	Command *facts.Command
}

// RunEnv is what a run-scope expression sees.
type RunEnv struct {
	Run *facts.Run
	// Findings is the number of findings of the device and command rules,
	// after chaining.
	Findings int
}

// TemplateData is what title, explain and remedy templates see. Device and
// Command are nil where the scope has none.
type TemplateData struct {
	Run      *facts.Run
	Device   *facts.Device
	Command  *facts.Command
	Findings int
	Score    float64
	// Ev holds the evidence values by name.
	Ev map[string]any
}

// Rule is one compiled rule.
type Rule struct {
	ID       string
	Title    string // template source
	Summary  string // one plain line saying what the rule finds (optional)
	Severity Severity
	Scope    Scope
	Explains string // id of the rule this one is a cause of, or ""
	Trigger  bool   // command scope: the Command becomes the finding's trigger
	File     string // where the rule was loaded from
	// Needs are the facts the rule cannot be evaluated without: for each
	// item, one of its facts (alternatives) must be supplied (needs.go).
	Needs [][]string

	when, score, processes       *vm.Program
	precision                    *vm.Program
	evidence                     []namedProgram
	title, step, explain, remedy *template.Template
	// where each field is in the file, for errors at evaluation
	src   *source
	nodes map[string]*yaml.Node // by field: "when", "evidence: name", ...
	pos   map[string]pos
}

type namedProgram struct {
	name string
	prog *vm.Program
}

// Set is a set of rules with distinct ids. The zero value is an empty set.
type Set struct {
	rules []*Rule // sorted by id
}

// Rules returns the rules sorted by id.
func (s *Set) Rules() []*Rule {
	if s == nil {
		return nil
	}
	return slices.Clone(s.rules)
}

// Rule returns the rule of an id, or nil.
func (s *Set) Rule(id string) *Rule {
	if s == nil {
		return nil
	}
	for _, r := range s.rules {
		if r.ID == id {
			return r
		}
	}
	return nil
}

// Merge returns a new set with the rules of s, where the rules of o replace
// those with the same id and add the others.
func (s *Set) Merge(o *Set) *Set {
	byID := map[string]*Rule{}
	for _, r := range s.Rules() {
		byID[r.ID] = r
	}
	for _, r := range o.Rules() {
		byID[r.ID] = r
	}
	out := &Set{}
	for _, r := range byID {
		out.rules = append(out.rules, r)
	}
	sort.Slice(out.rules, func(i, j int) bool { return out.rules[i].ID < out.rules[j].ID })
	return out
}

//go:embed builtin/*.yaml
var builtinFS embed.FS

// Default returns the built-in rules.
func Default() (*Set, error) {
	return load(builtinFS, "builtin", "builtin", nil)
}

// Load loads every *.yaml and *.yml file of dir in fsys. Rules may explain
// each other and the built-in rules. Errors name the files as dir/name.
func Load(fsys fs.FS, dir string) (*Set, error) {
	return load(fsys, dir, dir, builtinIDs())
}

// LoadDir loads every *.yaml and *.yml file of a directory, as for
// `diagnose --rules DIR`; merge it over Default to replace built-ins.
func LoadDir(dir string) (*Set, error) {
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("rules directory: %w", err)
	}
	return load(os.DirFS(dir), ".", dir, builtinIDs())
}

// LoadPaths loads rule files and directories, as for `--rules PATH`
// (repeatable): a directory gives its *.yaml and *.yml files (not those of
// its subdirectories), a file is loaded whatever its name. They are
// compiled together, so a rule may explain a rule of another path, and an
// id given twice is an error. Every error is reported, each naming the
// path: a missing path, an unreadable file, each mistake in each file at
// its line and column.
func LoadPaths(paths ...string) (*Set, error) {
	var files []ruleFile
	var errs []error
	seen := map[string]bool{}
	add := func(p string) {
		if seen[filepath.Clean(p)] {
			return
		}
		seen[filepath.Clean(p)] = true
		data, err := os.ReadFile(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, unwrapPath(err)))
			return
		}
		files = append(files, ruleFile{name: p, data: data})
	}
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, unwrapPath(err)))
			continue
		}
		if !fi.IsDir() {
			add(p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, unwrapPath(err)))
			continue
		}
		for _, e := range entries {
			if ext := filepath.Ext(e.Name()); !e.IsDir() && (ext == ".yaml" || ext == ".yml") {
				add(filepath.Join(p, e.Name()))
			}
		}
	}
	set, err := compileFiles(files, builtinIDs())
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return set, nil
}

// Errors returns the single errors an error of this package holds (it
// joins them with errors.Join), in order.
func Errors(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, Errors(e)...)
		}
		return out
	}
	return []error{err}
}

// LoadFiles loads the named rule files. Rules may explain each other and the
// built-in rules.
func LoadFiles(paths ...string) (*Set, error) {
	var files []ruleFile
	var errs []error
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, unwrapPath(err)))
			continue
		}
		files = append(files, ruleFile{name: p, data: data})
	}
	set, err := compileFiles(files, builtinIDs())
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return set, nil
}

// Check loads the named files, reporting every error in them, for
// `whyslow rules check`.
func Check(paths ...string) error {
	if len(paths) == 0 {
		return errors.New("no rule files to check")
	}
	_, err := LoadFiles(paths...)
	return err
}

// unwrapPath drops the path an *fs.PathError repeats.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

type ruleFile struct {
	name string
	data []byte
}

// load compiles the rule files of dir in fsys, naming them prefix/name in errors.
func load(fsys fs.FS, dir, prefix string, outside map[string]Scope) (*Set, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("reading rules: %w", err)
	}
	var files []ruleFile
	var errs []error
	for _, e := range entries {
		ext := filepath.Ext(e.Name())
		if e.IsDir() || (ext != ".yaml" && ext != ".yml") {
			continue
		}
		p := path.Join(dir, e.Name())
		name := filepath.Join(prefix, e.Name())
		data, err := fs.ReadFile(fsys, p)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, unwrapPath(err)))
			continue
		}
		files = append(files, ruleFile{name: name, data: data})
	}
	set, err := compileFiles(files, outside)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return set, nil
}

// builtinIDs returns the ids and scopes of the built-in rules, which other
// rule files may name in `explains`.
func builtinIDs() map[string]Scope {
	set, err := Default()
	if err != nil {
		return nil
	}
	out := map[string]Scope{}
	for _, r := range set.rules {
		out[r.ID] = r.Scope
	}
	return out
}

// compileFiles parses and compiles the files, then checks what only the set
// as a whole can show: duplicate ids, `explains` targets and cycles.
func compileFiles(files []ruleFile, outside map[string]Scope) (*Set, error) {
	var errs []error
	type placed struct {
		rule    *Rule
		idPos   pos
		explPos pos
	}
	var all []placed
	for _, f := range files {
		r, idPos, explPos, err := parseRule(f.name, f.data)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		all = append(all, placed{r, idPos, explPos})
	}
	seen := map[string]placed{}
	scopes := map[string]Scope{}
	for id, sc := range outside {
		scopes[id] = sc
	}
	for _, p := range all {
		if first, ok := seen[p.rule.ID]; ok {
			errs = append(errs, posErr(p.rule.File, p.idPos, "duplicate id %q (first in %s:%d:%d)",
				p.rule.ID, first.rule.File, first.idPos.line, first.idPos.col))
			continue
		}
		seen[p.rule.ID] = p
		scopes[p.rule.ID] = p.rule.Scope
	}
	set := &Set{}
	for _, p := range all {
		if seen[p.rule.ID].rule != p.rule {
			continue
		}
		if t := p.rule.Explains; t != "" {
			sc, ok := scopes[t]
			switch {
			case !ok:
				errs = append(errs, posErr(p.rule.File, p.explPos, "explains: unknown rule %q", t))
				continue
			case t == p.rule.ID:
				errs = append(errs, posErr(p.rule.File, p.explPos, "explains: a rule cannot explain itself"))
				continue
			case sc == ScopeRun:
				errs = append(errs, posErr(p.rule.File, p.explPos, "explains: %q is a run-scope rule; only device and command findings can be explained", t))
				continue
			}
		}
		set.rules = append(set.rules, p.rule)
	}
	sort.Slice(set.rules, func(i, j int) bool { return set.rules[i].ID < set.rules[j].ID })
	if len(errs) == 0 {
		if cyc := set.cycle(); cyc != nil {
			p := seen[cyc[0]]
			errs = append(errs, posErr(p.rule.File, p.explPos, "explains: cycle %s", strings.Join(cyc, " -> ")))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return set, nil
}

// cycle returns the ids of an `explains` cycle, first id repeated last, or nil.
func (s *Set) cycle() []string {
	for _, r := range s.rules {
		path := []string{r.ID}
		for cur := s.Rule(r.Explains); cur != nil; cur = s.Rule(cur.Explains) {
			path = append(path, cur.ID)
			if cur.ID == r.ID {
				return path
			}
			if len(path) > len(s.rules)+1 {
				break // a cycle not through r; found from one of its members
			}
		}
	}
	return nil
}
