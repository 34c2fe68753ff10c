package rules

// What a rule needs: the facts it reads, and so the probes that supply them
// (facts.Suppliers). A rule declares them (needs: the facts without which
// it cannot fire, optional: the others it reads), and the declaration is
// checked against the facts its compiled expressions actually read, so it
// cannot claim facts it does not use nor use facts it does not declare. A
// rule whose needs no probe of the run supplied is not evaluated, and the
// report says so and why (Set.NotEvaluated).

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/vm"
	"gopkg.in/yaml.v3"

	"github.com/whyslow/whyslow/internal/facts"
)

// NotEvaluated is a rule that was not evaluated on a run, and why: the
// facts it needs were supplied by no probe of the run.
type NotEvaluated struct {
	Rule   string
	Reason string
}

// NotEvaluated returns the rules of the set that cannot be evaluated on
// run, sorted by id: for one of its needs (a fact, or one of alternative
// facts), no probe that supplies it measured.
func (s *Set) NotEvaluated(run *facts.Run) []NotEvaluated {
	var out []NotEvaluated
	for _, r := range s.Rules() {
		if why := r.missing(run); why != "" {
			out = append(out, NotEvaluated{Rule: r.ID, Reason: why})
		}
	}
	return out
}

// missing says why the rule cannot be evaluated on run, or "".
func (r *Rule) missing(run *facts.Run) string {
	for _, alts := range r.Needs {
		var why []string
		for _, f := range alts {
			w := facts.Missing(run, f)
			if w == nil {
				why = nil
				break
			}
			for _, x := range w {
				if !slices.Contains(why, x) {
					why = append(why, x)
				}
			}
		}
		if why != nil {
			return fmt.Sprintf("needs %s: %s", strings.Join(alts, " or "), strings.Join(why, "; "))
		}
	}
	return ""
}

// compiled is one compiled expression of a rule and where it is.
type compiled struct {
	field string
	node  *yaml.Node
	prog  *vm.Program
}

// factList parses the needs or optional list: facts, one per item; a
// needs item may name alternatives, "Device.QueueWaits | Device.Freezes".
func (p *parsed) factList(key string, v *yaml.Node) {
	if v.Kind != yaml.SequenceNode {
		p.errorf(nodePos(v), "%s: must be a list of facts, e.g. [Device.Freezes, Device.Stalls]", key)
		return
	}
	for _, item := range v.Content {
		if item.Kind != yaml.ScalarNode || item.Tag == "!!null" {
			p.errorf(nodePos(item), "%s: each item must be a fact, e.g. Device.Freezes", key)
			continue
		}
		var alts []string
		for _, f := range strings.Split(item.Value, "|") {
			f = strings.TrimSpace(f)
			ps, known := facts.Suppliers[f]
			switch {
			case !known:
				p.errorf(nodePos(item), "%s: unknown fact %q (facts are Run.X, Device.X and Command; see docs/rules.md)", key, f)
			case len(ps) == 0:
				p.errorf(nodePos(item), "%s: %s comes with every run, whatever probes ran: declare only facts probes supply", key, f)
			default:
				alts = append(alts, f)
			}
		}
		if key == "optional" && len(alts) > 1 {
			p.errorf(nodePos(item), "optional: one fact per item (alternatives are for needs)")
			continue
		}
		if len(alts) > 0 {
			p.factItems = append(p.factItems, factItem{key: key, node: item, facts: alts})
		}
	}
}

// factItem is one item of needs or optional.
type factItem struct {
	key   string // "needs" or "optional"
	node  *yaml.Node
	facts []string
}

// checkFacts holds the rule's needs and optional to the facts its
// expressions read, and sets r.Needs. A rule that declares neither needs
// any one of the facts it reads.
func (p *parsed) checkFacts(r *Rule, progs []compiled) {
	type use struct {
		at    pos
		field string
	}
	read := map[string]use{} // facts probes supply, where first read
	for _, c := range progs {
		node := c.prog.Node()
		ast.Walk(&node, visitor(func(n ast.Node) {
			m, ok := n.(*ast.MemberNode)
			if !ok || m.Node == nil || m.Node.Type() == nil {
				return
			}
			prop, ok := m.Property.(*ast.StringNode)
			if !ok {
				return
			}
			f := facts.FactOf(m.Node.Type(), prop.Value)
			if len(facts.Suppliers[f]) == 0 {
				return
			}
			if _, seen := read[f]; !seen {
				read[f] = use{p.src.scalarPos(c.node, m.Location().From), c.field}
			}
		}))
	}
	readNames := make([]string, 0, len(read))
	for f := range read {
		readNames = append(readNames, f)
	}
	sort.Strings(readNames)
	if p.keys["needs"] == nil && p.keys["optional"] == nil {
		if len(readNames) > 0 {
			r.Needs = [][]string{readNames}
		}
		return
	}
	declared := map[string]bool{}
	for _, it := range p.factItems {
		for _, f := range it.facts {
			if declared[f] {
				p.errorf(nodePos(it.node), "%s: %s declared twice", it.key, f)
			}
			declared[f] = true
			if _, ok := read[f]; !ok {
				p.errorf(nodePos(it.node), "%s: %s is read by no expression of the rule", it.key, f)
			}
		}
		if it.key == "needs" {
			r.Needs = append(r.Needs, it.facts)
		}
	}
	for _, f := range readNames {
		if !declared[f] {
			u := read[f]
			p.errorf(u.at, "%s: reads %s (supplied by %s) but the rule declares it in neither needs nor optional",
				u.field, f, strings.Join(facts.Suppliers[f], " or "))
		}
	}
}

// visitor adapts a function to ast.Visitor.
type visitor func(ast.Node)

func (v visitor) Visit(n *ast.Node) { v(*n) }
