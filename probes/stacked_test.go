package probes

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// stackingPresent on sysfs trees: a stacking driver loaded, a bio-based
// disk (no mq directory), or neither.
func TestStackingPresent(t *testing.T) {
	for _, tc := range []struct {
		name  string
		dirs  []string
		want  string // substring; "" for none
		noBlk bool
	}{
		{name: "blk-mq disks only", dirs: []string{"block/vda/mq", "block/loop0/mq", "module/loop"}, want: ""},
		{name: "bcache loaded", dirs: []string{"block/vda/mq", "fs/bcache"}, want: "driver bcache loaded"},
		{name: "dm loaded", dirs: []string{"block/vda/mq", "module/dm_mod"}, want: "driver dm_mod loaded"},
		{name: "md loaded", dirs: []string{"module/md_mod", "block/sda/mq"}, want: "driver md_mod loaded"},
		{name: "bio-based disk", dirs: []string{"block/vda/mq", "block/nvme0n1"}, want: "bio-based device nvme0n1"},
		{name: "no block devices", dirs: []string{"block"}, want: ""},
		{name: "no block directory", noBlk: true, want: "no list of block devices"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for _, d := range tc.dirs {
				if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			got := stackingPresent(root)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("stackingPresent = %q, want %q", got, tc.want)
			}
		})
	}
}
