package vault

// ParseSignResponse exposes parseSignResponse to the external tests.
var ParseSignResponse = parseSignResponse

// ParseIssuerRoot exposes parseIssuerRoot to the external tests.
var ParseIssuerRoot = parseIssuerRoot
