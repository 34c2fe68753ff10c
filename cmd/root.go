// Package cmd is whyslow's command line: one constructor per command
// (NewCmdX with an XOptions struct and a private run function that tests can
// replace), and Main, which maps errors to exit codes.
package cmd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/escape"
)

// Version is set at build time (-ldflags -X); "dev" otherwise.
var Version = "dev"

// Exit codes.
const (
	ExitOK       = 0 // diagnosis done (findings or not), or command succeeded
	ExitError    = 1 // the command failed
	ExitUsage    = 2 // bad flags or arguments
	ExitFindings = 3 // --fail-on matched a finding
)

// IO is where a command reads and writes.
type IO struct {
	In     io.Reader
	Out    io.Writer
	ErrOut io.Writer
	// ErrTTY says ErrOut is an interactive terminal (live progress goes there).
	ErrTTY bool
	// OutTTY says Out is an interactive terminal.
	OutTTY bool
	// ErrWidth is the width of the terminal ErrOut is, 0 when unknown.
	ErrWidth int
}

// SystemIO returns the process's standard streams.
func SystemIO() *IO {
	return systemIO(os.Stdin, os.Stdout, os.Stderr, terminal, os.Getenv)
}

// systemIO describes the streams as term sees them: stderr is an
// interactive terminal (for the live progress line) when it is a terminal
// and the environment is not CI.
func systemIO(in, out, errOut *os.File, term func(*os.File) (bool, int), getenv func(string) string) *IO {
	ios := &IO{In: in, Out: out, ErrOut: errOut}
	ios.OutTTY, _ = term(out)
	if tty, width := term(errOut); tty && getenv("CI") == "" {
		ios.ErrTTY, ios.ErrWidth = true, width
	}
	return ios
}

// terminal says whether f is a terminal, and its width in columns (0 when
// unknown).
func terminal(f *os.File) (bool, int) {
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
		return false, 0
	}
	if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil {
		return true, int(ws.Col)
	}
	return true, 0
}

// usageError marks a mistake in how the command was called.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// exitError carries a specific exit code with its message.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

// NewRootCmd builds the whole command tree.
func NewRootCmd(ios *IO) *cobra.Command {
	root := &cobra.Command{
		Use:   "whyslow",
		Short: "Find the root cause of slow storage on this host",
		Long: `whyslow watches the block layer, the scheduler, exec and uevents with eBPF,
puts every event on one timeline, evaluates declarative rules and prints a ranked
report of causes with their evidence and a remedy.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version(),
	}
	root.SetOut(ios.Out)
	root.SetErr(ios.ErrOut)
	root.SetIn(ios.In)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())}
	})
	root.AddCommand(
		newCmdDiagnose(ios),
		NewCmdAnalyze(ios, nil),
		NewCmdProbes(ios, nil),
		NewCmdServe(ios, nil),
		NewCmdSelftest(ios),
		newCmdTrace(ios),
		newCmdRules(ios),
		newCmdVersion(ios),
	)
	return root
}

// Main runs the command line with os.Args and returns the exit code.
func Main(ios *IO) int {
	return Execute(ios, os.Args[1:])
}

// Execute runs the command line with args and returns the exit code; errors
// are printed as one line on ios.ErrOut.
func Execute(ios *IO, args []string) int {
	return execute(ios, NewRootCmd(ios), args)
}

// execute runs a command tree. A panic is a bug, never the user's doing:
// it is one line on stderr and exit code 1, like any other failure (Go's
// own exit code for a panic, 2, would read as bad flags).
func execute(ios *IO, root *cobra.Command, args []string) (code int) {
	defer func() {
		if x := recover(); x != nil {
			msg := escape.String(strings.Join(strings.Fields(fmt.Sprint(x)), " "))
			fmt.Fprintf(ios.ErrOut, "whyslow: internal error: %s (this is a bug; please report it with the command line and its input)\n", msg)
			code = ExitError
		}
	}()
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return ExitOK
	}
	// Errors name host strings (a device name from a trace, a rule file
	// path): escaped, they cannot recolor the terminal or start a line.
	// Errors of several lines (each mistake in a rule file) keep their lines.
	var ee exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintln(ios.ErrOut, escape.Lines(ee.msg))
		}
		return ee.code
	}
	fmt.Fprintf(ios.ErrOut, "whyslow: %s\n", escape.Lines(err.Error()))
	var ue usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		return ExitUsage
	}
	return ExitError
}

// isCobraUsage recognizes cobra's own argument errors (unknown command,
// wrong number of arguments), which it does not route through the flag
// error function.
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "accepts ", "requires at least", "requires at most", "unknown flag", "unknown shorthand"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

func version() string {
	v := Version
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 && v == "dev" {
				v = "dev-" + s.Value[:12]
			}
		}
	}
	return v
}

func newCmdVersion(ios *IO) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print whyslow's version",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(ios.Out, "whyslow %s\n", version())
			return err
		},
	}
}
