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
