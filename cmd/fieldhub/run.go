package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// version, when set at build time with -ldflags "-X main.version=...",
// names the build; `make build` sets it from git describe. Without it the
// module version and VCS revision of the build info are used.
var version = ""

// run is the whole program, callable in-process by tests. Its error's
// exit code is exitCode(err).
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) < 2 {
		writeTopUsage(stderr)
		return usageErr("no command given")
	}
	switch args[1] {
	case "serve":
		err := serve(ctx, args[2:], getenv, stdout, stderr)
		if errors.Is(err, errHelp) {
			return nil
		}
		return err
	case "device", "token", "command", "alert":
		return adminCLI(ctx, args[1], args[2:], getenv, stdout, stderr)
	case "version":
		return printVersion(args[2:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		if len(args) > 2 {
			// fieldhub help device [create] is fieldhub device [create] --help.
			return run(ctx, append(append([]string{args[0]}, args[2:]...), "--help"), getenv, stdout, stderr)
		}
		writeTopUsage(stdout)
		return nil
	}
	writeTopUsage(stderr)
	return usageErr("unknown command %q", args[1])
}

// buildVersion says what this binary was built from.
type buildVersion struct {
	Version  string `json:"version"`
	Revision string `json:"revision"`
	Time     string `json:"time,omitempty"`
	Modified bool   `json:"modified"`
	Go       string `json:"go"`
	Platform string `json:"platform"`
}

func readBuildVersion() buildVersion {
	v := buildVersion{Version: version, Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v.Version == "" {
			v.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				v.Revision = s.Value
			case "vcs.time":
				v.Time = s.Value
			case "vcs.modified":
				v.Modified = s.Value == "true"
			}
		}
	}
	if v.Version == "" {
		v.Version = "(devel)"
	}
	return v
}

func printVersion(args []string, stdout, stderr io.Writer) error {
	asJSON := false
	for _, a := range args {
		switch a {
		case "--json", "-json":
			asJSON = true
		case "-h", "-help", "--help":
			fmt.Fprintln(stdout, "Usage: fieldhub version [--json]\n\nPrints the version, the source revision and the Go toolchain of this binary.")
			return nil
		default:
			fmt.Fprintln(stderr, "Usage: fieldhub version [--json]")
			return usageErr("version: unexpected argument %q", a)
		}
	}
	v := readBuildVersion()
	if asJSON {
		b, _ := json.MarshalIndent(v, "", "  ") // strings and a bool
		fmt.Fprintf(stdout, "%s\n", b)
		return nil
	}
	rev := ""
	switch {
	case v.Revision != "":
		rev = ", revision " + v.Revision
		if v.Modified {
			rev += " (modified)"
		}
	case version == "":
		// Neither -ldflags nor VCS stamping named the source: say so
		// rather than print a version that looks meaningful.
		rev = ", revision unknown (built without -ldflags -X main.version and without VCS stamping: -buildvcs=false or outside a git checkout; make build sets the version)"
	}
	fmt.Fprintf(stdout, "fieldhub %s%s, %s %s\n", v.Version, rev, v.Go, v.Platform)
	return nil
}
