package report

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/facts"
)

// The calls timed from an armed mode's arming are marked in the JSON:
// affected[].calls[].from_arming counts them, affected[].unfinished[]
// says lower_bound; both are left out when there are none.
func TestAffectedFromArming(t *testing.T) {
	for _, tc := range []struct {
		name         string
		from         uint64
		lower        bool
		want, absent []string
	}{
		{name: "marked", from: 1, lower: true, want: []string{`"from_arming":1`, `"lower_bound":true`}},
		{name: "none", absent: []string{`from_arming`, `lower_bound`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &facts.Process{Pid: 200, Comm: "dd", Devices: []string{"loop0"}, Total: 3 * time.Second,
				Calls:      []*facts.Call{{Syscall: "read", Total: 3 * time.Second, FromArming: tc.from}},
				Unfinished: []facts.Unfinished{{Tid: 201, Comm: "dd", Syscall: "read", Device: "loop0", InCall: time.Second, LowerBound: tc.lower}}}
			b, err := json.Marshal(affected(p))
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(b), w) {
					t.Errorf("%s: no %s", b, w)
				}
			}
			for _, n := range tc.absent {
				if strings.Contains(string(b), n) {
					t.Errorf("%s: %s, want it left out", b, n)
				}
			}
		})
	}
}
