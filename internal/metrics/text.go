package metrics

import (
	"bufio"
	"io"
	"strconv"
	"strings"
)

// ParseText reads a Prometheus text exposition (what /metrics serves):
// each series (name and labels, as written) with its value, and the
// values of each metric name summed over its labels. Comments and lines
// that are no sample are skipped.
func ParseText(r io.Reader) (sums, series map[string]float64, err error) {
	sums, series = map[string]float64{}, map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		full, name := line[:i], line[:i]
		if j := strings.IndexByte(name, '{'); j >= 0 {
			name = name[:j]
		}
		sums[name] += v
		series[full] += v
	}
	return sums, series, sc.Err()
}
