package probes

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/scenario"
)

// wbt on the real kernel (probe writeback): a direct random reader and a
// buffered bulk writer on a disk (a disk-backed loop device here, the
// test disk of the kernel matrix in its guests) whose wbt target is
// 1 ms make wbt rescale the device's depth (its monitoring window in ms, as
// long as 100 ms and never under 1 ms) and trace the latencies of its
// windows (wbt_stat) or the latencies that exceeded the target (wbt_lat); with
// wbt off (wbt_lat_usec 0), the same loads give none of them.
func TestWbtLive(t *testing.T) {
	blkNeedRoot(t)
	for _, tc := range []struct {
		name, lat string
		want      bool
	}{{"on", "1000", true}, {"off", "0", false}} {
		t.Run(tc.name, func(t *testing.T) {
			dev := "" // a disk-backed loop device, or in the matrix a null_blk disk
			if scenario.InMatrix() {
				// qemu's disks serve reads faster than the target under
				// a flood, run after run: a null_blk disk whose every
				// request takes 2 ms misses it in every window with
				// reads and writes; a small background dirty limit keeps
				// the flusher writing under the emulated CPU
				dev = scenario.NullBlk(t, 1<<30, 2*time.Millisecond, 64)
				scenario.DirtyLimits(t, 0, 4<<20)
			} else {
				dev = scenario.DiskLoop(t, 1<<30)
			}
			setWbtLat(t, dev, tc.lat)
			sink := &blkSink{}
			r, st := (writebackProbe{}).Start(Config{}, sink)
			if r == nil {
				t.Fatalf("writeback probe: %s", st.Reason)
			}
			if strings.Contains(st.Reason, "wbt") {
				t.Fatalf("wbt not traced: %s", st.Reason)
			}
			on := "--filename=/dev/" + dev
			jobs := []*scenario.NamedJob{
				scenario.StartNamedJob(t, "reader", on, "--offset=0", "--size=256M", "--rw=randread", "--bs=4k",
					"--direct=1", "--ioengine=libaio", "--iodepth=8", "--runtime=4", "--time_based"),
				scenario.StartNamedJob(t, "bulk", on, "--offset=256M", "--size=512M", "--rw=write", "--bs=1M",
					"--runtime=4", "--time_based", "--ioengine=psync"),
			}
			for _, j := range jobs {
				if err := j.Wait(); err != nil {
					t.Fatal(err)
				}
			}
			if err := r.Stop(); err != nil {
				t.Fatal(err)
			}
			for _, l := range sink.losses {
				t.Errorf("loss: %+v", l)
			}
			var steps, windows, missed int
			for _, e := range sink.events {
				switch e := e.(type) {
				case event.WbtStep:
					if e.Dev.Name != dev {
						continue
					}
					steps++
					if e.Window < time.Millisecond || e.Window > 100*time.Millisecond {
						t.Errorf("step %+v: window %v, want 1 to 100 ms", e, e.Window)
					}
				case event.WbtLat:
					if e.Dev.Name == dev && e.From == "wbt_lat" {
						missed++
					}
				case event.WbtWindow:
					if e.Dev.Name != dev {
						continue
					}
					windows++
					if e.Reads > 0 && (e.ReadMin > e.ReadMean || e.ReadMean > e.ReadMax) {
						t.Errorf("window %+v: read latencies out of order", e)
					}
				}
			}
			t.Logf("wbt_lat_usec %s on %s: %d steps, %d windows traced, %d latencies over the target", tc.lat, dev, steps, windows, missed)
			switch {
			case tc.want && (steps == 0 || windows+missed == 0):
				t.Errorf("wbt on: %d steps, %d windows, %d missed; want steps and windows", steps, windows, missed)
			case !tc.want && steps+windows+missed > 0:
				t.Errorf("wbt off: %d steps, %d windows, %d missed; want none", steps, windows, missed)
			}
		})
	}
}

// setWbtLat sets dev's queue/wbt_lat_usec, restored on cleanup.
func setWbtLat(t *testing.T, dev, usec string) {
	t.Helper()
	p := "/sys/block/" + dev + "/queue/wbt_lat_usec"
	old, err := os.ReadFile(p)
	if err != nil {
		scenario.Skip(t, "no wbt on %s: %v", dev, err)
	}
	if err := os.WriteFile(p, []byte(usec), 0o644); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	t.Cleanup(func() { os.WriteFile(p, old, 0o644) })
}
