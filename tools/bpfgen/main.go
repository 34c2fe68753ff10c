// Command bpfgen builds every BPF program of bpf/ into its object and Go
// bindings in probes/ with bpf2go: bpf/NAME.bpf.c gives probes/NAME_bpfel.o
// and probes/NAME_bpfel.go. It is probes/gen.go's go:generate command, so a
// new probe's program needs no generate line of its own, and every program
// is built with the same flags.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// cflags are clang's flags for every program. Kernel types come from
// bpf/include/kernel_*.h (CO-RE), not from kernel headers.
const cflags = "-O2 -g -Wall -Werror -I../bpf/include -I/usr/include/x86_64-linux-gnu -D__TARGET_ARCH_x86"

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "bpfgen: %v\n", err)
		os.Exit(1)
	}
}

// run builds each ../bpf/*.bpf.c from the probes directory, as go generate
// runs it.
func run() error {
	srcs, err := filepath.Glob("../bpf/*.bpf.c")
	if err != nil {
		return err
	}
	if len(srcs) == 0 {
		return fmt.Errorf("no ../bpf/*.bpf.c: run it from probes/ (go generate ./probes)")
	}
	sort.Strings(srcs)
	for _, src := range srcs {
		name := strings.TrimSuffix(filepath.Base(src), ".bpf.c")
		cmd := exec.Command("go", "run", "github.com/cilium/ebpf/cmd/bpf2go", "-target", "bpfel", "-cflags", cflags, name, src)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s: %w", src, err)
		}
	}
	return nil
}
