// Command etcd is etcd's server main, built from the Go module proxy for
// warden's tests (envtest starts it on loopback).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
