//go:build race

package scheduler

// raceEnabled: timings under the race detector mean nothing.
const raceEnabled = true
