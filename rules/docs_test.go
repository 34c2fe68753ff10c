package rules

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/expr-lang/expr/builtin"
	"github.com/expr-lang/expr/conf"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/facts"
)

// The tests below keep docs/rules.md, the rule-writing reference, true to
// the code: every name the rule engine exposes is documented under the
// right heading, every key the parser accepts is listed, and the example
// rules load and behave as the page says.

const docPath = "../docs/rules.md"

const modulePrefix = "github.com/whyslow/whyslow/"

// fence is a fenced code block of the page.
type fence struct {
	info string // what follows ``` on the opening line
	body string
	line int // of the opening line, 1-based
}

func readDoc(t *testing.T) (string, []fence) {
	t.Helper()
	data, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatalf("the rule reference is missing: %v", err)
	}
	doc := string(data)
	var out []fence
	var cur *fence
	var body []string
	for i, l := range strings.Split(doc, "\n") {
		switch {
		case cur == nil && strings.HasPrefix(l, "```"):
			cur = &fence{info: strings.TrimSpace(strings.TrimPrefix(l, "```")), line: i + 1}
			body = nil
		case cur != nil && strings.TrimSpace(l) == "```":
			cur.body = strings.Join(body, "\n") + "\n"
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			body = append(body, l)
		}
	}
	if cur != nil {
		t.Fatalf("%s:%d: fenced block not closed", docPath, cur.line)
	}
	return doc, out
}

// section returns the text under the first heading that contains heading,
// up to the next heading of the same or a higher level.
func section(doc, heading string) (string, bool) {
	lines := strings.Split(doc, "\n")
	inFence := false
	level := 0
	var out []string
	for _, l := range lines {
		if strings.HasPrefix(l, "```") {
			inFence = !inFence
		}
		lv := 0
		if !inFence {
			lv = len(l) - len(strings.TrimLeft(l, "#"))
			if lv == 0 || lv > 6 || !strings.HasPrefix(l[lv:], " ") {
				lv = 0
			}
		}
		switch {
		case level == 0 && lv > 0 && strings.Contains(l, heading):
			level = lv
		case level > 0 && lv > 0 && lv <= level:
			return strings.Join(out, "\n"), true
		case level > 0:
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n"), level > 0
}

// mentions reports whether text names name in code: `name`, `name(...)` or `name ...`.
func mentions(text, name string) bool {
	return regexp.MustCompile("`" + regexp.QuoteMeta(name) + "[`( ]").MatchString(text)
}

var rowNameRE = regexp.MustCompile("^\\| `([A-Za-z_][A-Za-z0-9_]*)[`( ]")

// rowNames returns the names the table rows of a section start with.
func rowNames(text string) []string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if m := rowNameRE.FindStringSubmatch(l); m != nil {
			out = append(out, m[1])
		}
	}
	return out
}

// reachableTypes returns the named types of this module that expressions
// and templates can reach from their environments, through fields, method
// results and method arguments.
func reachableTypes() []reflect.Type {
	seen := map[reflect.Type]bool{}
	var out []reflect.Type
	var visit func(t reflect.Type)
	visit = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Name() == "" {
			switch t.Kind() {
			case reflect.Slice, reflect.Array:
				visit(t.Elem())
			case reflect.Map:
				visit(t.Key())
				visit(t.Elem())
			}
			return
		}
		if seen[t] || !strings.HasPrefix(t.PkgPath(), modulePrefix) {
			return
		}
		seen[t] = true
		out = append(out, t)
		switch t.Kind() {
		case reflect.Struct:
			for i := range t.NumField() {
				if f := t.Field(i); f.IsExported() {
					visit(f.Type)
				}
			}
		case reflect.Slice, reflect.Array, reflect.Map:
			visit(t.Elem())
		}
		pt := reflect.PointerTo(t)
		for i := range pt.NumMethod() {
			m := pt.Method(i).Type
			for j := 1; j < m.NumIn(); j++ { // 0 is the receiver
				visit(m.In(j))
			}
			for j := range m.NumOut() {
				visit(m.Out(j))
			}
		}
	}
	for _, root := range []any{DeviceEnv{}, CommandEnv{}, RunEnv{}, TemplateData{}} {
		visit(reflect.TypeOf(root))
	}
	return out
}

// members returns the exported fields and methods of a type.
func members(t reflect.Type) []string {
	var out []string
	if t.Kind() == reflect.Struct {
		for i := range t.NumField() {
			if f := t.Field(i); f.IsExported() {
				out = append(out, f.Name)
			}
		}
	}
	pt := reflect.PointerTo(t)
	for i := range pt.NumMethod() {
		out = append(out, pt.Method(i).Name)
	}
	return out
}

// exprFuncNames returns the functions helperFuncs registers for expressions.
func exprFuncNames() []string {
	c := conf.CreateNew()
	for _, opt := range helperFuncs {
		opt(c)
	}
	var out []string
	for name := range c.Functions {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func builtinNames() []string {
	var out []string
	for _, f := range builtin.Builtins {
		out = append(out, f.Name)
	}
	return out
}

func templateFuncNames() []string {
	var out []string
	for name := range templateFuncs {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func TestDocsReachableTypes(t *testing.T) {
	// The walk must find at least these, or the coverage test below proves nothing.
	got := map[reflect.Type]bool{}
	for _, typ := range reachableTypes() {
		got[typ] = true
	}
	for _, want := range []any{DeviceEnv{}, TemplateData{}, facts.Run{}, facts.Device{}, facts.Command{},
		facts.Spans{}, facts.Span{}, facts.Points{}, facts.Tasks{}, facts.Latency{}, event.Task{}, event.Frame{}} {
		if !got[reflect.TypeOf(want)] {
			t.Errorf("%T not found reachable from the rule environments", want)
		}
	}
	if len(exprFuncNames()) == 0 || len(builtinNames()) == 0 || len(templateFuncNames()) == 0 {
		t.Error("no expr, builtin or template functions found")
	}
}

// TestDocsDescribeEverything fails when the rule engine exposes a name that
// docs/rules.md does not describe under the heading it belongs to, or when
// a table there lists one that no longer exists.
func TestDocsDescribeEverything(t *testing.T) {
	doc, _ := readDoc(t)
	type check struct {
		name    string
		heading string   // a heading of the page containing this
		names   []string // each must be mentioned in its section
		exact   bool     // and the section's table rows name nothing else
	}
	var checks []check
	for _, typ := range reachableTypes() {
		checks = append(checks, check{"type " + typ.String(), "`" + typ.String() + "`", members(typ), true})
	}
	checks = append(checks,
		check{"rule keys", "# Keys", knownKeys, true},
		check{"expression functions", "Functions whyslow adds to expressions", exprFuncNames(), true},
		check{"template functions", "Template functions", templateFuncNames(), true},
		check{"expr builtins", "expr builtins", builtinNames(), false},
	)
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			text, ok := section(doc, c.heading)
			if !ok {
				t.Fatalf("%s has no heading with %q: document %s there", docPath, c.heading, c.name)
			}
			for _, n := range c.names {
				if !mentions(text, n) {
					t.Errorf("%s: %q is not documented under the heading with %q", docPath, n, c.heading)
				}
			}
			if !c.exact {
				return
			}
			for _, n := range rowNames(text) {
				if !slices.Contains(c.names, n) {
					t.Errorf("%s: the table under %q lists %q, which the code does not have", docPath, c.heading, n)
				}
			}
		})
	}
}

// docExamples sorts the page's yaml blocks by their marker.
type docExamples struct {
	rules    []fence           // ```yaml rule [file=NAME]
	broken   []fence           // ```yaml rule-error file=NAME
	files    map[string]string // NAME -> body, of rule and rule-error blocks
	builtin  map[string]fence  // ```yaml builtin=NAME
	consoles []fence           // ```console blocks running `whyslow rules check`
	steps    []fence           // ```text steps
}

func examples(t *testing.T) docExamples {
	t.Helper()
	_, fences := readDoc(t)
	ex := docExamples{files: map[string]string{}, builtin: map[string]fence{}}
	for i, f := range fences {
		words := strings.Fields(f.info)
		if len(words) == 0 {
			continue
		}
		attr := map[string]string{}
		marker := ""
		for _, w := range words[1:] {
			if k, v, ok := strings.Cut(w, "="); ok {
				attr[k] = v
			} else {
				marker = w
			}
		}
		switch {
		case words[0] == "yaml" && marker == "rule":
			ex.rules = append(ex.rules, f)
		case words[0] == "yaml" && marker == "rule-error":
			if attr["file"] == "" {
				t.Fatalf("%s:%d: a rule-error block needs file=NAME", docPath, f.line)
			}
			ex.broken = append(ex.broken, f)
		case words[0] == "yaml" && attr["builtin"] != "":
			ex.builtin[attr["builtin"]] = f
		case words[0] == "yaml":
			t.Fatalf("%s:%d: yaml block %q is not marked rule, rule-error or builtin=NAME, so nothing checks it", docPath, f.line, f.info)
		case words[0] == "console" && strings.HasPrefix(f.body, "$ whyslow rules check "):
			ex.consoles = append(ex.consoles, f)
		case words[0] == "text" && marker == "steps":
			ex.steps = append(ex.steps, f)
		default:
			continue
		}
		if name := attr["file"]; name != "" {
			if _, dup := ex.files[name]; dup {
				t.Fatalf("%s:%d: file=%s used twice", docPath, f.line, name)
			}
			ex.files[name] = fences[i].body
		}
	}
	if len(ex.rules) == 0 {
		t.Fatalf("%s has no ```yaml rule blocks", docPath)
	}
	return ex
}

// docRules loads every ```yaml rule block of the page together, as one
// --rules directory would be.
func docRules(t *testing.T, ex docExamples) *Set {
	t.Helper()
	fsys := fstest.MapFS{}
	for _, f := range ex.rules {
		fsys[fmt.Sprintf("docs/rules.md-line-%d.yaml", f.line)] = &fstest.MapFile{Data: []byte(f.body)}
	}
	set, err := Load(fsys, "docs")
	if err != nil {
		t.Fatalf("the ```yaml rule blocks of %s do not load together:\n%v", docPath, err)
	}
	return set
}

// tuneDisk is the run of the worked example: cron runs tune-disk every 2 s,
// and each run writes queue/scheduler of loop0 while fio writes to it.
func tuneDisk() *scenario {
	s := newScenario().fast(loop0)
	for i := range 10 {
		ms := 1000 + float64(i)*2000
		pid := uint32(4000 + i)
		s.exec(ms, "/usr/local/sbin/tune-disk", "cron", pid)
		s.freeze(ms+30, event.Task{Pid: pid, Tgid: pid, Comm: "tune-disk"}, loop0)
	}
	return s
}

func TestDocsExampleRules(t *testing.T) {
	ex := examples(t)
	for _, f := range ex.rules {
		t.Run(fmt.Sprintf("rule at line %d loads", f.line), func(t *testing.T) {
			fsys := fstest.MapFS{"docs/example.yaml": &fstest.MapFile{Data: []byte(f.body)}}
			set, err := Load(fsys, "docs")
			if err != nil {
				t.Fatalf("%s:%d: the example does not load:\n%v", docPath, f.line, err)
			}
			if len(set.Rules()) != 1 {
				t.Fatalf("%s:%d: %d rules", docPath, f.line, len(set.Rules()))
			}
		})
	}
	set := defaults(t).Merge(docRules(t, ex))
	runs := []struct {
		name string
		sc   *scenario
	}{
		{"udev chain and slow disk", newScenario().fast(loop0).udevChain(loop0).slow(sda)},
		{"tune-disk", tuneDisk()},
		{"nothing", newScenario().fast(loop0)},
		{"empty", newScenario()},
	}
	for _, r := range runs {
		t.Run("evaluates on "+r.name, func(t *testing.T) {
			if _, err := Evaluate(set, r.sc.run()); err != nil {
				t.Errorf("the example rules of %s fail at evaluation:\n%v", docPath, err)
			}
		})
	}
}

func TestDocsBuiltinCopies(t *testing.T) {
	ex := examples(t)
	if len(ex.builtin) == 0 {
		t.Fatalf("%s explains no built-in rule (```yaml builtin=NAME)", docPath)
	}
	for name, f := range ex.builtin {
		t.Run(name, func(t *testing.T) {
			want, err := fs.ReadFile(builtinFS, "builtin/"+name)
			if err != nil {
				t.Fatalf("%s:%d: %v", docPath, f.line, err)
			}
			if f.body != string(want) {
				t.Errorf("%s:%d: the copy of rules/builtin/%s differs from the file; paste the file again and check the explanation",
					docPath, f.line, name)
			}
		})
	}
}

// TestDocsRulesCheckOutput runs each `$ whyslow rules check FILE...` of the
// page on the blocks marked file=FILE and compares what the command prints
// (cmd/rules.go, cmd/root.go) with the block.
func TestDocsRulesCheckOutput(t *testing.T) {
	ex := examples(t)
	if len(ex.consoles) == 0 {
		t.Fatalf("%s shows no `whyslow rules check`", docPath)
	}
	checked := map[string]bool{}
	for _, c := range ex.consoles {
		t.Run(fmt.Sprintf("console at line %d", c.line), func(t *testing.T) {
			lines := strings.Split(strings.TrimRight(c.body, "\n"), "\n")
			files := strings.Fields(strings.TrimPrefix(lines[0], "$ whyslow rules check "))
			dir := t.TempDir()
			for _, name := range files {
				body, ok := ex.files[name]
				if !ok {
					t.Fatalf("%s:%d: no block is marked file=%s", docPath, c.line, name)
				}
				checked[name] = true
				if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			t.Chdir(dir)
			var got []string
			if err := Check(files...); err != nil {
				got = strings.Split("whyslow: "+err.Error(), "\n")
			} else {
				got = []string{fmt.Sprintf("%d rule file(s) OK", len(files))}
			}
			if want := lines[1:]; !slices.Equal(got, want) {
				t.Errorf("%s:%d: `rules check` prints\n%s\nthe page says\n%s", docPath, c.line,
					strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
	for _, f := range ex.broken {
		if name := fileAttr(f); !checked[name] {
			t.Errorf("%s:%d: no `$ whyslow rules check %s` block shows the errors of this rule-error block", docPath, f.line, name)
		}
	}
}

func fileAttr(f fence) string {
	for _, w := range strings.Fields(f.info) {
		if v, ok := strings.CutPrefix(w, "file="); ok {
			return v
		}
	}
	return ""
}

// TestDocsWorkedExampleChain checks the chain the page says the worked
// example gives on the tune-disk run: the one finding whose steps include a
// rule of the page that is not built in.
func TestDocsWorkedExampleChain(t *testing.T) {
	ex := examples(t)
	if len(ex.steps) != 1 {
		t.Fatalf("%s: want one ```text steps block, have %d", docPath, len(ex.steps))
	}
	own := docRules(t, ex)
	builtins := defaults(t)
	findings := evaluate(t, builtins.Merge(own), tuneDisk().run())
	var chains []string
	for _, f := range findings {
		var titles []string
		mine := false
		for _, s := range f.Steps {
			titles = append(titles, s.Title)
			mine = mine || (own.Rule(s.Rule) != nil && builtins.Rule(s.Rule) == nil)
		}
		if mine && len(f.Steps) > 1 {
			chains = append(chains, strings.Join(titles, " → "))
		}
	}
	want := strings.TrimSpace(ex.steps[0].body)
	if len(chains) != 1 || chains[0] != want {
		t.Errorf("%s:%d: the worked example gives the chains\n%s\nthe page says\n%s", docPath, ex.steps[0].line,
			strings.Join(chains, "\n"), want)
	}
}
