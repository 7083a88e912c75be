package app

import (
	"flag"

	"github.com/wardenmesh/warden/xds"
)

// defaultNodeAccounts is Istio's default CA_TRUSTED_NODE_ACCOUNTS:
// ztunnel's service account.
const defaultNodeAccounts = "istio-system/ztunnel"

// nodeAccountsFlag is serve's --trusted-node-accounts, the one place it
// is defined: the service accounts of node proxies (ztunnel) trusted
// with the whole mesh's workloads and policies over xDS.
type nodeAccountsFlag struct {
	raw string
}

func (n *nodeAccountsFlag) register(fs *flag.FlagSet) {
	fs.StringVar(&n.raw, "trusted-node-accounts", defaultNodeAccounts, "comma-separated <namespace>/<service account> of the node proxies (Istio ambient's ztunnel) that receive every workload and L4 policy of the mesh over xDS (Istio's CA_TRUSTED_NODE_ACCOUNTS); empty: none")
}

// accounts parses the flag's value.
func (n *nodeAccountsFlag) accounts() (xds.NodeAccounts, error) {
	return xds.ParseNodeAccounts(n.raw)
}
