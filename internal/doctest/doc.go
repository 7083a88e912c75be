// Package doctest runs the shell blocks of warden's documentation that are
// marked runnable, against the warden binary built from this tree: the
// README's tour (```sh tour), run as a script on free ports, and every
// ```sh run block of docs/, run from the repository's root. A doc that
// drifts from the binary fails make test.
package doctest
