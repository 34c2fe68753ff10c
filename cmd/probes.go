package cmd

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/olekukonko/tablewriter"
	"github.com/olekukonko/tablewriter/tw"
	"github.com/spf13/cobra"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/probes"
)

// ProbesOptions are the flags of `whyslow probes`.
type ProbesOptions struct {
	IO     *IO
	Format string
	BTF    string
	// Mechanism is --mechanism: "kprobe" or "freeze=kprobe" (repeatable).
	Mechanism []string
}

// NewCmdProbes builds `whyslow probes`; runF replaces the run for tests.
func NewCmdProbes(ios *IO, runF func(*ProbesOptions) error) *cobra.Command {
	opts := &ProbesOptions{IO: ios}
	c := &cobra.Command{
		Use:   "probes",
		Short: "List every probe, the mechanism it uses on this kernel, and whether it works",
		Long: `Loads and attaches every probe for a moment, then detaches it, and prints the
mechanism each one uses on this kernel, or why it is unavailable. Needs root.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if opts.Format != "text" && opts.Format != "json" {
				return usagef("--format %q: want text or json", opts.Format)
			}
			if m, err := probes.ParseMechanism(opts.Mechanism); err != nil {
				return usagef("%s", err)
			} else if err := m.Check(probes.All()); err != nil {
				return usagef("%s", err)
			}
			if runF != nil {
				return runF(opts)
			}
			return probesRun(opts)
		},
	}
	c.Flags().StringVarP(&opts.Format, "format", "f", "text", "output format: text or json")
	c.Flags().StringVar(&opts.BTF, "btf", probes.DefaultBTF, "kernel BTF file")
	c.Flags().StringArrayVar(&opts.Mechanism, "mechanism", nil, "force a mechanism: fentry, kprobe, tp_btf, ... for every probe that offers it, or PROBE=MECHANISM for one (repeatable)")
	return c
}

// discard is a probes.Sink that drops everything.
type discard struct{}

func (discard) Event(event.Event)                                          {}
func (discard) Loss(event.Loss)                                            {}
func (discard) Histogram(timeline.HistKind, event.Device, *hist.Histogram) {}

func probesRun(opts *ProbesOptions) error {
	mech, err := probes.ParseMechanism(opts.Mechanism)
	if err != nil {
		return usagef("%s", err)
	}
	kernel, err := probes.Prepare(opts.BTF)
	if err != nil {
		return err
	}
	// Every probe starts at once, as a diagnosis starts them, and stops
	// at once; the table keeps their order.
	cfg := probes.Config{MinLatency: 1 << 62, KernelTypes: kernel, ProcFS: "/proc", SysFS: "/sys", Mechanism: mech}
	g := probes.Start(cfg, discard{}, probes.All()...)
	statuses := g.Statuses()
	stopErr := g.Stop()
	if opts.Format == "json" {
		enc := json.NewEncoder(opts.IO.Out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(map[string]any{"probes": statuses}); err != nil {
			return err
		}
	} else if err := writeProbeTable(opts.IO.Out, statuses); err != nil {
		return err
	}
	return stopErr
}

// probeTableWidth is the widest the probes table gets, in columns: the
// last column's lines wrap to fit, each wrapped line's rest indented by two
// spaces.
const probeTableWidth = 100

func writeProbeTable(w io.Writer, statuses []event.ProbeStatus) error {
	desc := map[string]string{}
	for _, p := range probes.All() {
		desc[p.Decl().Name] = p.Decl().Describe
	}
	header := []any{"Probe", "Mechanism", "Status", "Measures / why not"}
	rows := make([][]string, 0, len(statuses))
	// the other columns' widths: the last one takes what is left of the
	// table's width after them, the borders and a space each side of a cell
	widths := []int{len("Probe"), len("Mechanism"), len("Status")}
	for _, st := range statuses {
		why := desc[st.Name]
		if st.Status != event.StatusOK || st.Reason != "" {
			why = st.Reason
		}
		for _, s := range st.Skipped {
			why += fmt.Sprintf("\n%s skipped: %s", s.Mechanism, s.Reason)
		}
		row := []string{st.Name, string(st.Mechanism), st.Status, why}
		for i := range widths {
			widths[i] = max(widths[i], utf8.RuneCountInString(row[i]))
		}
		rows = append(rows, row)
	}
	last := probeTableWidth - (len(header) + 1) - 2*len(header)
	for _, n := range widths {
		last -= n
	}
	t := tablewriter.NewTable(w, tablewriter.WithRowAutoWrap(tw.WrapNone))
	t.Header(header...)
	for _, row := range rows {
		row[3] = wrapLines(row[3], max(last, 20))
		if err := t.Append(row); err != nil {
			return err
		}
	}
	return t.Render()
}

// wrapLines wraps each line of s at spaces to at most width runes (a word
// longer than that stands alone), indenting what a line wraps onto by two
// spaces.
func wrapLines(s string, width int) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		cur, limit := "", width
		for _, word := range strings.Fields(line) {
			switch {
			case cur == "":
				cur = word
			case utf8.RuneCountInString(cur)+1+utf8.RuneCountInString(word) <= limit:
				cur += " " + word
			default:
				out = append(out, cur)
				cur, limit = "  "+word, width
			}
		}
		out = append(out, cur)
	}
	return strings.Join(out, "\n")
}
