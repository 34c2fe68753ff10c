package report

import (
	"fmt"
	"io"
	"strings"

	"github.com/whyslow/whyslow/internal/facts"
)

// Format is one way to write a report.
type Format struct {
	Name string
	// Write renders rep; run gives what a format draws beyond the report
	// (the HTML timeline), and may be nil.
	Write func(w io.Writer, rep *Report, run *facts.Run) error
}

// Formats lists every report format, the default first. A new format is
// one renderer and one line here; --format and its completion take them
// from this list.
var Formats = []Format{
	{"text", func(w io.Writer, rep *Report, _ *facts.Run) error { return Text(w, rep, TextOptions{}) }},
	{"json", func(w io.Writer, rep *Report, _ *facts.Run) error { return JSON(w, rep) }},
	{"markdown", func(w io.Writer, rep *Report, _ *facts.Run) error { return Markdown(w, rep) }},
	{"html", HTML},
}

// FormatNames returns the names of Formats, in order.
func FormatNames() []string {
	out := make([]string, len(Formats))
	for i, f := range Formats {
		out[i] = f.Name
	}
	return out
}

// Write renders rep in the named format.
func Write(w io.Writer, rep *Report, run *facts.Run, format string) error {
	for _, f := range Formats {
		if f.Name == format {
			return f.Write(w, rep, run)
		}
	}
	return fmt.Errorf("unknown report format %q (want one of %s)", format, strings.Join(FormatNames(), ", "))
}
