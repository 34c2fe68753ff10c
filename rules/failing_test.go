package rules

import (
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// scsiTimeouts adds n SCSI read timeouts on d, as the devfault probe sees
// them: each command's timeout (scsi_dispatch_cmd_timeout), the request
// given back after its 30 s deadline, and the host's error handler woken.
func (s *scenario) scsiTimeouts(d event.Device, n int) *scenario {
	for i := range n {
		t := float64(3000 + 4000*i)
		s.tl.Add(event.DeviceFault{Time: at(t), Dev: d, Kind: event.FaultSCSITimeout, Op: "READ_10"})
		s.tl.Add(event.DeviceFault{Time: at(t), Dev: d, Kind: event.FaultErrorHandler})
		s.tl.Add(event.DeviceFault{Time: at(t + 1), Dev: d, Kind: event.FaultTimeout, Op: "read",
			InFlight: 3 * time.Second, Timeout: 3 * time.Second})
	}
	s.tl.Add(event.Requeues{Time: at(20_000), Dev: d, Count: uint64(n), TimedOut: uint64(n)})
	return s
}
