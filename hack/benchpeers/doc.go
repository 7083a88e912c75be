package main

// go.mod pins the peers hack/bench-peers.sh builds (step-ca and cfssl, at
// the versions `go get github.com/smallstep/certificates/cmd/step-ca@<v>
// github.com/cloudflare/cfssl/cmd/cfssl@<v>` wrote); go mod tidy would drop
// them, since only their commands are built.
