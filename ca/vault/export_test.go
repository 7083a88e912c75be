package vault

// ParseSignResponse exposes parseSignResponse to the external tests.
var ParseSignResponse = parseSignResponse
