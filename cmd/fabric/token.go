package main

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

func tokenCommand() *cli.Command {
	return &cli.Command{
		Name:  "token",
		Usage: "manage named API credentials (admin, or read-only for dashboards)",
		Subcommands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "make a named credential and print its secret (shown only this once)",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{&cli.BoolFlag{Name: "read-only", Usage: "may only read (GET) the API"}, outputFlag},
				Action: withName("NAME", func(c *cli.Context, cl *controllerapi.Client, name string) error {
					j, err := wantJSON(c)
					if err != nil {
						return err
					}
					kind := controllerapi.TokenAdmin
					if c.Bool("read-only") {
						kind = controllerapi.TokenReadOnly
					}
					t, err := cl.CreateAdminToken(c.Context, name, kind)
					if err != nil {
						return err
					}
					if j {
						return emit(c, t)
					}
					fmt.Fprintln(c.App.Writer, t.Secret)
					return nil
				}),
			},
			{
				Name:  "list",
				Usage: "list the named credentials (never their secrets)",
				Flags: []cli.Flag{outputFlag},
				Action: withClient(func(c *cli.Context, cl *controllerapi.Client) error {
					ts, err := cl.AdminTokens(c.Context)
					if err != nil {
						return err
					}
					return show(c, ts, func(w io.Writer) {
						fmt.Fprintln(w, "NAME\tKIND\tCREATED\tBY")
						for _, t := range ts {
							created := "-"
							if !t.Created.IsZero() {
								created = t.Created.Local().Format("2006-01-02 15:04:05")
							}
							by := t.CreatedBy
							if by == "" {
								by = "-"
							}
							fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", t.Name, t.Kind, created, by)
						}
					})
				}),
			},
			{
				Name:      "revoke",
				Usage:     "delete a named credential: calls with it are refused from now on",
				ArgsUsage: "NAME",
				Action: withName("NAME", func(c *cli.Context, cl *controllerapi.Client, name string) error {
					if err := cl.RevokeAdminToken(c.Context, name); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "revoked token %s\n", name)
					return nil
				}),
			},
		},
	}
}
