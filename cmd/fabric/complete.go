package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fabric-project/fabric/controller/controllerapi"
)

// nameArgs is the kind of name each command takes first, for completion.
var nameArgs = map[string]string{
	"node show": "node", "node update": "node", "node drain": "node", "node undrain": "node", "node reimage": "node", "node fence": "node",
	"node unfence": "node", "node token": "node", "node remove": "node", "node reset": "node",
	"image delete":   "image",
	"instance start": "instance", "instance stop": "instance", "instance limit": "instance", "instance migrate": "instance",
	"instance delete": "instance", "instance show": "instance", "instance console": "instance",
	"volume show": "volume", "volume resize": "volume",
	"storage show": "storage", "storage drain": "storage", "storage shutdown": "storage", "storage undrain": "storage",
	"storage pair create": "storage",
}

// completeNames makes the commands of nameArgs complete the names of
// what they act on, asked of the controller (nothing when it does not
// answer within 2 s); after the first argument, and for flags, the usual
// completion.
func completeNames(cmds []*cli.Command, path string) {
	for _, cmd := range cmds {
		p := strings.TrimSpace(path + " " + cmd.Name)
		if kind, ok := nameArgs[p]; ok {
			cmd.BashComplete = func(c *cli.Context) {
				if c.NArg() > 0 && p != "storage pair create" || c.NArg() > 1 {
					cli.DefaultCompleteWithFlags(c.Command)(c)
					return
				}
				names, err := listNames(c, kind)
				if err != nil {
					return
				}
				for _, n := range names {
					fmt.Fprintln(c.App.Writer, n)
				}
			}
		}
		completeNames(cmd.Subcommands, p)
	}
}

// listNames lists the names of one kind: node, storage (storage nodes and
// pairs are separate: storage nodes), instance, image, volume.
func listNames(c *cli.Context, kind string) ([]string, error) {
	cl, err := client(c)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(c.Context, 2*time.Second)
	defer cancel()
	var out []string
	switch kind {
	case "node", "storage":
		ns, err := cl.Nodes(ctx)
		for _, n := range ns {
			if kind == "node" || n.Role == controllerapi.RoleStorage {
				out = append(out, n.Name)
			}
		}
		return out, err
	case "instance":
		ins, err := cl.Instances(ctx)
		for _, in := range ins {
			out = append(out, in.Name)
		}
		return out, err
	case "image":
		ims, err := cl.Images(ctx)
		for _, im := range ims {
			out = append(out, im.Name)
		}
		return out, err
	case "volume":
		vs, err := cl.Volumes(ctx)
		seen := map[string]bool{}
		for _, v := range vs {
			if !seen[v.Name] {
				seen[v.Name] = true
				out = append(out, v.Name)
			}
		}
		return out, err
	}
	return nil, fmt.Errorf("no names of kind %q", kind)
}

// Completion scripts. Each asks fabric itself (urfave/cli's
// --generate-bash-completion) for the words that may come next: commands,
// flags, and the names of nodes, instances, images and volumes.
const (
	bashCompletion = `# bash completion for fabric; load with: source <(fabric completion bash)
_fabric_complete() {
  local cur="${COMP_WORDS[COMP_CWORD]}" opts
  if [[ "$cur" == -* ]]; then
    opts=$("${COMP_WORDS[@]:0:$COMP_CWORD}" "$cur" --generate-bash-completion 2>/dev/null)
  else
    opts=$("${COMP_WORDS[@]:0:$COMP_CWORD}" --generate-bash-completion 2>/dev/null)
  fi
  COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}
complete -o bashdefault -o default -F _fabric_complete fabric
`
	zshCompletion = `#compdef fabric
# zsh completion for fabric; load with: source <(fabric completion zsh)
_fabric() {
  local -a opts
  local cur=${words[-1]}
  if [[ "$cur" == -* ]]; then
    opts=("${(@f)$(${words[@]:0:#words[@]-1} "$cur" --generate-bash-completion 2>/dev/null)}")
  else
    opts=("${(@f)$(${words[@]:0:#words[@]-1} --generate-bash-completion 2>/dev/null)}")
  fi
  if [[ -n "${opts[1]}" ]]; then
    _describe 'values' opts
  else
    _files
  fi
}
if (( $+functions[compdef] )); then
  compdef _fabric fabric
fi
`
	fishCompletion = `# fish completion for fabric; load with: fabric completion fish | source
function __fabric_complete
    set -l args (commandline -opc)
    set -e args[1]
    set -l cur (commandline -ct)
    if string match -q -- '-*' $cur
        fabric $args $cur --generate-bash-completion 2>/dev/null
    else
        fabric $args --generate-bash-completion 2>/dev/null
    end
end
complete -c fabric -f -a '(__fabric_complete)'
`
)
