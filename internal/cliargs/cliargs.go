// Package cliargs adapts command lines for urfave/cli v2, which stops
// parsing flags at the first positional argument.
package cliargs

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// FlagsFirst moves positional arguments behind the flags of the command they
// belong to, so that `fabric node show hn1 -o json` works like
// `fabric node show -o json hn1` (urfave/cli v2 stops parsing flags at the
// first positional argument).
func FlagsFirst(app *cli.App, args []string) []string {
	if len(args) == 0 {
		return args
	}
	out := []string{args[0]}
	flags, cmds := app.Flags, app.Commands
	var pos []string
	for i := 1; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			pos = append(pos, args[i:]...)
			i = len(args)
		case strings.HasPrefix(a, "-") && len(a) > 1:
			out = append(out, a)
			if !strings.Contains(a, "=") && takesValue(flags, strings.TrimLeft(a, "-")) && i+1 < len(args) {
				i++
				out = append(out, args[i])
			}
		default:
			if len(pos) == 0 {
				if cmd := findCommand(cmds, a); cmd != nil {
					out = append(out, a)
					flags, cmds = cmd.Flags, cmd.Subcommands
					continue
				}
			}
			pos = append(pos, a)
		}
	}
	return append(out, pos...)
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

func takesValue(flags []cli.Flag, name string) bool {
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				dg, ok := f.(cli.DocGenerationFlag)
				return ok && dg.TakesValue()
			}
		}
	}
	return false
}

// Placeholders lists the flags whose usage holds a backquote: urfave/cli
// shows the quoted text as the flag's value placeholder and drops the
// quotes (`--hwnode-hypervisor make images-xen`), which reads as nonsense.
func Placeholders(app *cli.App) []string {
	var out []string
	check := func(path string, flags []cli.Flag) {
		for _, f := range flags {
			if d, ok := f.(cli.DocGenerationFlag); ok && strings.Contains(d.GetUsage(), "`") {
				out = append(out, strings.TrimSpace(path+" --"+f.Names()[0]))
			}
		}
	}
	var walk func(path string, cmds []*cli.Command)
	walk = func(path string, cmds []*cli.Command) {
		for _, c := range cmds {
			p := strings.TrimSpace(path + " " + c.Name)
			check(p, c.Flags)
			walk(p, c.Subcommands)
		}
	}
	check(app.Name, app.Flags)
	walk(app.Name, app.Commands)
	return out
}
