package report

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/whyslow/whyslow/rules"
)

// A rule that was not evaluated is in every format, with why; a report
// with none has no trace of the field (the JSON contract is additive).
func TestNotEvaluatedInEveryFormat(t *testing.T) {
	ne := []rules.NotEvaluated{{Rule: "tag-starvation", Reason: "needs Device.TagWaits: offcpu unavailable (rejected by the BPF verifier)"}}
	for _, f := range Formats {
		t.Run(f.Name, func(t *testing.T) {
			var with, without bytes.Buffer
			if err := f.Write(&with, Build(nil, nil, nil, Meta{NotEvaluated: ne}), nil); err != nil {
				t.Fatal(err)
			}
			if err := f.Write(&without, Build(nil, nil, nil, Meta{}), nil); err != nil {
				t.Fatal(err)
			}
			out := with.String()
			if !strings.Contains(out, "tag-starvation") || !strings.Contains(out, "offcpu unavailable (rejected by the BPF verifier)") ||
				!strings.Contains(strings.ToLower(out), "not evaluated") && !strings.Contains(out, "not_evaluated") {
				t.Errorf("the rule not evaluated, or why, is missing:\n%s", out)
			}
			if strings.Contains(strings.ToLower(without.String()), "not evaluated") || strings.Contains(without.String(), "not_evaluated") {
				t.Errorf("a report with every rule evaluated mentions rules not evaluated:\n%s", without.String())
			}
			if f.Name == "json" {
				var doc struct {
					NotEvaluated []NotEvaluated `json:"not_evaluated"`
				}
				if err := json.Unmarshal(with.Bytes(), &doc); err != nil || len(doc.NotEvaluated) != 1 || doc.NotEvaluated[0].Rule != "tag-starvation" {
					t.Errorf("not_evaluated = %+v (%v)", doc.NotEvaluated, err)
				}
			}
		})
	}
}
