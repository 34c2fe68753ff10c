package cmd

import (
	"fmt"
	"strings"

	"github.com/olekukonko/tablewriter"
	"github.com/spf13/cobra"

	"github.com/whyslow/whyslow/rules"
)

func newCmdRules(ios *IO) *cobra.Command {
	c := &cobra.Command{
		Use:   "rules",
		Short: "List or check diagnosis rules",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return usagef("rules needs a subcommand: list or check")
		},
	}
	var paths []string
	list := &cobra.Command{
		Use:   "list",
		Short: "List the rules a diagnosis evaluates",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			set, err := loadRules(paths)
			if err != nil {
				return err
			}
			t := tablewriter.NewTable(ios.Out)
			t.Header("ID", "Severity", "Scope", "Explains", "Needs", "Finds")
			for _, r := range set.Rules() {
				var needs []string
				for _, alts := range r.Needs {
					needs = append(needs, strings.Join(alts, " | "))
				}
				if err := t.Append(r.ID, string(r.Severity), string(r.Scope), r.Explains, strings.Join(needs, ", "), r.Summary); err != nil {
					return err
				}
			}
			return t.Render()
		},
	}
	list.Flags().StringArrayVar(&paths, "rules", nil, "rule file or directory of rule files to add (repeatable), as for diagnose")
	check := &cobra.Command{
		Use:   "check FILE...",
		Short: "Check rule files without running anything; errors name file, line and column",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, files []string) error {
			if err := rulesCheck(files); err != nil {
				return err
			}
			fmt.Fprintf(ios.Out, "%d rule file(s) OK\n", len(files))
			return nil
		},
	}
	c.AddCommand(list, check)
	return c
}

func rulesCheck(files []string) error {
	return rules.Check(files...)
}
