package report

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/timeline"
)

// A report from a cut trace says so at its top in every format, with the
// time it covers and where the trace ends (escaped: it names a line of a
// file); a complete one has no trace of it (the JSON contract is additive).
func TestIncompleteInEveryFormat(t *testing.T) {
	tl := &timeline.Timeline{Start: 1e9, End: 13e9}
	cut := "after line 903: truncated: the compressed data ends early (unexpected EOF)\x1b[2J"
	for _, f := range Formats {
		t.Run(f.Name, func(t *testing.T) {
			var with, without bytes.Buffer
			if err := f.Write(&with, Build(tl, nil, nil, Meta{Duration: time.Minute, Incomplete: true, Cut: cut}), nil); err != nil {
				t.Fatal(err)
			}
			if err := f.Write(&without, Build(tl, nil, nil, Meta{Duration: time.Minute}), nil); err != nil {
				t.Fatal(err)
			}
			out := with.String()
			if strings.Contains(out, "\x1b[2J") {
				t.Errorf("the reason is not escaped:\n%s", out)
			}
			if strings.Contains(strings.ToLower(without.String()), "incomplete") {
				t.Errorf("a complete report mentions incomplete:\n%s", without.String())
			}
			if f.Name == "json" {
				var doc struct {
					Incomplete       bool     `json:"incomplete"`
					CoveredSeconds   *float64 `json:"covered_seconds"`
					IncompleteReason string   `json:"incomplete_reason"`
				}
				if err := json.Unmarshal(with.Bytes(), &doc); err != nil || !doc.Incomplete || doc.CoveredSeconds == nil || *doc.CoveredSeconds != 12 || doc.IncompleteReason != cut {
					t.Errorf("incomplete %v, covered %v, reason %q (%v)", doc.Incomplete, doc.CoveredSeconds, doc.IncompleteReason, err)
				}
				return
			}
			// Text, Markdown and HTML: at the top, before the title's first
			// mention of the run.
			top := out[:strings.Index(out, "storage diagnosis")]
			if f.Name == "html" {
				top = out[strings.Index(out, "<header>"):strings.Index(out, "<h1>")]
			}
			if !strings.Contains(strings.ToLower(top), "incomplete") || !strings.Contains(top, "12") || !strings.Contains(top, "1m0s") && !strings.Contains(top, "60") || !strings.Contains(top, "after line 903") {
				t.Errorf("no incomplete line at the top, with 12 s of 60 s and where the trace ends:\n%s", top)
			}
		})
	}
}
