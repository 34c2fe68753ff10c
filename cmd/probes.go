package cmd

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/cilium/ebpf/rlimit"
	"github.com/olekukonko/tablewriter"
	"github.com/spf13/cobra"

	"github.com/whyslow/whyslow/diagnose"
	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/probes"
	"github.com/whyslow/whyslow/rules"
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
	c.Flags().StringVar(&opts.BTF, "btf", diagnose.DefaultBTF, "kernel BTF file")
	c.Flags().StringArrayVar(&opts.Mechanism, "mechanism", nil, "force a mechanism: fentry, kprobe, tp_btf, ... for every probe that offers it, or PROBE=MECHANISM for one (repeatable)")
	return c
}

// discard is a probes.Sink that drops everything.
type discard struct{}

func (discard) Event(event.Event)                                          {}
func (discard) Loss(event.Loss)                                            {}
func (discard) Histogram(timeline.HistKind, event.Device, *hist.Histogram) {}

func probesRun(opts *ProbesOptions) error {
	// Check needs a rule set; probes need none, so give it an empty one.
	mech, err := probes.ParseMechanism(opts.Mechanism)
	if err != nil {
		return usagef("%s", err)
	}
	spec, err := diagnose.Check(diagnose.Options{Duration: 1, BTF: opts.BTF, Rules: &rules.Set{}, Mechanism: mech})
	if err != nil {
		return err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("raising the locked-memory limit for BPF maps: %w", err)
	}
	cfg := probes.Config{MinLatency: 1 << 62, KernelTypes: spec, ProcFS: "/proc", SysFS: "/sys", Mechanism: mech}
	// Each probe starts and stops on its own, all at once, as a diagnosis
	// starts them; the table keeps their order.
	all := probes.All()
	statuses := make([]event.ProbeStatus, len(all))
	var wg sync.WaitGroup
	for i, p := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, st := p.Start(cfg, discard{})
			if st.Name == "" {
				st.Name = p.Decl().Name
			}
			if r != nil {
				if err := r.Stop(); err != nil {
					st.Reason = strings.TrimSpace(st.Reason + "; stopping: " + err.Error())
				}
			}
			statuses[i] = st
		}()
	}
	wg.Wait()
	if opts.Format == "json" {
		enc := json.NewEncoder(opts.IO.Out)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"probes": statuses})
	}
	return writeProbeTable(opts.IO.Out, statuses, describe())
}

func describe() map[string]string {
	out := map[string]string{}
	for _, p := range probes.All() {
		out[p.Decl().Name] = p.Decl().Describe
	}
	return out
}

func writeProbeTable(w io.Writer, statuses []event.ProbeStatus, desc map[string]string) error {
	t := tablewriter.NewTable(w)
	t.Header("Probe", "Mechanism", "Status", "Measures / why not")
	for _, st := range statuses {
		why := desc[st.Name]
		if st.Status != event.StatusOK || st.Reason != "" {
			why = st.Reason
		}
		for _, s := range st.Skipped {
			why += fmt.Sprintf("\n%s skipped: %s", s.Mechanism, s.Reason)
		}
		if err := t.Append(st.Name, string(st.Mechanism), st.Status, why); err != nil {
			return err
		}
	}
	return t.Render()
}
