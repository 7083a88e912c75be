#!/usr/bin/env bash
# Prints the shell blocks of a Markdown file tagged with the given steps
# (fence lines "```sh <step>"), in document order: how scripts run
# docs/vault.md's setup verbatim (the Go tests use vaulttest.Steps).
#
# Usage: hack/doc-steps.sh docs/vault.md setup pki policy approle
set -euo pipefail
doc=$1; shift
awk -v steps=" $* " '
  !inb && /^```/ { inb = 1; n = split(substr($0, 4), f, " "); keep = (n == 2 && f[1] == "sh" && index(steps, " " f[2] " ")); if (keep) seen[f[2]] = 1; next }
  inb && /^```[[:space:]]*$/ { inb = 0; next }
  inb && keep { print }
  END { split(steps, want, " "); for (i in want) if (!(want[i] in seen)) { print "doc-steps: no block tagged " want[i] > "/dev/stderr"; exit 1 } }
' "$doc"
