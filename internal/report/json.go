package report

import (
	"encoding/json"
	"fmt"
	"io"
)

// JSON writes the report as indented JSON with a trailing newline. Field
// order follows the struct (and the rule's order inside evidence), so equal
// reports give equal bytes.
func JSON(w io.Writer, r *Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("encoding report: %w", err)
	}
	return nil
}
