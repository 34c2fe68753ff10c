// Command vmtest runs whyslow's probe and scenario tests on Debian's cloud
// kernels under qemu (`make vmtest`). See docs/kernel-matrix.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/whyslow/whyslow/tools/vmtest"
)

func main() {
	os.Exit(run())
}

func run() int {
	home, _ := os.UserCacheDir()
	kernels := flag.String("kernel", "all", "kernels to run, comma-separated: 5.10, 6.1, 6.12 or all")
	cache := flag.String("cache", filepath.Join(home, "whyslow-vmtest"), "where kernels and apt state are kept between runs")
	out := flag.String("out", "tools/vmtest/out", "where each kernel's results go (<out>/<kernel>/)")
	timeout := flag.Duration("timeout", 25*time.Minute, "time limit of one guest, boot to power-off")
	quiet := flag.Bool("quiet", false, "show only the guests' steps and test results, not their whole consoles")
	matrix := flag.String("matrix", "", "write the kernel × probe mechanism table (Markdown) to this file")
	mirror := flag.String("mirror", "http://deb.debian.org/debian", "Debian mirror the kernels come from")
	probesRun := flag.String("probes-run", "", "only the probes tests matching this regexp (-test.run)")
	e2eRun := flag.String("e2e-run", "", "only the end-to-end tests matching this regexp (default: the matrix's own)")
	bench := flag.String("bench", "", "run the benchmark driver in each guest with these arguments instead of the tests (make bench-vm)")
	cpus := flag.Int("cpus", 2, "vCPUs of each guest (under TCG each can take a host CPU)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "vmtest: unexpected argument %q\n", flag.Arg(0))
		return 2
	}
	ks, err := vmtest.Select(strings.Split(*kernels, ","))
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmtest: -kernel: %v\n", err)
		return 2
	}
	if *cpus < 1 {
		fmt.Fprintf(os.Stderr, "vmtest: -cpus %d must be at least 1\n", *cpus)
		return 2
	}
	if *timeout <= 0 {
		fmt.Fprintf(os.Stderr, "vmtest: -timeout %v must be positive\n", *timeout)
		return 2
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "vmtest: "+format+"\n", args...)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	repo, err := os.Getwd()
	if err != nil {
		logf("%v", err)
		return 1
	}
	c := &vmtest.Config{
		Repo: repo, Cache: *cache, Out: *out, Timeout: *timeout, Log: logf, CPUs: *cpus,
		Select: vmtest.Selection{ProbesRun: *probesRun, E2ERun: *e2eRun, Bench: *bench},
		Fetcher: &vmtest.Fetcher{
			Cache: *cache, Mirror: *mirror, Keyring: "/usr/share/keyrings/debian-archive-keyring.gpg",
			MaxAge: 24 * time.Hour, Log: logf,
		},
	}
	if *quiet {
		c.Console = &vmtest.ProgressWriter{W: os.Stdout, Prefix: "  guest: "}
	} else {
		c.Console = os.Stdout
	}
	bindir, err := os.MkdirTemp("", "whyslow-vmtest-bin-")
	if err != nil {
		logf("%v", err)
		return 1
	}
	defer os.RemoveAll(bindir)
	logf("building whyslow and the test binaries (static)")
	bins, err := vmtest.BuildBinaries(ctx, repo, bindir, c.Select)
	if err != nil {
		logf("%v", err)
		return 1
	}
	var cols []vmtest.MatrixColumn
	var failed []string
	code := 0
	start := time.Now()
	for _, k := range ks {
		r := c.RunKernel(ctx, k, bins)
		release := ""
		if r.Boot != nil {
			release = r.Boot.Release
		}
		probes, _ := vmtest.ReadProbes(r.Dir)
		cols = append(cols, vmtest.MatrixColumn{Kernel: k.Name, Release: release, Probes: probes, Passed: r.Passed()})
		if r.Passed() {
			logf("%s (%s): PASS", k.Name, release)
		} else {
			logf("%s: FAIL: %v", k.Name, r.Err)
			if sum := vmtest.FailureSummary(r, 60); sum != "" {
				fmt.Fprintln(os.Stderr, sum)
			}
			code = 1
			names := vmtest.FailedTests(r)
			for _, f := range names {
				failed = append(failed, fmt.Sprintf("vmtest: %s failed: %s", k.Name, f))
			}
			if len(names) == 0 {
				failed = append(failed, fmt.Sprintf("vmtest: %s failed: %v", k.Name, r.Err))
			}
		}
		if ctx.Err() != nil {
			logf("interrupted")
			return 1
		}
	}
	table := vmtest.MatrixTable(cols)
	fmt.Fprintf(os.Stderr, "\n%s\nvmtest: %d kernel(s) in %s\n", table, len(ks), time.Since(start).Round(time.Second))
	for _, f := range failed {
		fmt.Fprintln(os.Stderr, f)
	}
	if *matrix != "" {
		os.MkdirAll(filepath.Dir(*matrix), 0o755)
		if err := os.WriteFile(*matrix, []byte(table), 0o644); err != nil {
			logf("%v", err)
			return 1
		}
	}
	return code
}
