package main

import (
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fabric-project/fabric/aoe/initiator"
	"github.com/fabric-project/fabric/aoe/wire"
)

func aoeCommand() *cli.Command {
	iface := &cli.StringFlag{Name: "iface", Aliases: []string{"i"}, Required: true, Usage: "network interface facing the storage nodes"}
	window := &cli.IntFlag{Name: "window", Value: 16, Usage: "outstanding frames"}
	wait := &cli.DurationFlag{Name: "wait", Value: 500 * time.Millisecond, Usage: "how long to collect answers to discovery"}
	return &cli.Command{
		Name:  "aoe",
		Usage: "talk to AoE storage directly from this machine (userspace initiator; needs root)",
		Subcommands: []*cli.Command{
			{
				Name: "discover", Usage: "list the volumes answering on an interface",
				Flags: []cli.Flag{iface, wait, outputFlag},
				Action: func(c *cli.Context) error {
					in, err := initiator.New(c.String("iface"), initiator.Config{})
					if err != nil {
						return err
					}
					defer in.Close()
					ts, err := in.Discover(c.Context, wire.BroadcastShelf, wire.BroadcastSlot, c.Duration("wait"))
					if err != nil {
						return err
					}
					j, err := wantJSON(c)
					if err != nil {
						return err
					}
					if j {
						// The same shape as every other command's JSON:
						// snake_case keys, MACs as strings.
						type target struct {
							Volume     string `json:"volume"`
							Shelf      uint16 `json:"shelf"`
							Slot       uint8  `json:"slot"`
							MAC        string `json:"mac"`
							MaxSectors int    `json:"max_sectors"`
							Buffers    uint16 `json:"buffers"`
							Firmware   uint16 `json:"firmware"`
							Config     string `json:"config"`
						}
						out := []target{}
						for _, t := range ts {
							out = append(out, target{t.Addr(), t.Shelf, t.Slot, t.MAC.String(), t.MaxSectors, t.BufCount, t.Firmware, t.Config})
						}
						return emit(c, out)
					}
					w := newTable(c.App.Writer)
					fmt.Fprintln(w, "VOLUME\tTARGET MAC\tSECTORS/FRAME\tBUFFERS\tCONFIG")
					for _, t := range ts {
						fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%q\n", t.Addr(), t.MAC, t.MaxSectors, t.BufCount, t.Config)
					}
					return w.Flush()
				},
			},
			{
				Name: "read", Usage: "copy bytes from a volume to stdout or a file", ArgsUsage: "e<shelf>.<slot>",
				Flags: []cli.Flag{iface, window, wait,
					&cli.Int64Flag{Name: "offset", Usage: "byte offset (multiple of 512)"},
					&cli.Int64Flag{Name: "length", Usage: "bytes (multiple of 512; default: to the end)"},
					&cli.StringFlag{Name: "out", Usage: "file to write (default stdout)"}},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("usage: fabric aoe read --iface IF e<shelf>.<slot>")
					}
					in, d, err := openAddr(c, c.Args().First())
					if err != nil {
						return err
					}
					defer in.Close()
					n := c.Int64("length")
					if n == 0 {
						n = d.Size() - c.Int64("offset")
					}
					var w io.Writer = c.App.Writer
					if p := c.String("out"); p != "" {
						f, err := os.Create(p)
						if err != nil {
							return err
						}
						defer f.Close()
						w = f
					}
					_, err = io.Copy(w, io.NewSectionReader(d, c.Int64("offset"), n))
					return err
				},
			},
			{
				Name: "write", Usage: "copy a file (or stdin) onto a volume and flush", ArgsUsage: "e<shelf>.<slot> FILE|-",
				Flags: []cli.Flag{iface, window, wait, &cli.Int64Flag{Name: "offset", Usage: "byte offset (multiple of 512)"}},
				Action: func(c *cli.Context) error {
					if c.NArg() != 2 {
						return fmt.Errorf("usage: fabric aoe write --iface IF e<shelf>.<slot> FILE|-")
					}
					var r io.Reader = os.Stdin
					if p := c.Args().Get(1); p != "-" {
						f, err := os.Open(p)
						if err != nil {
							return err
						}
						defer f.Close()
						r = f
					}
					args := c.Args().Slice()
					in, d, err := openAddr(c, args[0])
					if err != nil {
						return err
					}
					defer in.Close()
					buf := make([]byte, 1<<20)
					off := c.Int64("offset")
					for {
						n, err := io.ReadFull(r, buf)
						if n > 0 {
							m := (n + 511) / 512 * 512
							clear(buf[n:m])
							if _, werr := d.WriteAt(buf[:m], off); werr != nil {
								return werr
							}
							off += int64(m)
						}
						if err == io.EOF || err == io.ErrUnexpectedEOF {
							break
						}
						if err != nil {
							return err
						}
					}
					if err := d.Flush(); err != nil {
						return err
					}
					fmt.Fprintf(c.App.ErrWriter, "wrote %d bytes to %s\n", off-c.Int64("offset"), args[0])
					return nil
				},
			},
			benchCommand(iface, window, wait),
		},
	}
}

func openAddr(c *cli.Context, addr string) (*initiator.Initiator, *initiator.Device, error) {
	shelf, slot, err := wire.ParseAddr(addr)
	if err != nil {
		return nil, nil, err
	}
	in, err := initiator.New(c.String("iface"), initiator.Config{Window: c.Int("window"), OneFrame: c.Bool("one-frame")})
	if err != nil {
		return nil, nil, err
	}
	d, err := in.Open(c.Context, shelf, slot, c.Duration("wait"))
	if err != nil {
		in.Close()
		return nil, nil, err
	}
	return in, d, nil
}

// benchResult is one line of `fabric aoe bench -o json`.
type benchResult struct {
	Volume  string  `json:"volume"`
	Mode    string  `json:"mode"`
	Window  int     `json:"window"`
	Block   int     `json:"block_bytes"`
	Seconds float64 `json:"seconds"`
	Ops     int64   `json:"ops"`
	Errors  int64   `json:"errors"`
	MBps    float64 `json:"mb_per_s"`
	IOPS    float64 `json:"iops"`
	P50us   float64 `json:"p50_us"`
	P99us   float64 `json:"p99_us"`
	MaxUs   float64 `json:"max_us"` // the slowest I/O: a failover's stall
	Sectors int     `json:"sectors_per_frame"`
	Workers int     `json:"workers"`
	Bytes   int64   `json:"bytes"`
}

func benchCommand(iface, window, wait cli.Flag) *cli.Command {
	return &cli.Command{
		Name:      "bench",
		Usage:     "measure a volume: sequential or random reads or writes with a window of outstanding frames",
		ArgsUsage: "e<shelf>.<slot>",
		Flags: []cli.Flag{iface, window, wait, outputFlag,
			&cli.StringFlag{Name: "mode", Value: "seqread", Usage: "seqread, seqwrite, randread or randwrite"},
			&cli.IntFlag{Name: "bs", Usage: "bytes per I/O (default: one full frame for sequential, 4096 for random)"},
			&cli.DurationFlag{Name: "duration", Value: 5 * time.Second},
			&cli.Int64Flag{Name: "span", Usage: "bytes of the volume to touch, from the start (default: all)"},
			&cli.BoolFlag{Name: "one-frame", Usage: "one frame per system call, sent and received, as most initiators do (default: replies read in batches, the requests they free sent together)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("usage: fabric aoe bench --iface IF e<shelf>.<slot>")
			}
			in, d, err := openAddr(c, c.Args().First())
			if err != nil {
				return err
			}
			defer in.Close()
			mode := c.String("mode")
			random := mode == "randread" || mode == "randwrite"
			write := mode == "seqwrite" || mode == "randwrite"
			if !slices.Contains([]string{"seqread", "seqwrite", "randread", "randwrite"}, mode) {
				return fmt.Errorf("--mode %q: want seqread, seqwrite, randread or randwrite", mode)
			}
			bs := c.Int("bs")
			if bs == 0 {
				bs = d.MaxSectors * wire.SectorSize
				if random {
					bs = 4096
				}
			}
			if bs%wire.SectorSize != 0 || bs <= 0 {
				return fmt.Errorf("--bs %d: want a positive multiple of 512", bs)
			}
			span := c.Int64("span")
			if span == 0 || span > d.Size() {
				span = d.Size()
			}
			blocks := span / int64(bs)
			if blocks < 1 {
				return fmt.Errorf("volume smaller than one block")
			}
			frames := (bs/wire.SectorSize + d.MaxSectors - 1) / d.MaxSectors
			workers := max(1, c.Int("window")/frames)
			b := &aoeBench{d: d, write: write, random: random, bs: bs, blocks: blocks,
				frameBytes: d.MaxSectors * wire.SectorSize, frames: frames}
			start := time.Now()
			b.run(workers, c.Duration("duration"))
			secs := time.Since(start).Seconds()
			if b.submitErr != nil {
				return b.submitErr
			}
			var all []time.Duration
			for _, io := range b.ios {
				all = append(all, io.lat...)
			}
			slices.Sort(all)
			pct := func(p float64) float64 {
				if len(all) == 0 {
					return 0
				}
				return float64(all[int(float64(len(all)-1)*p)].Microseconds())
			}
			ops := b.nops.Load()
			r := benchResult{Volume: c.Args().First(), Mode: mode, Window: c.Int("window"), Block: bs, Seconds: secs,
				Ops: ops, Errors: b.nerr.Load(), MBps: float64(ops) * float64(bs) / secs / 1e6, IOPS: float64(ops) / secs,
				P50us: pct(0.50), P99us: pct(0.99), MaxUs: pct(1), Sectors: d.MaxSectors, Workers: workers, Bytes: ops * int64(bs)}
			if j, err := wantJSON(c); err != nil || j {
				if err != nil {
					return err
				}
				return emit(c, r)
			}
			fmt.Fprintf(c.App.Writer, "%s %s: %.1f MB/s, %.0f IOPS, p50 %.0f µs, p99 %.0f µs (%d-byte I/O, window %d, %d errors)\n",
				r.Volume, mode, r.MBps, r.IOPS, r.P50us, r.P99us, bs, r.Window, r.Errors)
			return nil
		},
	}
}

// aoeBench keeps a fixed number of I/Os in flight on a device. Each I/O's
// frames go out with Device.Submit, and the completion callback, running
// on the initiator's receive goroutine, starts the next I/O: no goroutine
// wakes per I/O, and replies handled in one batch send their follow-ups
// in one sendmmsg. The client then costs little beside the target it
// measures.
type aoeBench struct {
	d             *initiator.Device
	write, random bool
	bs            int
	blocks        int64
	frameBytes    int
	frames        int // frames per I/O

	deadline   time.Time
	next       atomic.Int64
	nops, nerr atomic.Int64
	stop       atomic.Bool
	submitErr  error // first synchronous Submit error; set before stop
	errOnce    sync.Once
	wg         sync.WaitGroup
	ios        []*benchIO
}

type benchIO struct {
	b      *aoeBench
	buf    []byte
	blk    int64
	t0     time.Time
	left   atomic.Int32
	failed atomic.Bool
	lat    []time.Duration
	rng    *rand.Rand
	done   func(error) // frameDone, bound once
}

func (b *aoeBench) run(ios int, d time.Duration) {
	b.deadline = time.Now().Add(d)
	for i := 0; i < ios; i++ {
		io := &benchIO{b: b, buf: make([]byte, b.bs), lat: make([]time.Duration, 0, 1<<16),
			rng: rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))}
		for j := range io.buf {
			io.buf[j] = byte(j*7 + i)
		}
		io.done = io.frameDone
		b.ios = append(b.ios, io)
	}
	for _, io := range b.ios {
		b.wg.Add(1)
		io.start()
	}
	b.wg.Wait()
}

func (io *benchIO) start() {
	b := io.b
	if b.random {
		io.blk = io.rng.Int64N(b.blocks)
	} else {
		io.blk = (b.next.Add(1) - 1) % b.blocks
	}
	frames := b.frames
	io.failed.Store(false)
	io.left.Store(int32(frames))
	io.t0 = time.Now()
	for f := 0; f < frames; f++ {
		lo := f * b.frameBytes
		hi := min(lo+b.frameBytes, b.bs)
		if err := b.d.Submit(b.write, io.buf[lo:hi], io.blk*int64(b.bs)+int64(lo), io.done); err != nil {
			// Not a lost frame but a broken setup (window too small,
			// socket gone): stop the run rather than spin on it.
			b.errOnce.Do(func() { b.submitErr = err })
			b.stop.Store(true)
			io.failed.Store(true)
			if io.left.Add(-int32(frames-f)) == 0 {
				io.finish()
			}
			return
		}
	}
}

func (io *benchIO) frameDone(err error) {
	if err != nil {
		io.failed.Store(true)
	}
	if io.left.Add(-1) == 0 {
		io.finish()
	}
}

func (io *benchIO) finish() {
	b := io.b
	now := time.Now()
	if io.failed.Load() {
		b.nerr.Add(1)
	} else {
		io.lat = append(io.lat, now.Sub(io.t0))
		b.nops.Add(1)
	}
	if !b.stop.Load() && now.Before(b.deadline) {
		io.start()
		return
	}
	b.wg.Done()
}
