// Package readme reads the command blocks of the README's by-hand
// sections, so that a test can run them as a reader would.
//
// A block is a fenced code block. Inside it, a line `# on NAME` (or
// `# on NAME and NAME`, text after a colon ignored) says on which machines
// the lines after it run; a line ending in a backslash continues on the
// next; a command is a line that starts with one of the command words
// below; the lines right after a command that are not commands or
// comments are the output the README shows for it.
package readme

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
)

// Step is one command of a block.
type Step struct {
	Section  string
	Line     int      // in the README, from 1
	Machines []string // where it runs, in order
	Cmd      string   // continuation lines joined
	Want     []string // the output the README shows after it
}

// commandWords start a command line; anything else after a command is
// its output.
var commandWords = []string{"bin/", "make ", "scp ", "mkdir ", "truncate ", "install ", "source ", "cp ", "systemctl ", "dpkg ", "editor "}

// IsCommand reports whether a block line is a command.
func IsCommand(line string) bool {
	for _, w := range commandWords {
		if strings.HasPrefix(line, w) {
			return true
		}
	}
	return false
}

// Parse returns the steps of the named sections (their `## ` titles), in
// README order. Every named section must exist, and every command in it
// must follow a `# on` line naming machines from known.
func Parse(r io.Reader, sections, known []string) ([]Step, error) {
	var steps []Step
	seen := map[string]bool{}
	sc := bufio.NewScanner(r)
	var (
		n        int
		section  string
		inBlock  bool
		machines []string
		cont     *Step
		last     *Step // the command output lines belong to
	)
	for sc.Scan() {
		n++
		line := sc.Text()
		if !inBlock && strings.HasPrefix(line, "## ") {
			section = strings.TrimPrefix(line, "## ")
			continue
		}
		if strings.HasPrefix(line, "```") {
			inBlock = !inBlock
			machines, cont, last = nil, nil, nil
			continue
		}
		if !inBlock || !slices.Contains(sections, section) {
			continue
		}
		seen[section] = true
		trimmed := strings.TrimSpace(line)
		if cont != nil {
			cont.Cmd += " " + strings.TrimSpace(strings.TrimSuffix(trimmed, `\`))
			if !strings.HasSuffix(trimmed, `\`) {
				steps = append(steps, *cont)
				last = &steps[len(steps)-1]
				cont = nil
			}
			continue
		}
		switch {
		case trimmed == "":
			last = nil
		case strings.HasPrefix(trimmed, "# on "):
			ms, err := onMachines(trimmed, known)
			if err != nil {
				return nil, fmt.Errorf("README line %d: %w", n, err)
			}
			machines, last = ms, nil
		case strings.HasPrefix(trimmed, "#"):
			last = nil
		case IsCommand(trimmed):
			if machines == nil {
				return nil, fmt.Errorf("README line %d: %q comes before any `# on MACHINE` line of its block", n, trimmed)
			}
			st := Step{Section: section, Line: n, Machines: machines, Cmd: strings.TrimSpace(strings.TrimSuffix(trimmed, `\`))}
			if strings.HasSuffix(trimmed, `\`) {
				cont = &st
				continue
			}
			steps = append(steps, st)
			last = &steps[len(steps)-1]
		case last != nil:
			last.Want = append(last.Want, trimmed)
		default:
			return nil, fmt.Errorf("README line %d: %q is neither a command nor the output of one", n, trimmed)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, s := range sections {
		if !seen[s] {
			return nil, fmt.Errorf("README has no section %q with a command block", s)
		}
	}
	return steps, nil
}

// onMachines reads "# on sn1 and sn2: text".
func onMachines(line string, known []string) ([]string, error) {
	spec, _, _ := strings.Cut(strings.TrimPrefix(line, "# on "), ":")
	spec, _, _ = strings.Cut(spec, " (") // "# on hn1 (or any machine ...)"
	var ms []string
	for _, f := range strings.FieldsFunc(spec, func(r rune) bool { return r == ',' || r == ' ' }) {
		if f == "and" {
			continue
		}
		if !slices.Contains(known, f) {
			return nil, fmt.Errorf("%q: no machine %q (the README's machines: %s)", line, f, strings.Join(known, ", "))
		}
		ms = append(ms, f)
	}
	if len(ms) == 0 {
		return nil, fmt.Errorf("%q names no machine", line)
	}
	return ms, nil
}

// free are the parts of a shown output line that match loosely: a date
// and time, and runs of spaces.
var free = regexp.MustCompile(`\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|\s+`)

// MatchOutput checks that every line of want matches a line of got, in
// order: runs of spaces match any run of spaces, and a date and time
// (2006-01-02 15:04:05) any other.
func MatchOutput(want []string, got string) error {
	lines := strings.Split(got, "\n")
	i := 0
	for _, w := range want {
		var q strings.Builder
		q.WriteString(`^\s*`)
		at := 0
		for _, m := range free.FindAllStringIndex(w, -1) {
			q.WriteString(regexp.QuoteMeta(w[at:m[0]]))
			if strings.TrimSpace(w[m[0]:m[1]]) == "" {
				q.WriteString(`\s+`)
			} else {
				q.WriteString(`\d{4}-\d\d-\d\d \d\d:\d\d:\d\d`)
			}
			at = m[1]
		}
		q.WriteString(regexp.QuoteMeta(w[at:]) + `\s*$`)
		re := regexp.MustCompile(q.String())
		for i < len(lines) && !re.MatchString(lines[i]) {
			i++
		}
		if i == len(lines) {
			return fmt.Errorf("the README shows %q, not in the output:\n%s", w, got)
		}
		i++
	}
	return nil
}
