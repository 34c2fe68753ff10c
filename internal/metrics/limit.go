package metrics

import "sync"

// Other is the label value that stands for every value past a label's
// bound: a Limit keeps the first values it sees and folds the rest into
// Other, so that a metric has at most Max+1 series per other label.
const Other = "_other"

// Limit bounds the values of one label. The first Max distinct values it
// is asked about keep their own value for the life of the process; every
// later one becomes Other (and is counted in Folded). Values are made
// printable first (escape.String: a host string cannot put a control
// character into a scrape).
type Limit struct {
	Max int

	mu     sync.Mutex
	kept   map[string]bool
	folded map[string]bool
}

// Label returns the label value for v: v made printable, or Other.
func (l *Limit) Label(v string) string {
	v = label(v)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.kept == nil {
		l.kept, l.folded = map[string]bool{}, map[string]bool{}
	}
	if l.kept[v] {
		return v
	}
	if len(l.kept) < l.Max && !l.folded[v] {
		l.kept[v] = true
		return v
	}
	// At most a bound's worth of folded values are remembered, so that
	// counting them stays bounded too.
	if len(l.folded) < foldedMemory {
		l.folded[v] = true
	}
	return Other
}

// Folded is how many distinct values were folded into Other (counted up
// to foldedMemory).
func (l *Limit) Folded() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.folded)
}

// foldedMemory is how many folded values a Limit remembers to count them.
const foldedMemory = 4096
