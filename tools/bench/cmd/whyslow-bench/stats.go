package main

import (
	"math"
	"slices"
)

// quantile of the values (linear between the two nearest ranks); NaN for none.
func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	pos := q * float64(len(s)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	return s[lo] + (s[hi]-s[lo])*(pos-float64(lo))
}

func median(v []float64) float64 { return quantile(v, 0.5) }

// spread is the median and the quartiles of a sample.
type spread struct {
	Median float64 `json:"median"`
	P25    float64 `json:"p25"`
	P75    float64 `json:"p75"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

func spreadOf(v []float64) spread {
	return spread{Median: median(v), P25: quantile(v, 0.25), P75: quantile(v, 0.75), Min: quantile(v, 0), Max: quantile(v, 1), N: len(v)}
}
