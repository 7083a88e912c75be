package app

import (
	"context"
	"fmt"
)

func runBenchCA(ctx context.Context, e *env, args []string) error {
	return fmt.Errorf("not yet")
}
