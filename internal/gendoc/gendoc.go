// Package gendoc keeps the generated sections of the docs current: tests
// build a section's text from the code's declarations and Check compares it
// with the lines between "<!-- NAME: ... -->" and "<!-- end NAME -->" of a
// markdown file, or writes it there when the test runs with -update.
package gendoc

import (
	"os"
	"strings"
	"testing"
)

// Check fails t when the section name of the file at path is not want; with
// update it rewrites the section instead. regen is the command that does
// that, for the failure message.
func Check(t testing.TB, path, name, want string, update bool, regen string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	begin := strings.Index(doc, "<!-- "+name+":")
	end := strings.Index(doc, "<!-- end "+name+" -->")
	if begin < 0 || end < begin {
		t.Fatalf("%s: no <!-- %s: ... --> ... <!-- end %s --> section", path, name, name)
	}
	begin += strings.Index(doc[begin:], "\n") + 1
	if doc[begin:end] == want {
		return
	}
	if !update {
		t.Errorf("%s: the %s section is stale (run %s):\ngot:\n%s\nwant:\n%s", path, name, regen, doc[begin:end], want)
		return
	}
	if err := os.WriteFile(path, []byte(doc[:begin]+want+doc[end:]), 0o644); err != nil {
		t.Fatal(err)
	}
}
