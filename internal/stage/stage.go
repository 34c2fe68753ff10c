// Package stage names where the time a storage system call spent asleep
// went: one stage of a fixed vocabulary (Vocabulary) per sleep, from the
// kernel stack the thread slept in and the call it slept in, through a
// table that is data: stages.yaml, embedded (Default), which users extend
// with files of the same format (Load, the --stages option). docs/stages.md
// documents the vocabulary and the format.
package stage

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
)

// The stages, the one vocabulary of the reports and rules.
const (
	QueueFreeze    = "queue_freeze"    // waiting to enter a frozen (or dying) request queue
	TagWait        = "tag_wait"        // waiting for a free driver tag or scheduler request
	WBT            = "wbt"             // writeback throttling (rq-qos wbt)
	CgroupThrottle = "cgroup_throttle" // a cgroup I/O limit (io.latency, blk-throttle)
	IOCost         = "iocost"          // the iocost controller's budget
	DirtyThrottle  = "dirty_throttle"  // paused in balance_dirty_pages: too many dirty pages
	Journal        = "journal"         // a filesystem journal commit or its space, a buffer under commit
	WritebackWait  = "writeback_wait"  // a page under someone else's writeback, stable pages
	Device         = "device"          // the call's own I/O: the device serving it
	Reclaim        = "reclaim"         // direct reclaim or compaction: memory pressure
	Lock           = "lock"            // inode and filesystem locks
	Runqueue       = "runqueue"        // runnable but not running: after a wake-up, or preempted
	Other          = "other"           // a stack the table does not know (reported with its top frames)
)

// Vocabulary lists every stage, in the order reports list them when they
// tie.
var Vocabulary = []string{QueueFreeze, TagWait, WBT, CgroupThrottle, IOCost, DirtyThrottle, Journal,
	WritebackWait, Device, Reclaim, Lock, Runqueue, Other}

// Confidences of a classification.
const (
	High      = "high"      // a rule's frames matched
	Low       = "low"       // a rule of low confidence matched (any io_schedule: device)
	Truncated = "truncated" // the walk lost its inner frames: the innermost left decided
)

// Result is the stage of one stack.
type Result struct {
	Stage string
	// Frame is the frame that decided the stage; for Other, the first
	// frames the table does not know (up to 3, innermost first, joined by
	// " <- "), "truncated: FRAME" for a cut walk, "" for no stack.
	Frame      string
	Confidence string // High, Low or Truncated; "" for Other
}

// Table maps stacks to stages. Make one with Default, Parse or Load.
type Table struct {
	ignore    []string        // frame name prefixes dropped before matching
	truncated map[string]bool // innermost frames of a complete walk
	generic   map[string]bool // wait primitives that never decide a stage alone
	rules     []rule
}

type rule struct {
	stage, confidence string
	frames            map[string]bool
	with, without     map[string]bool
	calls             map[string]bool
	innermost         bool
}

// file is a table file on the wire.
type file struct {
	Version   int    `yaml:"version"`
	Ignore    ignore `yaml:"ignore"`
	Truncated []string
	Generic   []string   `yaml:"generic"`
	Rules     []fileRule `yaml:"rules"`
}

type ignore struct {
	Prefixes []string `yaml:"prefixes"`
}

type fileRule struct {
	Stage      string   `yaml:"stage"`
	Frames     []string `yaml:"frames"`
	With       []string `yaml:"with"`
	Without    []string `yaml:"without"`
	Calls      []string `yaml:"calls"`
	Innermost  bool     `yaml:"innermost"`
	Confidence string   `yaml:"confidence"`
	line       int
}

func (r *fileRule) UnmarshalYAML(n *yaml.Node) error {
	type plain fileRule
	var p plain
	if err := n.Decode(&p); err != nil {
		return err
	}
	*r = fileRule(p)
	r.line = n.Line
	return nil
}

// UnmarshalYAML takes truncated_unless_innermost under its long name.
func (f *file) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: a stage table is a mapping (version, ignore, truncated_unless_innermost, generic, rules)", n.Line)
	}
	known := []string{"version", "ignore", "truncated_unless_innermost", "generic", "rules"}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		var err error
		switch k.Value {
		case "version":
			err = v.Decode(&f.Version)
		case "ignore":
			err = decodeStrict(v, &f.Ignore)
		case "truncated_unless_innermost":
			err = v.Decode(&f.Truncated)
		case "generic":
			err = v.Decode(&f.Generic)
		case "rules":
			if v.Kind != yaml.SequenceNode {
				return fmt.Errorf("line %d: rules: want a list of rules", v.Line)
			}
			for _, rn := range v.Content {
				var r fileRule
				if err := decodeRule(rn, &r); err != nil {
					return err
				}
				f.Rules = append(f.Rules, r)
			}
		default:
			return fmt.Errorf("line %d: unknown key %q (known: %s)", k.Line, k.Value, strings.Join(known, ", "))
		}
		if err != nil {
			return fmt.Errorf("line %d: %s: %w", v.Line, k.Value, err)
		}
	}
	return nil
}

var ruleKeys = []string{"stage", "frames", "with", "without", "calls", "innermost", "confidence"}

// decodeRule decodes one rule, refusing keys it does not know.
func decodeRule(n *yaml.Node, r *fileRule) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: a rule is a mapping (%s)", n.Line, strings.Join(ruleKeys, ", "))
	}
	for i := 0; i < len(n.Content); i += 2 {
		if k := n.Content[i]; !slices.Contains(ruleKeys, k.Value) {
			return fmt.Errorf("line %d: unknown rule key %q (known: %s)", k.Line, k.Value, strings.Join(ruleKeys, ", "))
		}
	}
	return r.UnmarshalYAML(n)
}

func decodeStrict(n *yaml.Node, v any) error {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	if err := enc.Encode(n); err != nil {
		return err
	}
	dec := yaml.NewDecoder(&b)
	dec.KnownFields(true)
	return dec.Decode(v)
}

//go:embed stages.yaml
var builtin []byte

// Default returns the built-in table (stages.yaml).
var Default = sync.OnceValue(func() *Table {
	t, err := parse("stages.yaml", builtin)
	if err != nil {
		panic("stage: the built-in table: " + err.Error())
	}
	return t
})

// Parse reads a user's table file and returns the built-in table extended
// with it (see Load); name is the file's name in errors.
func Parse(name string, data []byte) (*Table, error) {
	u, err := parse(name, data)
	if err != nil {
		return nil, err
	}
	return Default().extend(u), nil
}

// parse reads a table file as it is.
func parse(name string, data []byte) (*Table, error) {
	var f file
	if err := yaml.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("%s: version %d: want version: 1", name, f.Version)
	}
	t := &Table{ignore: f.Ignore.Prefixes, truncated: set(f.Truncated), generic: set(f.Generic)}
	for i, fr := range f.Rules {
		at := fmt.Sprintf("%s:%d: rule %d", name, fr.line, i+1)
		if !slices.Contains(Vocabulary, fr.Stage) {
			return nil, fmt.Errorf("%s: stage %q is none of %s", at, fr.Stage, strings.Join(Vocabulary, ", "))
		}
		if len(fr.Frames) == 0 {
			return nil, fmt.Errorf("%s (%s): no frames", at, fr.Stage)
		}
		conf := fr.Confidence
		switch conf {
		case "":
			conf = High
		case High, Low:
		default:
			return nil, fmt.Errorf("%s (%s): confidence %q: want %s or %s", at, fr.Stage, conf, High, Low)
		}
		t.rules = append(t.rules, rule{stage: fr.Stage, confidence: conf, frames: set(fr.Frames),
			with: set(fr.With), without: set(fr.Without), calls: set(fr.Calls), innermost: fr.Innermost})
	}
	return t, nil
}

func set(names []string) map[string]bool {
	if len(names) == 0 {
		return nil
	}
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// Load returns the built-in table extended with the table files at paths
// (files, or directories of *.yaml and *.yml files), in order: each file's
// rules are tried before those of the files before it and of the built-in
// table, and its ignore prefixes, truncated_unless_innermost and generic
// frames are added to theirs.
func Load(paths ...string) (*Table, error) {
	t := Default()
	for _, p := range paths {
		files := []string{p}
		if fi, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("stage table %s: %w", p, errors.Unwrap(err))
		} else if fi.IsDir() {
			files = nil
			for _, pat := range []string{"*.yaml", "*.yml"} {
				m, _ := filepath.Glob(filepath.Join(p, pat))
				files = append(files, m...)
			}
			slices.Sort(files)
			if len(files) == 0 {
				return nil, fmt.Errorf("stage table %s: no *.yaml or *.yml file in the directory", p)
			}
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("stage table %s: %w", f, errors.Unwrap(err))
			}
			u, err := parse(f, data)
			if err != nil {
				return nil, err
			}
			t = t.extend(u)
		}
	}
	return t, nil
}

// extend returns t with u's rules first and u's frame lists added.
func (t *Table) extend(u *Table) *Table {
	out := &Table{
		ignore:    append(slices.Clone(u.ignore), t.ignore...),
		truncated: union(t.truncated, u.truncated),
		generic:   union(t.generic, u.generic),
		rules:     append(slices.Clone(u.rules), t.rules...),
	}
	return out
}

func union(a, b map[string]bool) map[string]bool {
	out := make(map[string]bool, len(a)+len(b))
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

var (
	offsetRE = regexp.MustCompile(`\+0x[0-9a-f]+(/0x[0-9a-f]+)?$|\+\d+$`)
	suffixRE = regexp.MustCompile(`\.(isra|constprop|part|cold|llvm)(\.\d+)*`)
)

// Normalize returns the frames a table matches: offsets and compiler
// suffixes stripped, ignored frames dropped, repeats collapsed.
func (t *Table) Normalize(frames []string) []string {
	out := make([]string, 0, len(frames))
	for _, f := range frames {
		f = strings.TrimSpace(f)
		if i := strings.IndexAny(f, " \t"); i >= 0 {
			f = f[:i]
		}
		if f == "" || t.ignored(f) {
			continue
		}
		f = offsetRE.ReplaceAllString(f, "")
		f = suffixRE.ReplaceAllString(f, "")
		if len(out) > 0 && out[len(out)-1] == f {
			continue
		}
		out = append(out, f)
	}
	return out
}

func (t *Table) ignored(f string) bool {
	for _, p := range t.ignore {
		if strings.HasPrefix(f, p) {
			return true
		}
	}
	return false
}

// Classify names the stage of a sleep from its kernel stack (frame names,
// innermost first, offsets allowed) and the system call it slept in ("" if
// unknown).
func (t *Table) Classify(frames []string, call string) Result {
	fr := t.Normalize(frames)
	if len(fr) == 0 {
		return Result{Stage: Other}
	}
	if !t.truncated[fr[0]] {
		// A cut walk: only the innermost frame (where the thread slept, or
		// a function it slept under) can tell.
		for _, r := range t.rules {
			if r.frames[fr[0]] && r.with == nil && r.calls == nil && !r.innermost {
				return Result{Stage: r.stage, Frame: fr[0], Confidence: Truncated}
			}
		}
		return Result{Stage: Other, Frame: "truncated: " + fr[0]}
	}
	first := ""
	for _, f := range fr {
		if !t.generic[f] {
			first = f
			break
		}
	}
	for _, r := range t.rules {
		hit := ""
		for _, f := range fr {
			if r.frames[f] {
				hit = f
				break
			}
		}
		if hit == "" || r.innermost && hit != first {
			continue
		}
		if (r.with != nil || r.calls != nil) && !r.calls[call] && !anyIn(fr, r.with) {
			continue
		}
		if anyIn(fr, r.without) {
			continue
		}
		return Result{Stage: r.stage, Frame: hit, Confidence: r.confidence}
	}
	var top []string
	for _, f := range fr {
		if !t.generic[f] {
			top = append(top, f)
			if len(top) == 3 {
				break
			}
		}
	}
	return Result{Stage: Other, Frame: strings.Join(top, " <- ")}
}

func anyIn(frames []string, m map[string]bool) bool {
	for _, f := range frames {
		if m[f] {
			return true
		}
	}
	return false
}
