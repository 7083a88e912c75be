package ca

// ParseWorkloadCSR is the signing path's fast CSR parser, for the
// differential tests.
var ParseWorkloadCSR = parseWorkloadCSR
