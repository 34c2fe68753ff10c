// Command whyslow finds the root cause of slow storage on a Linux host.
package main

import (
	"os"

	"github.com/whyslow/whyslow/cmd"
)

func main() {
	os.Exit(cmd.Main(cmd.SystemIO()))
}
