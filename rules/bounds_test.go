package rules

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"testing/fstest"
)

// rule is a valid device rule with its when, and more keys after it.
func rule(id, when, extra string) string {
	return "id: " + id + "\ntitle: x\nseverity: info\nscope: device\nwhen: " + when + "\n" + extra
}

// Rule files are untrusted input: what no rule needs is refused, with one
// error at its place, before anything costly reads it.
func TestRuleBombs(t *testing.T) {
	deep := strings.Repeat("(", MaxExprDepth) + "true" + strings.Repeat(")", MaxExprDepth)
	tests := []struct {
		name, file string
		want       string // the one error, file:line:col: ...
	}{
		{"a million !", rule("bang", "'"+strings.Repeat("!", 1_000_000)+"true'", ""),
			"r.yaml:5:65490: the file goes on past 65536 bytes (64 KiB), the most a rule file may have"},
		{"five thousand !", rule("bang", "'"+strings.Repeat("!", 5000)+"true'", ""),
			"r.yaml:5:4104: when: longer than 4096 bytes (5004), the most an expression may have"},
		{"deep brackets", rule("deep", "'"+strings.Repeat("(", MaxExprDepth+1)+"true"+strings.Repeat(")", MaxExprDepth+1)+"'", ""),
			"r.yaml:5:72: when: nested more than 64 deep (brackets and operators such as !), the most an expression may be"},
		{"deep prefix operators", rule("nots", `"`+strings.Repeat("not ", 40)+strings.Repeat("!", 30)+`true"`, ""),
			"r.yaml:5:192: when: nested more than 64 deep (brackets and operators such as !), the most an expression may be"},
		{"deep in evidence, block style", rule("ev", "'true'", "evidence:\n  - x: |\n      1 +\n      "+strings.Repeat("[", 70)+"1"+strings.Repeat("]", 70)+"\n"),
			"r.yaml:9:71: evidence: x: nested more than 64 deep (brackets and operators such as !), the most an expression may be"},
		{"a long score", rule("long", "'true'", "score: "+strings.Repeat("1+", 2100)+"1\n"),
			"r.yaml:6:4104: score: longer than 4096 bytes (4201), the most an expression may have"},
		{"control character", "id: ctl\ntitle: \"a\x01b\"\nseverity: info\nscope: device\nwhen: 'true'\n",
			"r.yaml:2:10: control character U+0001: YAML allows none but tab, line feed and carriage return (in a double-quoted string, write it as an escape such as \\x01)"},
		{"escape in a plain scalar", rule("esc", "tr\x1bue", ""),
			"r.yaml:5:9: control character U+001B: YAML allows none but tab, line feed and carriage return (in a double-quoted string, write it as an escape such as \\x01)"},
		{"not UTF-8", rule("utf", "'true'", "summary: caf\xe9\n"),
			"r.yaml:6:13: not UTF-8 text: byte 0xe9"},
		{"too large", rule("big", "'true'", "summary: >-\n"+strings.Repeat("  word word word word word word word word word\n", 1500)),
			"r.yaml:1399:42: the file goes on past 65536 bytes (64 KiB), the most a rule file may have"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "r.yaml")
			if err := os.WriteFile(path, []byte(tt.file), 0o644); err != nil {
				t.Fatal(err)
			}
			err := Check(path)
			if err == nil {
				t.Fatal("accepted")
			}
			errs := Errors(err)
			got := strings.TrimPrefix(errs[0].Error(), filepath.Dir(path)+"/")
			if len(errs) != 1 || strings.Contains(err.Error(), "\n") || got != tt.want {
				t.Errorf("errors %d: %q\nwant       %q", len(errs), got, tt.want)
			}
		})
	}
	// At the bounds, rules load.
	ok := rule("ok", "'"+deep+"'", "score: "+strings.Repeat("1+", MaxExprLength/2-1)+"1\n")
	if _, err := Load(fstest.MapFS{"r/ok.yaml": {Data: []byte(ok)}}, "r"); err != nil {
		t.Errorf("a rule at the bounds: %v", err)
	}
}

// An endless file is read up to the limit, not to the end.
func TestRuleFileEndless(t *testing.T) {
	err := Check("/dev/zero")
	var e *Error
	if !errors.As(err, &e) || e.File != "/dev/zero" || e.Line != 1 || e.Column != MaxFileSize+1 {
		t.Errorf("rules check /dev/zero: %v", err)
	}
}

// The checks of the set as a whole run on the built-in rules with the
// files over them: a file that replaces a built-in rule cannot break the
// built-in rules' chains.
func TestMergedSetChecks(t *testing.T) {
	builtinRule := func(id string) string {
		data, err := builtinFS.ReadFile("builtin/" + id + ".yaml")
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	tests := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"replacing a built-in rule is fine", map[string]string{"q.yaml": builtinRule("queue-freeze-stall")}, ""},
		{"a cycle through built-in rules", map[string]string{
			"q.yaml": strings.Replace(builtinRule("queue-freeze-stall"), "scope: device\n", "scope: device\nexplains: periodic-trigger\n", 1)},
			"rules/q.yaml:9:11: explains: cycle periodic-trigger -> uevent-freeze -> queue-freeze-stall -> periodic-trigger"},
		{"a built-in rule's target made run-scope", map[string]string{"q.yaml": "id: queue-freeze-stall\ntitle: x\nseverity: info\nscope: run\nwhen: 'true'\n"},
			`rules/q.yaml:4:8: scope: "run" replaces a rule that the built-in rule "uevent-freeze" explains; only device and command findings can be explained`},
		{"explaining a built-in rule made run-scope", map[string]string{
			"n.yaml": rule("mine", "'true'", "explains: nothing-found\n")},
			`rules/n.yaml:6:11: explains: "nothing-found" is a run-scope rule; only device and command findings can be explained`},
		{"explaining a replaced rule", map[string]string{
			"a.yaml": rule("slow-device", "'true'", ""), "b.yaml": rule("mine", "'true'", "explains: slow-device\n")}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fsys := fstest.MapFS{}
			for name, body := range tt.files {
				fsys["rules/"+name] = &fstest.MapFile{Data: []byte(body)}
			}
			set, err := Load(fsys, "rules")
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("error %v", err)
			case tt.want == "" && len(set.Rules()) != len(tt.files):
				t.Fatalf("%d rules", len(set.Rules()))
			case tt.want != "" && (err == nil || err.Error() != tt.want):
				t.Errorf("error %v\nwant  %s", err, tt.want)
			}
		})
	}
}

// FuzzRuleFile loads arbitrary rule files: nothing panics or hangs, and
// every error is one line naming file:line:col.
//
//	go test ./rules -run '^$' -fuzz FuzzRuleFile -fuzztime 1m
func FuzzRuleFile(f *testing.F) {
	f.Add([]byte(rule("a", "Device.Stalls.Count() > 0", "evidence:\n  - n: Device.Stalls.Count()\n")))
	f.Add([]byte("id: c\ntitle: \"{{.Command.Comm}}\"\nseverity: warning\nscope: command\nwhen: |\n  let w = Command.EffectWindow(duration(\"1s\"));\n  Command.FollowedBy(Device.Uevents, w) > 0.5\nexplains: uevent-freeze\n"))
	f.Add([]byte("id: r\ntitle: x {{.Findings}}\nseverity: info\nscope: run\nwhen: Findings == 0\n"))
	f.Add([]byte(rule("b", "'!(!(true))'", "score: 1 ? 2 : 3\n")))
	f.Add([]byte("id: [\n"))
	f.Add([]byte("- a\n- b\n"))
	f.Add([]byte("id: x\nid: y\n---\nid: z\n"))
	f.Add([]byte(rule("t", "'true'", "title: \"{{if .Device}}{{range .Ev}}{{.}}{{end}}{{end}}\"\n")))
	pos := regexp.MustCompile(`^f\.yaml:[1-9][0-9]*:[1-9][0-9]*: `)
	base := builtins()
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > MaxFileSize {
			return // readRuleFile refuses it (TestRuleBombs)
		}
		_, err := compileFiles([]ruleFile{{name: "f.yaml", data: bytes.Clone(data)}}, base)
		for _, e := range Errors(err) {
			msg := e.Error()
			if strings.ContainsAny(msg, "\n\r") || !pos.MatchString(msg) {
				t.Fatalf("error not one line naming file:line:col: %q", msg)
			}
		}
	})
}
