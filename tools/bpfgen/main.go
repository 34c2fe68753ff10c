// Command bpfgen builds every BPF program of bpf/ into its object and Go
// bindings in probes/ with bpf2go: bpf/NAME.bpf.c gives probes/NAME_bpfel.o
// and probes/NAME_bpfel.go. It is probes/gen.go's go:generate command, so a
// new probe's program needs no generate line of its own, and every program
// is built with the same flags. A program asks for more bpf2go arguments
// with lines of its own source such as
//
//	//bpf2go: -type submit_end
//
// (bpf2go emits the Go twin of that C type). The programs of bpf/test/ are
// built for the tests only: probes/NAME_bpfel_test.{o,go}.
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
	tests, err := filepath.Glob("../bpf/test/*.bpf.c")
	if err != nil {
		return err
	}
	sort.Strings(srcs)
	sort.Strings(tests)
	for _, src := range append(srcs, tests...) {
		name := strings.TrimSuffix(filepath.Base(src), ".bpf.c")
		args := []string{"run", "github.com/cilium/ebpf/cmd/bpf2go", "-target", "bpfel", "-cflags", cflags}
		if filepath.Base(filepath.Dir(src)) == "test" {
			args = append(args, "-output-suffix", "_test")
		}
		extra, err := directives(src)
		if err != nil {
			return err
		}
		args = append(append(args, extra...), name, src)
		cmd := exec.Command("go", args...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s: %w", src, err)
		}
	}
	return nil
}

// directives returns the bpf2go arguments that the lines "//bpf2go: ARGS"
// of a program's source ask for.
func directives(src string) ([]string, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return nil, err
	}
	var args []string
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "//bpf2go:"); ok {
			args = append(args, strings.Fields(rest)...)
		}
	}
	return args, nil
}
