package loadtest

import (
	"context"
	"errors"
)

// CallsReport is what the calls scenario saw.
type CallsReport struct{}

// String renders the calls figures for people.
func (c *CallsReport) String() string { return "" }

func runCalls(ctx context.Context, r *run) error {
	return errors.New("loadtest: the calls scenario is not available in this build")
}
