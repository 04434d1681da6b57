package main

import (
	"testing"

	"github.com/fabric-project/fabric/internal/cliargs"
)

// TestNoPlaceholderQuotes: no flag's help is garbled by a backquote.
func TestNoPlaceholderQuotes(t *testing.T) {
	if bad := cliargs.Placeholders(newApp()); len(bad) > 0 {
		t.Errorf("flags whose usage has a backquote (urfave/cli makes it the value placeholder): %v", bad)
	}
}
