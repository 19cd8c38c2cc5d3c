package main

import (
	"context"
	"errors"
	"fmt"
	"io"
)

const usage = `Usage: fieldhub <command> [flags]

Commands:
  serve     run the hub (fieldhub serve --help lists every setting)
  device    manage devices on a running hub: create|list|get|rotate|delete|import
  token     manage operator API tokens: create|list|revoke
  command   send commands to devices: send <device> <name> [--params JSON] [--wait 10s] | list <device>
  version   print the version

The admin commands talk to the REST API at FIELDHUB_URL (default
http://127.0.0.1:8080) with the token in FIELDHUB_TOKEN.
`

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// run is the whole program, callable in-process by tests.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) < 2 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	switch args[1] {
	case "serve":
		err := serve(ctx, args[2:], getenv, stdout, stderr)
		if errors.Is(err, errHelp) {
			return nil
		}
		return err
	case "device", "token", "command":
		return admin(ctx, args[1], args[2:], getenv, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "fieldhub", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[1])
}
