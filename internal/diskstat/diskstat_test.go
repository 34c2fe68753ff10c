package diskstat

import (
	"os"
	"path/filepath"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tt := range []struct {
		name, line string
		want       Stat
		err        bool
	}{
		// 6.x: 17 fields; reads 10, writes 20, discards 3, flushes 4;
		// 7 in flight, 12 ms busy.
		{"17 fields", "10 1 80 5 20 2 160 9 7 12 14 3 0 24 1 4 2\n", Stat{IOs: 37, InFlight: 7, IOTicks: 12}, false},
		// 5.5-: 15 fields, no flushes.
		{"15 fields", "10 1 80 5 20 2 160 9 0 12 14 3 0 24 1", Stat{IOs: 33, IOTicks: 12}, false},
		// before 4.18: 11 fields, no discards.
		{"11 fields", "    10 1 80 5 20 2 160 9 2 12 14", Stat{IOs: 30, InFlight: 2, IOTicks: 12}, false},
		{"busy disk", "  100 0 800 50 20 0 160 30 0 950 80 0 0 0 0 0 0\n", Stat{IOs: 120, IOTicks: 950}, false},
		{"too few", "10 1 80 5", Stat{}, true},
		{"ten fields", "1 2 3 4 5 6 7 8 9 10", Stat{}, true},
		{"not a number", "10 1 80 5 x 2 160 9 0 12 14", Stat{}, true},
		{"in flight not a number", "10 1 80 5 20 2 160 9 - 12 14", Stat{}, true},
		{"io_ticks not a number", "10 1 80 5 20 2 160 9 0 - 14", Stat{}, true},
		{"empty", "", Stat{}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.line)
			if (err != nil) != tt.err || got != tt.want {
				t.Errorf("Parse(%q) = %+v, %v; want %+v, error %v", tt.line, got, err, tt.want, tt.err)
			}
		})
	}
}

func TestRead(t *testing.T) {
	sysfs := t.TempDir()
	if err := os.MkdirAll(filepath.Join(sysfs, "block", "loop0"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sysfs, "block", "loop0", "stat"), []byte("10 1 80 5 20 2 160 9 2 12 14\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := Read(sysfs, "loop0"); err != nil || got != (Stat{IOs: 30, InFlight: 2, IOTicks: 12}) {
		t.Errorf("Read = %+v, %v", got, err)
	}
	if _, err := Read(sysfs, "sda"); err == nil {
		t.Error("Read of a disk that is not there: no error")
	}
}
