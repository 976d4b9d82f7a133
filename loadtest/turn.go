package loadtest

import (
	"context"
	"errors"
)

// TURNReport is what the turn scenario saw.
type TURNReport struct{}

// String renders the TURN figures for people.
func (t *TURNReport) String() string { return "" }

func runTURN(ctx context.Context, r *run) error {
	return errors.New("loadtest: the turn scenario is not available in this build")
}
