package kube

import "encoding/pem"

// firstPEM returns the first PEM block of data, re-encoded.
func firstPEM(data []byte) []byte {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil
	}
	return pem.EncodeToMemory(b)
}
