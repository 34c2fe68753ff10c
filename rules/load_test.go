package rules

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

// wantErrors reads the "# want: " lines of a testdata file.
func wantErrors(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if w, ok := strings.CutPrefix(sc.Text(), "# want: "); ok {
			out = append(out, w)
		}
	}
	return out
}

func TestLoadTestdata(t *testing.T) {
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatal("no testdata", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			set, err := LoadFiles(file)
			want := wantErrors(t, file)
			if strings.HasPrefix(filepath.Base(file), "valid_") {
				if err != nil {
					t.Fatalf("unexpected error:\n%v", err)
				}
				if len(set.Rules()) != 1 {
					t.Fatalf("%d rules", len(set.Rules()))
				}
				return
			}
			if len(want) == 0 {
				t.Fatal("invalid file without a # want: line")
			}
			if err == nil {
				t.Fatalf("no error, want %q", want)
			}
			if got := strings.Split(err.Error(), "\n"); !slices.Equal(got, want) {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if Check(file) == nil {
				t.Error("Check passes an invalid file")
			}
		})
	}
}

func TestLoadSetErrors(t *testing.T) {
	rule := func(id, extra string) string {
		return "id: " + id + "\ntitle: x\nseverity: info\nscope: device\nwhen: \"true\"\n" + extra
	}
	tests := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"duplicate id", map[string]string{"a.yaml": rule("same", ""), "b.yaml": rule("same", "")},
			"rules/b.yaml:1:5: duplicate id \"same\" (first in rules/a.yaml:1:5)"},
		{"cycle", map[string]string{"a.yaml": rule("a", "explains: b\n"), "b.yaml": rule("b", "explains: a\n")},
			"rules/a.yaml:6:11: explains: cycle a -> b -> a"},
		{"explains itself", map[string]string{"a.yaml": rule("a", "explains: a\n")},
			"rules/a.yaml:6:11: explains: a rule cannot explain itself"},
		{"explains a run rule", map[string]string{"a.yaml": rule("a", "explains: nothing-found\n")},
			"rules/a.yaml:6:11: explains: \"nothing-found\" is a run-scope rule; only device and command findings can be explained"},
		{"other files are ignored", map[string]string{"a.yaml": rule("a", ""), "README.md": "# not a rule", "b.yml": rule("b", "")}, ""},
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
			case tt.want == "" && len(set.Rules()) != 2:
				t.Fatalf("%d rules", len(set.Rules()))
			case tt.want != "" && (err == nil || err.Error() != tt.want):
				t.Errorf("error %v\nwant  %s", err, tt.want)
			}
		})
	}
}

func TestLoadFileErrors(t *testing.T) {
	err := Check("testdata/no-such-file.yaml", "testdata/valid_minimal.yaml")
	if err == nil || err.Error() != "testdata/no-such-file.yaml: no such file or directory" {
		t.Errorf("error %v", err)
	}
	if err := Check(); err == nil {
		t.Error("Check of nothing passes")
	}
	if _, err := LoadDir("testdata/nope"); err == nil {
		t.Error("LoadDir of a missing directory passes")
	}
	// explaining a built-in rule is allowed from outside
	if err := Check("testdata/valid_full.yaml"); err != nil {
		t.Error(err)
	}
}
