// Command fieldhub is the Fieldhub IoT telemetry hub: `fieldhub serve` runs
// it; the other subcommands administer a running hub over its REST API.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "fieldhub:", err)
		stop()
		os.Exit(exitCode(err))
	}
}
