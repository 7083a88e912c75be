// Command warden is the certificate authority and mTLS authority for
// service meshes. All logic lives in internal/app.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/wardenmesh/warden/internal/app"
)

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		cancel() // first signal: graceful shutdown
		<-sig
		os.Exit(130) // second: now
	}()
	os.Exit(app.Run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}
