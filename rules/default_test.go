package rules

import "testing"

func TestDefaultCompiles(t *testing.T) {
	set, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"cgroup-throttle", "device-saturated", "dirty-throttling", "failing-device", "iocost", "journal-commit-wait", "memory-reclaim", "noisy-neighbour", "nothing-found", "periodic-trigger", "queue-freeze-stall", "slow-device", "tag-starvation", "uevent-freeze", "unexplained-latency", "wbt-throttling"}
	var got []string
	for _, r := range set.Rules() {
		got = append(got, r.ID)
	}
	if len(got) != len(want) {
		t.Fatalf("rules %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("rules %v, want %v", got, want)
		}
	}
}
