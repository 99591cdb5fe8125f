package passes

import (
	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/mapstate"
)

// goldenProbe: goldenHash's lookup in a read-only table of 24 entries
// with no heatmap: a chain would test 12 of them on average, so mapinline
// compiles a hashed probe.
func goldenProbe() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	spec, _, _ := goldenHash()
	spec.Maps["acl"].MaxEntries = 64
	st := mapstate.New()
	for i, k := range goldenHotTreeKeys {
		st.Put("acl", goldenU32(k), goldenU32(uint32(1+i%3)))
	}
	return spec, st, nil
}

// goldenDisplacedKeys are goldenDisplaced's 160 hot keys, every fifth
// absent from the table (a cached miss).
var goldenDisplacedKeys = func() []uint32 {
	var out []uint32
	for i := range 160 {
		out = append(out, goldenIP(100, 64, byte(i/7), byte(1+i*37)))
	}
	return out
}()

// goldenDisplaced: goldenHash's lookup in a table of 300 entries with 160
// equally hot keys, more than a plain probe places: hotcache compiles a
// displaced probe.
func goldenDisplaced() (*ebpf.CollectionSpec, *mapstate.State, *heatmap.Heatmap) {
	spec, _, _ := goldenHash()
	spec.Maps["acl"].MaxEntries = 512
	st := mapstate.New()
	heat := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
	for i, k := range goldenDisplacedKeys {
		if i%5 != 4 {
			st.Put("acl", goldenU32(k), goldenU32(uint32(1+i%3)))
		}
		heat.Maps["acl"] = append(heat.Maps["acl"], heatmap.Key{Key: goldenU32(k), Count: 100})
	}
	for i := range 180 {
		st.Put("acl", goldenU32(goldenIP(203, 0, byte(i/200), byte(i))), goldenU32(3))
	}
	return spec, st, heat
}
