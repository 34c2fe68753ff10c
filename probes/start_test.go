package probes

import (
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// fakeProbe is a probe whose Start runs start (pure logic: nothing loads).
type fakeProbe struct {
	name  string
	start func(cfg Config)
}

func (p fakeProbe) Decl() Decl { return Decl{Name: p.name} }

func (p fakeProbe) Start(cfg Config, _ Sink) (Running, event.ProbeStatus) {
	p.start(cfg)
	return nil, event.ProbeStatus{Name: p.name, Status: event.StatusUnavailable, Reason: "fake"}
}

// Work a probe defers with afterStart (reading kallsyms) waits until every
// probe of the same Group.Start has started, so that it does not take the
// CPUs from their loads; outside a Group it runs at once.
func TestAfterStartWaitsForEveryProbe(t *testing.T) {
	aStarted := make(chan struct{})
	ran := make(chan struct{})
	ranEarly := false
	a := fakeProbe{"a", func(cfg Config) {
		cfg.afterStart(func() { close(ran) })
		close(aStarted)
	}}
	b := fakeProbe{"b", func(Config) {
		<-aStarted
		// Deferred work not held back would run now: give it the time to.
		select {
		case <-ran:
			ranEarly = true
		case <-time.After(100 * time.Millisecond):
		}
	}}
	Start(Config{}, nil, a, b)
	<-ran
	if ranEarly {
		t.Error("work deferred by probe a ran while probe b was still starting")
	}

	alone := make(chan struct{})
	Config{}.afterStart(func() { close(alone) })
	<-alone // outside a Group: at once (else the test hangs)
}
