package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fabric-project/fabric/controller/controllerapi"
	"github.com/fabric-project/fabric/storagenode"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "one screen: nodes by state, storage pairs and their sync, capacity in use, the N+1 reserve, instances by state, recent problems",
		Flags: []cli.Flag{outputFlag},
		Action: withClient(func(c *cli.Context, cl *controllerapi.Client) error {
			st, err := cl.Status(c.Context)
			if err != nil {
				return err
			}
			return show(c, st, func(w io.Writer) { statusTable(w, st, time.Now()) })
		}),
	}
}

func statusTable(w io.Writer, st controllerapi.Status, now time.Time) {
	n := st.Nodes
	fmt.Fprintf(w, "controller:\tup %s (since %s), %d events\n", now.Sub(st.Controller.Started).Round(time.Second), st.Controller.Started.Local().Format(time.DateTime), st.Controller.Events)
	fmt.Fprintf(w, "fabric CA:\t%s\n", st.Controller.CAPin)
	fmt.Fprintf(w, "hardware nodes:\t%d: %d alive, %d dead, %d not reporting, %d drained, %d fenced\n", n.HWNodes, n.Alive, n.Dead, n.NotReported, n.Drained, n.Fenced)
	fmt.Fprintf(w, "storage nodes:\t%d\n", n.Storage)
	if len(st.Pairs) == 0 {
		fmt.Fprintf(w, "storage pairs:\tnone\n")
	}
	for i, p := range st.Pairs {
		label := ""
		if i == 0 {
			label = "storage pairs:"
		}
		owner := "owner " + p.Owner
		if p.Owner == "" {
			owner = "no owner"
		}
		free := "free space unknown"
		if p.FreeBytes >= 0 {
			free = storagenode.FormatSize(p.FreeBytes) + " free"
		}
		fmt.Fprintf(w, "%s\t%s (%s): %s, %s, %s\n", label, p.Name, strings.Join(p.Nodes, "+"), p.State, owner, free)
	}
	cp := st.Capacity
	fmt.Fprintf(w, "capacity in use:\t%d of %d vCPUs, %d of %d MiB (alive nodes)\n", cp.VCPUsUsed, cp.VCPUs, cp.MemoryUsedMiB, cp.MemoryMiB)
	var parts []string
	for _, s := range slices.Sorted(maps.Keys(st.Instances)) {
		parts = append(parts, fmt.Sprintf("%d %s", st.Instances[s], s))
	}
	if len(parts) == 0 {
		parts = []string{"none"}
	}
	fmt.Fprintf(w, "instances:\t%s\n", strings.Join(parts, ", "))
	if st.Reserve.Met {
		fmt.Fprintf(w, "N+1 reserve:\tmet (any one node's HA instances can restart on the others)\n")
	} else {
		fmt.Fprintf(w, "N+1 reserve:\tNOT MET\n")
		for _, s := range st.Reserve.Short {
			fmt.Fprintf(w, "  if %s failed\t%s would wait for room\n", s.Node, strings.Join(s.Waiting, ", "))
		}
	}
	if len(st.Problems) == 0 {
		fmt.Fprintf(w, "recent problems:\tnone\n")
		return
	}
	fmt.Fprintf(w, "recent problems:\t(fabric events for all)\n")
	for _, ev := range st.Problems {
		fmt.Fprintf(w, "  %s\t%s %s%s\n", ev.Time.Local().Format(time.DateTime), ev.Type, ev.Message, eventWho(ev))
	}
}
