package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// scrape sums each metric over its labels and keeps each series alone:
// the serve section's losses by probe and reason come from the series.
func TestScrape(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`# HELP whyslow_lost_events_total events lost
# TYPE whyslow_lost_events_total counter
whyslow_lost_events_total{probe="syscall",reason="call histogram map full"} 12
whyslow_lost_events_total{probe="uevent",reason="uevent timeline full"} 3e+06
whyslow_flight_recorder_bytes 6.7e+07
process_cpu_seconds_total 41.5
`))
	}))
	defer srv.Close()
	sums, series, err := scrape(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]float64{
		"whyslow_lost_events_total": 3000012, "whyslow_flight_recorder_bytes": 67e6, "process_cpu_seconds_total": 41.5,
	} {
		if sums[name] != want {
			t.Errorf("sum of %s = %v, want %v", name, sums[name], want)
		}
	}
	if got := series[`whyslow_lost_events_total{probe="syscall",reason="call histogram map full"}`]; got != 12 {
		t.Errorf("the syscall probe's series = %v, want 12 (series: %v)", got, series)
	}
}
