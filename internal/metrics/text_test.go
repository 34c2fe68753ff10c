package metrics

import (
	"maps"
	"strings"
	"testing"
)

func TestParseText(t *testing.T) {
	for _, c := range []struct {
		name, in     string
		sums, series map[string]float64
	}{
		{"unlabelled", "# HELP a x\n# TYPE a gauge\na 2\n",
			map[string]float64{"a": 2}, map[string]float64{"a": 2}},
		{"labels summed under the name", "b{x=\"1\"} 1.5\nb{x=\"2\"} 2\n",
			map[string]float64{"b": 3.5}, map[string]float64{`b{x="1"}`: 1.5, `b{x="2"}`: 2}},
		{"no sample", "\nnovalue\nc notanumber\n",
			map[string]float64{}, map[string]float64{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			sums, series, err := ParseText(strings.NewReader(c.in))
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(sums, c.sums) || !maps.Equal(series, c.series) {
				t.Errorf("ParseText(%q) = %v, %v; want %v, %v", c.in, sums, series, c.sums, c.series)
			}
		})
	}
}
