package rules

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"
	"gopkg.in/yaml.v3"

	"github.com/whyslow/whyslow/internal/escape"
	"github.com/whyslow/whyslow/internal/facts"
	"github.com/whyslow/whyslow/internal/stage"
)

// Error is a problem in a rule file, at a 1-based line and column.
type Error struct {
	File         string
	Line, Column int
	Msg          string
}

func (e *Error) Error() string { return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Column, e.Msg) }

type pos struct{ line, col int }

func posErr(file string, p pos, format string, a ...any) error {
	return &Error{File: file, Line: max(p.line, 1), Column: max(p.col, 1), Msg: fmt.Sprintf(format, a...)}
}

func nodePos(n *yaml.Node) pos { return pos{n.Line, n.Column} }

var (
	idRE       = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
	evidenceRE = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
	quotedRE   = regexp.MustCompile(`"([^"]+)"`)
	tmplErrRE  = regexp.MustCompile(`(?s)^template: [^:]*:(\d+)(?::(\d+))?: (.*)$`)
)

// source maps rune offsets inside a YAML scalar back to the file.
type source struct {
	runes     []rune
	lineStart []int // rune index where each line starts; line 1 is index 0
}

func newSource(data []byte) *source {
	s := &source{runes: []rune(string(data)), lineStart: []int{0}}
	for i, r := range s.runes {
		if r == '\n' {
			s.lineStart = append(s.lineStart, i+1)
		}
	}
	return s
}

// index returns the rune index of a 1-based line and column, clamped.
func (s *source) index(line, col int) int {
	if line < 1 {
		return 0
	}
	if line > len(s.lineStart) {
		return len(s.runes)
	}
	return min(s.lineStart[line-1]+max(col-1, 0), len(s.runes))
}

// pos returns the 1-based line and column of a rune index.
func (s *source) pos(i int) pos {
	line := 1
	for l, start := range s.lineStart {
		if start <= i {
			line = l + 1
		}
	}
	return pos{line, i - s.lineStart[line-1] + 1}
}

// scalarPos returns where in the file the rune at offset off of a scalar's
// value is. Plain, quoted and block scalars are walked rune by rune against
// the file, skipping what YAML drops (indentation, line folding, quotes,
// escapes); when they cannot be matched the scalar's own position is used.
func (s *source) scalarPos(n *yaml.Node, off int) pos {
	start := s.index(n.Line, n.Column)
	switch n.Style {
	case yaml.LiteralStyle, yaml.FoldedStyle:
		start = s.index(n.Line+1, 1) // content starts below the | or > header
	case yaml.DoubleQuotedStyle, yaml.SingleQuotedStyle:
		start++
	}
	value := []rune(n.Value)
	off = min(max(off, 0), len(value))
	fallback := nodePos(n)
	skippable := func(r rune) bool {
		return r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\\' || r == '"' || r == '\''
	}
	i := start
	for k := 0; k <= off; k++ {
		if k == len(value) {
			break
		}
		v := value[k]
		for i < len(s.runes) && s.runes[i] != v && !(v == ' ' && s.runes[i] == '\n') {
			if !skippable(s.runes[i]) {
				return fallback
			}
			i++
		}
		if i >= len(s.runes) {
			return fallback
		}
		if k == off {
			return s.pos(i)
		}
		i++
	}
	return s.pos(i) // just after the last rune
}

// lineColOffset returns the rune offset of a 1-based line and 0-based rune
// column within text.
func lineColOffset(text string, line, col int) int {
	off, l := 0, 1
	for _, r := range text {
		if l >= line {
			break
		}
		off++
		if r == '\n' {
			l++
		}
	}
	return off + max(col, 0)
}

// parsed is a rule file's fields with the nodes they came from.
type parsed struct {
	file   string
	src    *source
	root   *yaml.Node
	nodes  map[string]*yaml.Node // key -> value node
	keys   map[string]*yaml.Node // key -> key node
	evNode []*yaml.Node          // evidence value nodes, in order
	evName []string
	// factItems are the items of needs and optional (needs.go).
	factItems []factItem
	// stages are the items of stages.
	stages []string
	errs   []error
}

var knownKeys = []string{"id", "summary", "title", "step", "severity", "scope", "when", "score", "explain", "remedy",
	"evidence", "processes", "trigger", "explains", "precision", "needs", "optional", "stages"}

func (p *parsed) errorf(at pos, format string, a ...any) {
	p.errs = append(p.errs, posErr(p.file, at, format, a...))
}

// str returns a scalar field's value, "" when absent or null.
func (p *parsed) str(key string) string {
	n := p.nodes[key]
	if n == nil {
		return ""
	}
	return n.Value
}

// parseRule parses, validates and compiles one rule file. It returns the
// positions of the id and explains values for errors about the whole set.
func parseRule(name string, data []byte) (r *Rule, idPos, explPos pos, err error) {
	if i := invalidUTF8(data); i >= 0 {
		return nil, pos{}, pos{}, posErr(name, textPos(data[:i]), "not UTF-8 text: byte 0x%02x", data[i])
	}
	if i, r := controlChar(data); i >= 0 {
		return nil, pos{}, pos{}, posErr(name, textPos(data[:i]), "control character %U: YAML allows none but tab, line feed and carriage return (in a double-quoted string, write it as an escape such as \\x01)", r)
	}
	p := &parsed{file: name, src: newSource(data), nodes: map[string]*yaml.Node{}, keys: map[string]*yaml.Node{}}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, pos{}, pos{}, posErr(name, pos{1, 1}, "empty rule file")
		}
		return nil, pos{}, pos{}, p.yamlError(err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, pos{}, pos{}, posErr(name, nodePos(&extra), "more than one YAML document; a rule file holds one rule")
	} else if !errors.Is(err, io.EOF) {
		return nil, pos{}, pos{}, p.yamlError(err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, pos{}, pos{}, posErr(name, pos{1, 1}, "empty rule file")
	}
	p.root = doc.Content[0]
	if p.root.Kind != yaml.MappingNode {
		return nil, pos{}, pos{}, posErr(name, nodePos(p.root), "a rule is a mapping of keys (id, title, when, ...)")
	}
	p.fields()
	r = p.rule()
	switch r.Scope {
	case ScopeDevice, ScopeCommand, ScopeRun: // the environment is known
		p.compile(r)
	}
	if len(p.errs) > 0 {
		slices.SortStableFunc(p.errs, func(a, b error) int {
			var ea, eb *Error
			if !errors.As(a, &ea) || !errors.As(b, &eb) {
				return 0
			}
			return cmp.Or(cmp.Compare(ea.Line, eb.Line), cmp.Compare(ea.Column, eb.Column))
		})
		return nil, pos{}, pos{}, errors.Join(p.errs...)
	}
	if n := p.nodes["id"]; n != nil {
		idPos = nodePos(n)
	}
	if n := p.nodes["explains"]; n != nil {
		explPos = nodePos(n)
	}
	return r, idPos, explPos, nil
}

// invalidUTF8 returns the index of the first byte that is not UTF-8, or -1.
func invalidUTF8(data []byte) int {
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && size == 1 {
			return i
		}
		i += size
	}
	return -1
}

// controlChar returns the index and rune of the first character YAML does
// not allow in a file (C0 and C1 controls but tab, line feed, carriage
// return and next line; DEL; surrogates and U+FFFE, U+FFFF), or -1. yaml.v3
// reports one without its place.
func controlChar(data []byte) (int, rune) {
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		ok := r == '\t' || r == '\n' || r == '\r' || r >= 0x20 && r <= 0x7e || r == 0x85 ||
			r >= 0xa0 && r <= 0xd7ff || r >= 0xe000 && r <= 0xfffd || r >= 0x10000 && r <= 0x10ffff
		if !ok {
			return i, r
		}
		i += size
	}
	return -1, 0
}

// Bounds of an expression (when, score, evidence, processes, precision),
// checked by a scan before expr parses it: expr's parser recurses once per
// level of nesting.
const (
	// MaxExprLength is the longest expression, in bytes: the longest
	// built-in one is some 400.
	MaxExprLength = 4096
	// MaxExprDepth is the deepest nesting: brackets ((, [, {) and prefix
	// operators (!, not, unary - and +) applied one to the other.
	MaxExprDepth = 64
)

// exprBounds scans an expression for MaxExprLength and MaxExprDepth. It
// returns the offset, in runes, where the expression passes one, and
// why; ok when it passes neither.
func exprBounds(src string) (off int, msg string, ok bool) {
	if len(src) > MaxExprLength {
		return utf8.RuneCountInString(src[:MaxExprLength]), fmt.Sprintf("longer than %d bytes (%d), the most an expression may have", MaxExprLength, len(src)), false
	}
	rs := []rune(src)
	var stack []int       // depth at each open bracket
	depth, prefix := 0, 0 // brackets open; prefix operators in a row
	operand := true       // the next token starts an operand (a - or + there is unary)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case r == '"' || r == '\'' || r == '`': // a string: skip it
			for i++; i < len(rs) && rs[i] != r; i++ {
				if rs[i] == '\\' && r != '`' {
					i++
				}
			}
			operand, prefix = false, 0
		case r == '/' && i+1 < len(rs) && rs[i+1] == '/': // a comment to the end of the line
			for i < len(rs) && rs[i] != '\n' {
				i++
			}
		case r == '/' && i+1 < len(rs) && rs[i+1] == '*':
			for i += 2; i+1 < len(rs) && !(rs[i] == '*' && rs[i+1] == '/'); i++ {
			}
			i++
		case r == '(' || r == '[' || r == '{':
			stack = append(stack, depth)
			depth += prefix + 1
			prefix, operand = 0, true
		case r == ')' || r == ']' || r == '}':
			if n := len(stack); n > 0 {
				depth, stack = stack[n-1], stack[:n-1]
			}
			prefix, operand = 0, false
		case r == '!' && (i+1 == len(rs) || rs[i+1] != '='),
			operand && (r == '-' || r == '+'),
			operand && r == 'n' && strings.HasPrefix(string(rs[i:min(i+4, len(rs))]), "not") && (i+3 == len(rs) || !isIdentRune(rs[i+3])) && (i == 0 || !isIdentRune(rs[i-1])):
			prefix++
			if r == 'n' {
				i += 2
			}
			operand = true
		case unicode.IsSpace(r):
		case isIdentRune(r) || r == '.':
			for i+1 < len(rs) && isIdentRune(rs[i+1]) {
				i++
			}
			prefix, operand = 0, false
		default: // an operator or a separator: an operand follows
			prefix, operand = 0, true
		}
		if d := depth + prefix; d > MaxExprDepth {
			return i, fmt.Sprintf("nested more than %d deep (brackets and operators such as !), the most an expression may be", MaxExprDepth), false
		}
	}
	return 0, "", true
}

func isIdentRune(r rune) bool {
	return r == '_' || r == '$' || unicode.IsLetter(r) || unicode.IsDigit(r)
}

// yamlError turns a yaml.v3 error into an Error. yaml.v3 reports only a
// line; the column is the first non-blank one of that line.
func (p *parsed) yamlError(err error) error {
	msg := err.Error()
	if te, ok := err.(*yaml.TypeError); ok && len(te.Errors) > 0 {
		msg = te.Errors[0]
	}
	line := 1
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	col := 1
	if line <= len(p.src.lineStart) {
		for i := p.src.lineStart[line-1]; i < len(p.src.runes) && (p.src.runes[i] == ' ' || p.src.runes[i] == '\t'); i++ {
			col++
		}
	}
	return posErr(p.file, pos{line, col}, "yaml: %s", msg)
}

// fields collects the keys of the mapping, rejecting unknown and repeated ones.
func (p *parsed) fields() {
	c := p.root.Content
	for i := 0; i+1 < len(c); i += 2 {
		k, v := c[i], c[i+1]
		if k.Kind != yaml.ScalarNode {
			p.errorf(nodePos(k), "keys must be plain names")
			continue
		}
		if prev, ok := p.keys[k.Value]; ok {
			p.errorf(nodePos(k), "key %q repeated (first at line %d)", k.Value, prev.Line)
			continue
		}
		known := false
		for _, kk := range knownKeys {
			known = known || kk == k.Value
		}
		if !known {
			p.errorf(nodePos(k), "unknown key %q (known: %s)", k.Value, strings.Join(knownKeys, ", "))
			continue
		}
		p.keys[k.Value] = k
		if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
			continue // "key:" with no value is the same as no key
		}
		if v.Kind == yaml.AliasNode {
			p.errorf(nodePos(v), "%s: aliases are not supported", k.Value)
			continue
		}
		if k.Value == "evidence" {
			p.evidence(v)
			p.nodes[k.Value] = v
			continue
		}
		if k.Value == "needs" || k.Value == "optional" {
			p.factList(k.Value, v)
			continue
		}
		if k.Value == "stages" {
			p.stageList(v)
			p.nodes[k.Value] = v
			continue
		}
		if v.Kind != yaml.ScalarNode {
			p.errorf(nodePos(v), "%s: must be a single value, not a list or mapping", k.Value)
			continue
		}
		p.nodes[k.Value] = v
	}
}

func (p *parsed) evidence(v *yaml.Node) {
	if v.Kind != yaml.SequenceNode {
		p.errorf(nodePos(v), "evidence: must be a list of `- name: expression`")
		return
	}
	seen := map[string]bool{}
	for _, item := range v.Content {
		if item.Kind != yaml.MappingNode || len(item.Content) != 2 {
			p.errorf(nodePos(item), "evidence: each item must be one `name: expression`")
			continue
		}
		k, e := item.Content[0], item.Content[1]
		switch {
		case !evidenceRE.MatchString(k.Value):
			p.errorf(nodePos(k), "evidence: name %q must be lowercase letters, digits and _", k.Value)
		case seen[k.Value]:
			p.errorf(nodePos(k), "evidence: name %q repeated", k.Value)
		case e.Kind != yaml.ScalarNode || e.Tag == "!!null":
			p.errorf(nodePos(e), "evidence: %s: must be an expression", k.Value)
		default:
			seen[k.Value] = true
			p.evName = append(p.evName, k.Value)
			p.evNode = append(p.evNode, e)
		}
	}
}

// stageList parses stages: a list of stages of the vocabulary, at least
// one, each once.
func (p *parsed) stageList(v *yaml.Node) {
	if v.Kind != yaml.SequenceNode || len(v.Content) == 0 {
		p.errorf(nodePos(v), "stages: must be a list of stages, e.g. [journal] (%s)", strings.Join(stage.Vocabulary, ", "))
		return
	}
	p.stages = []string{}
	for _, item := range v.Content {
		switch {
		case item.Kind != yaml.ScalarNode || item.Tag == "!!null":
			p.errorf(nodePos(item), "stages: each item must be a stage, e.g. journal")
		case !slices.Contains(stage.Vocabulary, item.Value):
			p.errorf(nodePos(item), "stages: unknown stage %q (stages are %s)", item.Value, strings.Join(stage.Vocabulary, ", "))
		case slices.Contains(p.stages, item.Value):
			p.errorf(nodePos(item), "stages: %s repeated", item.Value)
		default:
			p.stages = append(p.stages, item.Value)
		}
	}
}

// rule checks the fields' values and fills a Rule without compiling.
func (p *parsed) rule() *Rule {
	r := &Rule{File: p.file}
	for _, k := range []string{"id", "title", "severity", "scope", "when"} {
		if p.nodes[k] == nil && p.keys[k] == nil {
			p.errorf(nodePos(p.root), "missing %s", k)
		} else if p.nodes[k] == nil {
			p.errorf(nodePos(p.keys[k]), "%s: empty", k)
		}
	}
	if n := p.nodes["id"]; n != nil {
		r.ID = n.Value
		if !idRE.MatchString(r.ID) {
			p.errorf(nodePos(n), "id: %q must be lowercase letters, digits and -", r.ID)
		}
	}
	r.Title = p.str("title")
	r.Summary = strings.Join(strings.Fields(p.str("summary")), " ")
	if n := p.nodes["severity"]; n != nil {
		r.Severity = Severity(n.Value)
		switch r.Severity {
		case Critical, Warning, Info:
		default:
			p.errorf(nodePos(n), "severity: %q is not critical, warning or info", n.Value)
		}
	}
	if n := p.nodes["scope"]; n != nil {
		r.Scope = Scope(n.Value)
		switch r.Scope {
		case ScopeDevice, ScopeCommand, ScopeRun:
		default:
			p.errorf(nodePos(n), "scope: %q is not device, command or run", n.Value)
		}
	}
	if n := p.nodes["trigger"]; n != nil {
		switch n.Value {
		case "true":
			r.Trigger = true
		case "false":
		default:
			p.errorf(nodePos(n), "trigger: %q is not true or false", n.Value)
		}
		if r.Trigger && r.Scope != ScopeCommand && r.Scope != "" {
			p.errorf(nodePos(n), "trigger: only command-scope rules name a trigger")
		}
	}
	if n := p.nodes["explains"]; n != nil {
		r.Explains = n.Value
		if r.Scope == ScopeRun {
			p.errorf(nodePos(n), "explains: run-scope findings have no device to explain a finding on")
		}
	}
	if n := p.nodes["stages"]; n != nil {
		r.Stages = p.stages
		if r.Scope == ScopeRun {
			p.errorf(nodePos(n), "stages: run-scope findings explain no process's time to other rules")
		}
	}
	return r
}

// helperFuncs are the functions expressions may call besides expr's builtins.
var helperFuncs = []expr.Option{
	expr.Function("ms", func(a ...any) (any, error) {
		return float64(a[0].(time.Duration)) / float64(time.Millisecond), nil
	}, new(func(time.Duration) float64)),
	expr.Function("pct", func(a ...any) (any, error) {
		return 100 * ratio(toFloat(a[0]), toFloat(a[1])), nil
	}, new(func(float64, float64) float64)),
	expr.Function("ratio", func(a ...any) (any, error) {
		return ratio(toFloat(a[0]), toFloat(a[1])), nil
	}, new(func(float64, float64) float64)),
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// envFor returns the typed environment of a scope.
func envFor(s Scope) any {
	switch s {
	case ScopeCommand:
		return CommandEnv{}
	case ScopeRun:
		return RunEnv{}
	}
	return DeviceEnv{}
}

// compile compiles the expressions and templates of a rule whose fields are valid.
func (p *parsed) compile(r *Rule) {
	env := envFor(r.Scope)
	r.src, r.nodes, r.pos = p.src, map[string]*yaml.Node{}, map[string]pos{}
	for k, n := range p.nodes {
		r.nodes[k], r.pos[k] = n, nodePos(n)
	}
	for i, n := range p.evNode {
		k := "evidence: " + p.evName[i]
		r.nodes[k], r.pos[k] = n, nodePos(n)
	}
	var progs []compiled
	allCompiled := true
	prog := func(field string, n *yaml.Node, extra ...expr.Option) *vm.Program {
		if n == nil {
			return nil
		}
		if off, msg, ok := exprBounds(n.Value); !ok {
			p.errorf(p.src.scalarPos(n, off), "%s: %s", field, msg)
			return nil
		}
		opts := append([]expr.Option{expr.Env(env)}, helperFuncs...)
		pr, err := safeCompile(n.Value, append(opts, extra...)...)
		if err != nil {
			p.exprError(field, n, err)
			allCompiled = false
			return nil
		}
		progs = append(progs, compiled{field, n, pr})
		return pr
	}
	r.when = prog("when", p.nodes["when"], expr.AsBool())
	r.score = prog("score", p.nodes["score"], expr.AsFloat64())
	r.processes = prog("processes", p.nodes["processes"])
	if r.processes != nil {
		if t := r.processes.Node().Type(); t != nil && !processesType(t) {
			p.errorf(nodePos(p.nodes["processes"]), "processes: must give facts.Tasks (e.g. Device.Freezes.Tasks().As(\"freezer\")), not %v", t)
		}
	}
	r.precision = prog("precision", p.nodes["precision"])
	if r.precision != nil {
		if t := r.precision.Node().Type(); t != nil && !precisionType(t) {
			p.errorf(nodePos(p.nodes["precision"]), "precision: must give a string or a list of strings (e.g. Device.Freezes.Sources()), not %v", t)
		}
	}
	for i, n := range p.evNode {
		if pr := prog("evidence: "+p.evName[i], n); pr != nil {
			r.evidence = append(r.evidence, namedProgram{p.evName[i], pr})
		}
	}
	r.title = p.template("title", p.nodes["title"])
	r.step = p.template("step", p.nodes["step"])
	r.explain = p.template("explain", p.nodes["explain"])
	r.remedy = p.template("remedy", p.nodes["remedy"])
	if len(r.evidence) == len(p.evNode) {
		p.dryRun(r) // every evidence name is known: templates can be tried
	}
	if allCompiled {
		p.checkFacts(r, progs) // the facts it reads are known
	}
}

// precisionType reports whether a precision expression's static type can
// give strings.
func precisionType(t reflect.Type) bool {
	switch {
	case t.Kind() == reflect.String, t.Kind() == reflect.Interface:
		return true
	case t.Kind() == reflect.Slice && (t.Elem().Kind() == reflect.String || t.Elem().Kind() == reflect.Interface):
		return true
	}
	return false
}

// processesType reports whether a processes expression's static type can
// hold tasks.
func processesType(t reflect.Type) bool {
	switch {
	case t == reflect.TypeOf(facts.Tasks{}), t == reflect.TypeOf([]facts.Task{}), t == reflect.TypeOf(facts.Task{}):
		return true
	case t.Kind() == reflect.Interface:
		return true
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Interface:
		return true
	}
	return false
}

// safeCompile is expr.Compile that turns a panic into an error.
func safeCompile(src string, opts ...expr.Option) (pr *vm.Program, err error) {
	defer func() {
		if x := recover(); x != nil {
			err = fmt.Errorf("%v", x)
		}
	}()
	return expr.Compile(src, opts...)
}

// exprError reports an expr compile error at its place in the file.
func (p *parsed) exprError(field string, n *yaml.Node, err error) {
	var fe *file.Error
	if !errors.As(err, &fe) {
		p.errorf(nodePos(n), "%s: %v", field, err)
		return
	}
	off := fe.From
	if fe.Line > 0 {
		off = lineColOffset(n.Value, fe.Line, fe.Column)
	}
	p.errorf(p.src.scalarPos(n, off), "%s: %s", field, fe.Message)
}

// templateFuncs are the functions templates may call.
var templateFuncs = template.FuncMap{
	"ms": func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) },
	"pct": func(a, b any) float64 {
		return 100 * ratio(toFloat(a), toFloat(b))
	},
	"num":    num,
	"dur":    dur,
	"join":   func(v any, sep string) string { return strings.Join(strs(v), sep) },
	"list":   list,
	"plural": plural,
}

func (p *parsed) template(field string, n *yaml.Node) *template.Template {
	if n == nil {
		return nil
	}
	t, err := template.New(field).Funcs(templateFuncs).Funcs(template.FuncMap{escapeFunc: escapeHostText}).
		Option("missingkey=error").Parse(n.Value)
	if err != nil {
		p.templateError(field, n, err)
		return nil
	}
	for _, x := range t.Templates() {
		if x.Tree != nil {
			escapeActions(x.Tree, x.Tree.Root)
		}
	}
	return t
}

// escapeFunc is the template function escapeActions pipes every printed
// value through.
const escapeFunc = "escapeHostText"

// escapeActions makes every action of a template that prints a value end
// in escapeFunc, so that no value (a host string: an exec argument, a
// task or device name) can put a control character or a line break into
// the text: values are escaped as they enter it, the rule's own text is
// kept. It is what html/template does for HTML, for text.
func escapeActions(tree *parse.Tree, n parse.Node) {
	switch x := n.(type) {
	case *parse.ListNode:
		if x == nil {
			return
		}
		for _, c := range x.Nodes {
			escapeActions(tree, c)
		}
	case *parse.ActionNode:
		if len(x.Pipe.Decl) > 0 { // {{$v := ...}} prints nothing
			return
		}
		id := parse.NewIdentifier(escapeFunc).SetTree(tree).SetPos(x.Pos)
		x.Pipe.Cmds = append(x.Pipe.Cmds, &parse.CommandNode{NodeType: parse.NodeCommand, Pos: x.Pos, Args: []parse.Node{id}})
	case *parse.IfNode:
		escapeActions(tree, x.List)
		escapeActions(tree, x.ElseList)
	case *parse.RangeNode:
		escapeActions(tree, x.List)
		escapeActions(tree, x.ElseList)
	case *parse.WithNode:
		escapeActions(tree, x.List)
		escapeActions(tree, x.ElseList)
	}
}

// escapeHostText prints a value as text/template would, escaped with
// escape.String.
func escapeHostText(v any) (string, error) {
	if v == nil {
		return "<no value>", nil
	}
	rv := reflect.ValueOf(v)
	for rv.Kind() == reflect.Pointer && !rv.IsNil() {
		rv = rv.Elem()
	}
	errType, strType := reflect.TypeFor[error](), reflect.TypeFor[fmt.Stringer]()
	if !rv.Type().Implements(errType) && !rv.Type().Implements(strType) {
		if rv.CanAddr() && (reflect.PointerTo(rv.Type()).Implements(errType) || reflect.PointerTo(rv.Type()).Implements(strType)) {
			rv = rv.Addr()
		} else if k := rv.Kind(); k == reflect.Chan || k == reflect.Func {
			return "", fmt.Errorf("can't print value of type %s", rv.Type())
		}
	}
	return escape.String(fmt.Sprint(rv.Interface())), nil
}

// templateError reports a template parse or execution error at its place.
func (p *parsed) templateError(field string, n *yaml.Node, err error) {
	at, msg := templateErrAt(p.src, n, field, err)
	p.errorf(at, "%s: %s", field, msg)
}

// templateErrAt returns where in the file a template error is, and its
// message without the template's name and position.
func templateErrAt(src *source, n *yaml.Node, field string, err error) (pos, string) {
	m := tmplErrRE.FindStringSubmatch(err.Error())
	if m == nil {
		return nodePos(n), err.Error()
	}
	line, _ := strconv.Atoi(m[1])
	col := 0
	if m[2] == "" { // parse errors give no column: point at what they quote, if anywhere
		lines := strings.Split(n.Value, "\n")
		if q := quotedRE.FindStringSubmatch(m[3]); q != nil && line-1 < len(lines) {
			if i := strings.Index(lines[line-1], q[1]); i >= 0 {
				col = utf8.RuneCountInString(lines[line-1][:i])
			}
		}
	} else {
		b, _ := strconv.Atoi(m[2]) // a byte column
		lines := strings.Split(n.Value, "\n")
		if line-1 < len(lines) && b <= len(lines[line-1]) {
			col = utf8.RuneCountInString(lines[line-1][:b])
		}
	}
	msg := m[3]
	if i := strings.Index(msg, "executing \""+field+"\" "); i == 0 {
		msg = msg[len("executing \""+field+"\" "):]
	}
	return src.scalarPos(n, lineColOffset(n.Value, line, col)), msg
}

// dryRun executes the templates on empty facts, with evidence values of the
// types their expressions return, to catch misspelled fields and evidence
// names at load. It is skipped when some evidence type is not known
// statically, and only reports errors that do not depend on the data.
func (p *parsed) dryRun(r *Rule) {
	ev := map[string]any{}
	for _, e := range r.evidence {
		t := e.prog.Node().Type()
		if t == nil || t.Kind() == reflect.Interface {
			return
		}
		ev[e.name] = reflect.Zero(t).Interface()
	}
	data := TemplateData{Run: &facts.Run{}, Ev: ev}
	if r.Scope != ScopeRun {
		data.Device = &facts.Device{}
	}
	if r.Scope == ScopeCommand {
		data.Command = &facts.Command{}
	}
	for _, f := range []struct {
		name string
		t    *template.Template
	}{{"title", r.title}, {"step", r.step}, {"explain", r.explain}, {"remedy", r.remedy}} {
		if f.t == nil {
			continue
		}
		err := f.t.Execute(io.Discard, data)
		if err == nil {
			continue
		}
		s := err.Error()
		noScope := r.Scope == ScopeRun && (strings.Contains(s, "nil pointer evaluating *facts.Device.") ||
			strings.Contains(s, "nil pointer evaluating *facts.Command.")) ||
			r.Scope == ScopeDevice && strings.Contains(s, "nil pointer evaluating *facts.Command.")
		if noScope || strings.Contains(s, "can't evaluate field") || strings.Contains(s, "map has no entry for key") {
			p.templateError(f.name, p.nodes[f.name], err)
		}
	}
}
