package probes

import (
	"sync"
	"testing"
	"time"
)

// A member waits, before it joins a chain, for the members of lower rank
// the chain awaits, until each has arrived or its seat is freed; never
// for those of its rank or higher.
func TestArrivalsAwaitLowerRanks(t *testing.T) {
	for _, tc := range []struct {
		name  string
		seats []int // ranks the chain awaits
		rank  int   // of the member that joins
		// steps, in order, each arrive(rank) or free(seat index); the
		// member may join after the first steps (blocked until then).
		steps  []func(a *arrivals, ss []*seat)
		joinAt int
	}{
		{"nothing awaited", nil, 2, nil, 0},
		{"only higher ranks", []int{1, 2}, 1, []func(*arrivals, []*seat){arrive(1)}, 0},
		{"the leader arrives", []int{0}, 1, []func(*arrivals, []*seat){arrive(0)}, 1},
		{"the leader's start ends without it", []int{0}, 1, []func(*arrivals, []*seat){freeSeat(0)}, 1},
		{"two lower ranks", []int{0, 1}, 2, []func(*arrivals, []*seat){arrive(0), arrive(1)}, 2},
		{"a free after an arrival is a no-op", []int{0, 0}, 1, []func(*arrivals, []*seat){arrive(0), freeSeat(0), freeSeat(1)}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var a arrivals
			var ss []*seat
			for _, r := range tc.seats {
				ss = append(ss, a.expect(r))
			}
			joined := make(chan struct{})
			go func() {
				a.await(tc.rank)
				close(joined)
			}()
			for i := 0; i <= len(tc.steps); i++ {
				if i < tc.joinAt {
					select {
					case <-joined:
						t.Fatalf("joined after %d steps, want after %d", i, tc.joinAt)
					case <-time.After(20 * time.Millisecond):
					}
				} else {
					select {
					case <-joined:
					case <-time.After(5 * time.Second):
						t.Fatalf("still waiting after %d steps, want joined after %d", i, tc.joinAt)
					}
					break
				}
				tc.steps[i](&a, ss)
			}
		})
	}
}

func arrive(rank int) func(*arrivals, []*seat) {
	return func(a *arrivals, _ []*seat) { a.arrive(rank) }
}

func freeSeat(i int) func(*arrivals, []*seat) {
	return func(_ *arrivals, ss []*seat) { ss[i].free() }
}

// seatedProbe is a fake probe with a seat on a chain: its Start runs start.
type seatedProbe struct {
	fakeProbe
	a    *arrivals
	rank int
}

func (p seatedProbe) seats() []*seat { return []*seat{p.a.expect(p.rank)} }

// Group.Start makes the chains await the probes with seats on them: a
// follower started at once with its leader joins after the leader has
// (or after the leader's Start returned, when it never does), whichever
// of the two starts first.
func TestGroupStartAwaitsLeaders(t *testing.T) {
	for _, leaderJoins := range []bool{true, false} {
		var a arrivals
		var mu sync.Mutex
		var order []string
		note := func(s string) {
			mu.Lock()
			defer mu.Unlock()
			order = append(order, s)
		}
		followerIn := make(chan struct{})
		leader := seatedProbe{fakeProbe{"leader", func(Config) {
			<-followerIn // the follower is started (and waits) first
			time.Sleep(20 * time.Millisecond)
			note("leader")
			if leaderJoins {
				a.arrive(0)
			}
		}}, &a, 0}
		follower := fakeProbe{"follower", func(Config) {
			close(followerIn)
			a.await(1)
			note("follower")
		}}
		Start(Config{}, nil, follower, leader)
		if len(order) != 2 || order[0] != "leader" {
			t.Errorf("leader joins %v: order %v, want the leader first", leaderJoins, order)
		}
		if len(a.pending) != 0 {
			t.Errorf("leader joins %v: %d seats left awaited after the start", leaderJoins, len(a.pending))
		}
	}
}
