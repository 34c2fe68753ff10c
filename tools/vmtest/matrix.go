package vmtest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// probeRow is what `whyslow probes --format json` says of one probe.
type probeRow struct {
	Name      string `json:"name"`
	Mechanism string `json:"mechanism"`
	Status    string `json:"status"`
	Reason    string `json:"reason"`
}

// ReadProbes reads the probes.json a guest wrote into its results.
func ReadProbes(dir string) ([]probeRow, error) {
	data, err := os.ReadFile(filepath.Join(dir, "probes.json"))
	if err != nil {
		return nil, err
	}
	var doc struct {
		Probes []probeRow `json:"probes"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %v", filepath.Join(dir, "probes.json"), err)
	}
	return doc.Probes, nil
}

// MatrixColumn is one kernel's column of the mechanism table.
type MatrixColumn struct {
	Kernel  string // e.g. "6.1"
	Release string // uname -r
	Probes  []probeRow
	Passed  bool
}

// MatrixTable renders kernel × probe → mechanism as a Markdown table, with
// a last row saying whether the kernel's tests passed.
func MatrixTable(cols []MatrixColumn) string {
	names := map[string]bool{}
	for _, c := range cols {
		for _, p := range c.Probes {
			names[p.Name] = true
		}
	}
	var probes []string
	for n := range names {
		probes = append(probes, n)
	}
	sort.Strings(probes)
	var b strings.Builder
	b.WriteString("| probe |")
	for _, c := range cols {
		fmt.Fprintf(&b, " %s (%s) |", c.Kernel, c.Release)
	}
	b.WriteString("\n|---|")
	for range cols {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, n := range probes {
		fmt.Fprintf(&b, "| %s |", n)
		for _, c := range cols {
			cell := "—"
			for _, p := range c.Probes {
				if p.Name == n {
					cell = p.Mechanism
					if p.Status != "ok" {
						cell = p.Status
					}
				}
			}
			fmt.Fprintf(&b, " %s |", cell)
		}
		b.WriteString("\n")
	}
	b.WriteString("| **tests** |")
	for _, c := range cols {
		if c.Passed {
			b.WriteString(" pass |")
		} else {
			b.WriteString(" FAIL |")
		}
	}
	b.WriteString("\n")
	return b.String()
}
