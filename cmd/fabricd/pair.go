package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fabric-project/fabric/storagenode"
	"github.com/fabric-project/fabric/storagenode/witness"
)

func witnessCommand() *cli.Command {
	return &cli.Command{
		Name:  "witness",
		Usage: "grant write ownership to the nodes of storage pairs (the third party a pair without a controller needs)",
		Description: `Answers the pair nodes' lease requests: one owner per pair at a time, a new
owner only after the old one's lease ran out, and only a node holding the
newest data. Run it on a machine that is neither node of the pair.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Value: ":7420", Usage: "HOST:PORT to serve on"},
			&cli.StringFlag{Name: "state", Value: "/var/lib/fabric/witness.json", Usage: "state file (owners, epochs, who is current)"},
			&cli.DurationFlag{Name: "lease", Value: 1500 * time.Millisecond, Usage: "ownership lease; an owner renews every third of it"},
		},
		Action: func(c *cli.Context) error {
			log, err := logger(c)
			if err != nil {
				return err
			}
			if c.Duration("lease") < 300*time.Millisecond {
				return fmt.Errorf("--lease %v: want at least 300ms", c.Duration("lease"))
			}
			w, err := witness.New(c.String("state"), c.Duration("lease"), log)
			if err != nil {
				return err
			}
			srv := &http.Server{Addr: c.String("listen"), Handler: w, ReadHeaderTimeout: 5 * time.Second}
			go func() {
				<-c.Context.Done()
				srv.Close()
			}()
			log.Info("witness serving", "listen", c.String("listen"), "lease", c.Duration("lease"))
			if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
				return err
			}
			return nil
		},
	}
}

func statusCommand(dataDir *cli.StringFlag) *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the running daemon's pair state: role, epoch, peer, sync and resync progress per volume",
		Flags: []cli.Flag{dataDir, &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json"}},
		Action: func(c *cli.Context) error {
			dir := c.String("data-dir")
			if _, ok := storagenode.RunningDaemon(dir); !ok {
				return fmt.Errorf("no storage daemon is running on %s", dir)
			}
			s, err := storagenode.ReadPairStatus(dir)
			if os.IsNotExist(err) {
				return fmt.Errorf("the daemon on %s is not in a pair (no --pair)", dir)
			}
			if err != nil {
				return err
			}
			if c.String("output") == "json" {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				return enc.Encode(s)
			}
			w := c.App.Writer
			fmt.Fprintf(w, "pair %s: %s is %s, epoch %d, peer %s %s\n", s.Pair, s.Node, s.Role, s.Epoch, s.Peer,
				map[bool]string{true: "connected", false: "not connected"}[s.PeerConnected])
			fmt.Fprintf(w, "state: %s; serving initiators: %v", s.State, s.Serving)
			if s.Role == "owner" {
				fmt.Fprintf(w, "; lease %d ms left", s.LeaseLeftMS)
			}
			fmt.Fprintln(w)
			if r := s.Resync; r != nil {
				fmt.Fprintf(w, "resync: %.1f%% (%d of %d MiB) at %.1f MiB/s, ETA %.0f s\n", r.Percent, r.DoneBytes>>20, r.TotalBytes>>20, r.RateBps/(1<<20), r.ETASeconds)
			}
			if len(s.TakenOver) > 0 {
				fmt.Fprintf(w, "serving the peer's MAC: %s\n", strings.Join(s.TakenOver, ", "))
			}
			if s.Waiting != "" {
				fmt.Fprintf(w, "waiting: %s\n", s.Waiting)
			}
			if s.LastEvent != "" {
				fmt.Fprintf(w, "last event: %s\n", s.LastEvent)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VOLUME\tNAME\tIN SYNC\tDIRTY\tPATHS")
			for _, v := range s.Volumes {
				paths := strings.Join(v.Paths, ", ")
				if paths == "" {
					paths = "none (silent)"
				}
				sync := fmt.Sprint(v.InSync)
				if v.ResyncPercent != nil {
					sync = fmt.Sprintf("resync %.0f%%", *v.ResyncPercent)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d MiB\t%s\n", v.Addr, v.Name, sync, v.DirtyBytes>>20, paths)
			}
			if age := time.Since(s.Updated); age > 3*time.Second {
				fmt.Fprintf(tw, "(status written %v ago: the daemon may be stuck)\n", age.Round(time.Second))
			}
			return tw.Flush()
		},
	}
}
