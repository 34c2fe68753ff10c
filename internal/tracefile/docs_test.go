package tracefile

import (
	"flag"
	"fmt"
	"strings"
	"testing"

	"github.com/whyslow/whyslow/internal/gendoc"
	"github.com/whyslow/whyslow/internal/timeline"
)

var update = flag.Bool("update", false, "rewrite the generated parts of docs/trace-format.md")

const formatDoc = "../../docs/trace-format.md"

// The record table of docs/trace-format.md holds one row per event kind,
// generated from timeline.Sources, and each row names every field of its
// event: a kind added without its documentation fails here.
func TestDocsEventRecords(t *testing.T) {
	var rows strings.Builder
	rows.WriteString("| type | probe | fields |\n|---|---|---|\n")
	for _, s := range timeline.Streams() {
		fmt.Fprintf(&rows, "| `%s` | `%s` | %s |\n", s.Record(), s.Probe(), s.Doc())
		for i := range s.Type().NumField() {
			f := s.Type().Field(i)
			if name := fieldName(f); f.IsExported() && !strings.Contains(s.Doc(), "`"+name+"`") {
				t.Errorf("the doc of record %s does not name its field `%s` (%s.%s)", s.Record(), name, s.Type(), f.Name)
			}
		}
	}
	gendoc.Check(t, formatDoc, "event-records", rows.String(), *update, "go test ./internal/tracefile -run TestDocs -update")
}
