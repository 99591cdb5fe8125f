package program

import (
	"math/rand"
	"testing"
)

// TestLiftArbitraryStreams is the fuzz property on a fixed pseudo-random
// sample biased towards control flow, so every test run covers it.
func TestLiftArbitraryStreams(t *testing.T) {
	rnd := rand.New(rand.NewSource(1))
	ops := []byte{0x05, 0x06, 0x15, 0x1d, 0x18, 0x85, 0x95, 0xb7, 0xe5}
	for range 20000 {
		b := make([]byte, 8*(1+rnd.Intn(24)))
		rnd.Read(b)
		for i := 0; i < len(b); i += 8 {
			if rnd.Intn(2) == 0 {
				b[i] = ops[rnd.Intn(len(ops))]
				b[i+2] = byte(rnd.Intn(8)) // short offsets stay inside the stream
				b[i+3] = 0
			}
		}
		liftArbitrary(t, b)
	}
}
