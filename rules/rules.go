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
//	stages: [queue_freeze]          # the stages of blocked time its finding explains (absent: all)
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
	"io"
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
	// Explained is what those findings cover: their devices and the
	// processes they name.
	Explained facts.Explained
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
	// Stages are the stages (internal/stage) of the blocked time of the
	// processes and devices its finding is about that the finding
	// explains; nil when the rule declares none: then it explains all
	// their time.
	Stages []string

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
// each other and the built-in rules, and replace built-in rules: explains
// targets and cycles are checked on the built-in rules with these merged
// over them (Default().Merge of the result). Errors name the files as
// dir/name. The same holds for LoadDir, LoadPaths and LoadFiles.
func Load(fsys fs.FS, dir string) (*Set, error) {
	return load(fsys, dir, dir, builtins())
}

// LoadDir loads every *.yaml and *.yml file of a directory, as for
// `diagnose --rules DIR`; merge it over Default to replace built-ins.
func LoadDir(dir string) (*Set, error) {
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("rules directory: %w", err)
	}
	return load(os.DirFS(dir), ".", dir, builtins())
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
		data, err := readRuleFile(p, func() (io.ReadCloser, error) { return os.Open(p) })
		if err != nil {
			errs = append(errs, err)
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
	set, err := compileFiles(files, builtins())
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
		data, err := readRuleFile(p, func() (io.ReadCloser, error) { return os.Open(p) })
		if err != nil {
			errs = append(errs, err)
			continue
		}
		files = append(files, ruleFile{name: p, data: data})
	}
	set, err := compileFiles(files, builtins())
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

// load compiles the rule files of dir in fsys, naming them prefix/name in
// errors, as rules that go over base (nil for the built-in rules).
func load(fsys fs.FS, dir, prefix string, base *Set) (*Set, error) {
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
		data, err := readRuleFile(name, func() (io.ReadCloser, error) { return fsys.Open(p) })
		if err != nil {
			errs = append(errs, err)
			continue
		}
		files = append(files, ruleFile{name: name, data: data})
	}
	set, err := compileFiles(files, base)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return set, nil
}

// builtins returns the built-in rules, which other rule files may name in
// `explains` and replace; nil if they do not load (a test of this package
// fails then).
func builtins() *Set {
	set, err := Default()
	if err != nil {
		return nil
	}
	return set
}

// MaxFileSize is the largest rule file: some ten times the largest
// built-in rule. A larger file, or an endless one (/dev/zero), is an error
// naming where it passed the limit; no more than that is read.
const MaxFileSize = 64 << 10

// readRuleFile reads a rule file of at most MaxFileSize bytes, whatever
// kind of file it is: errors name the file.
func readRuleFile(name string, open func() (io.ReadCloser, error)) ([]byte, error) {
	f, err := open()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, unwrapPath(err))
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, unwrapPath(err))
	}
	if len(data) > MaxFileSize {
		return nil, posErr(name, textPos(data[:MaxFileSize]), "the file goes on past %d bytes (%d KiB), the most a rule file may have", MaxFileSize, MaxFileSize>>10)
	}
	return data, nil
}

// textPos is the line and column (in runes) just after text.
func textPos(text []byte) pos {
	line, col := 1, 1
	for _, r := range string(text) {
		if r == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	return pos{line, col}
}

// compileFiles parses and compiles the files, then checks what only the set
// as a whole can show: duplicate ids among the files, and, on the set the
// files make over base (they replace its rules of the same ids and add the
// others, as Set.Merge does), `explains` targets and cycles.
func compileFiles(files []ruleFile, base *Set) (*Set, error) {
	var errs []error
	type placed struct {
		rule                  *Rule
		idPos, explPos, scPos pos
	}
	var all []placed
	for _, f := range files {
		r, idPos, explPos, err := parseRule(f.name, f.data)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		all = append(all, placed{r, idPos, explPos, r.pos["scope"]})
	}
	seen := map[string]placed{}
	var own []placed // the files' rules, without duplicates
	for _, p := range all {
		if first, ok := seen[p.rule.ID]; ok {
			errs = append(errs, posErr(p.rule.File, p.idPos, "duplicate id %q (first in %s:%d:%d)",
				p.rule.ID, first.rule.File, first.idPos.line, first.idPos.col))
			continue
		}
		seen[p.rule.ID] = p
		own = append(own, p)
	}
	merged := map[string]*Rule{}
	for _, r := range base.Rules() {
		merged[r.ID] = r
	}
	mine := map[*Rule]placed{}
	for _, p := range own {
		merged[p.rule.ID] = p.rule
		mine[p.rule] = p
	}
	ids := make([]string, 0, len(merged))
	for id := range merged {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	bad := map[*Rule]bool{}
	for _, id := range ids {
		r := merged[id]
		t := r.Explains
		if t == "" {
			continue
		}
		p, isMine := mine[r]
		target, ok := merged[t]
		switch {
		case !ok && isMine:
			errs = append(errs, posErr(r.File, p.explPos, "explains: unknown rule %q", t))
		case t == r.ID && isMine:
			errs = append(errs, posErr(r.File, p.explPos, "explains: a rule cannot explain itself"))
		case ok && target.Scope == ScopeRun && isMine:
			errs = append(errs, posErr(r.File, p.explPos, "explains: %q is a run-scope rule; only device and command findings can be explained", t))
		case ok && target.Scope == ScopeRun:
			if tp, ok := mine[target]; ok { // a file made the target of a built-in rule run-scope
				errs = append(errs, posErr(target.File, tp.scPos, "scope: %q replaces a rule that the built-in rule %q explains; only device and command findings can be explained", ScopeRun, r.ID))
				bad[target] = true
			}
		default:
			continue
		}
		bad[r] = true
	}
	if len(errs) == 0 {
		if cyc := cycle(merged, ids); cyc != nil {
			// A file's rule is on it (the built-in rules have no cycle):
			// the error is at the first one's explains.
			for _, id := range cyc {
				if p, ok := mine[merged[id]]; ok {
					errs = append(errs, posErr(p.rule.File, p.explPos, "explains: cycle %s", strings.Join(cyc, " -> ")))
					break
				}
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	set := &Set{}
	for _, p := range own {
		set.rules = append(set.rules, p.rule)
	}
	sort.Slice(set.rules, func(i, j int) bool { return set.rules[i].ID < set.rules[j].ID })
	return set, nil
}

// cycle returns the ids of an `explains` cycle of the rules, starting at
// its smallest id and repeating it last, or nil. Each rule explains at most
// one other: the rules are followed once each.
func cycle(rules map[string]*Rule, ids []string) []string {
	const (
		unseen = iota
		onPath
		done
	)
	state := map[string]int{}
	for _, id := range ids {
		var path []string
		cur := id
		for cur != "" && state[cur] == unseen {
			state[cur] = onPath
			path = append(path, cur)
			r := rules[cur]
			if r == nil {
				break
			}
			cur = r.Explains
		}
		if cur != "" && state[cur] == onPath { // back on this path: a cycle from cur
			i := slices.Index(path, cur)
			cyc := slices.Clone(path[i:])
			k := slices.Index(cyc, slices.Min(cyc))
			cyc = append(cyc[k:], cyc[:k]...)
			return append(cyc, cyc[0])
		}
		for _, x := range path {
			state[x] = done
		}
	}
	return nil
}
