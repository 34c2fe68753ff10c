package layout

import (
	"flag"
	"fmt"
	"strings"
	"testing"

	"github.com/whyslow/whyslow/internal/gendoc"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/probes"
)

var update = flag.Bool("update", false, "rewrite the generated probe table of README.md")

// The probe table of README.md is generated from the declarations:
// go test ./internal/layout -run TestDocsProbeTable -update rewrites it.
// (It is here, not in probes, whose tests run in the kernel matrix's
// guests, where there is no README.)
func TestDocsProbeTable(t *testing.T) {
	var b strings.Builder
	b.WriteString("| probe | mechanisms, best first | attaches to | what it records | trace records |\n|---|---|---|---|---|\n")
	for _, p := range probes.All() {
		d := p.Decl()
		var mechs []string
		for _, r := range d.Mechanisms {
			m := string(r.Mech)
			if r.InferredBy != "" {
				m += fmt.Sprintf(" (inferred by `%s`)", r.InferredBy)
			}
			mechs = append(mechs, m)
		}
		var recs []string
		src, _ := timeline.SourceOf(d.Name)
		for _, s := range src.Streams {
			recs = append(recs, "`"+s.Record()+"`")
		}
		for _, h := range src.Hists {
			recs = append(recs, "histogram `"+string(h.Kind)+"`")
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s |\n", d.Name, strings.Join(mechs, ", "), d.Attach, d.Records, strings.Join(recs, ", "))
	}
	gendoc.Check(t, "../../README.md", "probe-table", b.String(), *update, "go test ./internal/layout -run TestDocsProbeTable -update")
}
