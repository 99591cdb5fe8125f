package passes

import (
	"bytes"
	"encoding/binary"
	"sort"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/mapstate"
)

// hotCache is the cached-computation pass. For a lookup in a read-only
// hash or LPM map too large to inline, the TopK hottest keys of the
// heatmap are compiled in front of the lookup: each hot key's result
// (the value the lookup would return, or a miss) is precomputed from the
// snapshot. The chain sits behind the map's guard; any other key, or a
// changed map, runs the original lookup.
func hotCache(c *Context) error {
	if c.Heat == nil {
		return nil
	}
	sites, err := c.lookupSites()
	if err != nil {
		return err
	}
	sort.SliceStable(sites, func(i, j int) bool { return sites[i].index > sites[j].index })
	for _, s := range sites {
		ms := c.Coll.Maps[s.mapName]
		hot := c.Heat.Top(s.mapName, c.Opts.TopK)
		if len(hot) == 0 {
			continue
		}
		if why := c.tableRewritable(s, ms); why != "" {
			c.skipped(s.fn.Name, s.block.ID, s.mapName, "%s", why)
			continue
		}
		if n := len(c.entries(s.mapName)); n <= c.Opts.MaxInline {
			// mapinline compiles the whole table; caching keys in
			// front of its fallback lookup would only add a guard.
			c.skipped(s.fn.Name, s.block.ID, s.mapName, "%d entries: small enough to inline whole", n)
			continue
		}
		if err := c.cacheHotKeys(s, ms, hot); err != nil {
			return err
		}
	}
	return nil
}

func (c *Context) cacheHotKeys(s lookupSite, ms *ebpf.MapSpec, hot []heatmap.Key) error {
	entries := c.entries(s.mapName)
	var matchers []matcher
	var values [][]byte
	for _, h := range hot {
		if uint32(len(h.Key)) != ms.KeySize || !s.keyCompatible(h.Key) {
			continue // a key this site can never look up
		}
		var v []byte
		if ms.Type == ebpf.LPMTrie {
			v = longestMatch(entries, h.Key)
		} else {
			v = exactMatch(entries, h.Key)
		}
		m := matcher{key: h.Key, valueIndex: -1}
		if v != nil {
			m.valueIndex = len(values)
			values = append(values, v)
		}
		matchers = append(matchers, m)
	}
	if len(matchers) == 0 {
		c.skipped(s.fn.Name, s.block.ID, s.mapName, "no hot key matches this site's constant key bytes")
		return nil
	}
	if err := c.emitChain(s, ms, matchers, values, true); err != nil {
		return err
	}
	c.changed(s.fn.Name, s.block.ID, s.mapName, "%d hot keys cached in front of the lookup behind guard", len(matchers))
	return nil
}

// exactMatch returns the value stored under key, or nil.
func exactMatch(entries []mapstate.Entry, key []byte) []byte {
	var v []byte
	for _, e := range entries {
		if bytes.Equal(e.Key, key) {
			v = e.Value // the last write of a key wins
		}
	}
	return v
}

// longestMatch returns the value of the longest prefix in entries that
// covers key, as BPF_MAP_TYPE_LPM_TRIE would.
func longestMatch(entries []mapstate.Entry, key []byte) []byte {
	kplen := binary.LittleEndian.Uint32(key)
	var best []byte
	bestLen := -1
	for _, e := range entries {
		plen := binary.LittleEndian.Uint32(e.Key)
		if plen > kplen || int(plen) <= bestLen || len(e.Key) != len(key) {
			continue
		}
		mask := lpmMask(len(key), plen)
		match := true
		for i := 4; i < len(key); i++ {
			if key[i]&mask[i] != e.Key[i]&mask[i] {
				match = false
				break
			}
		}
		if match {
			best, bestLen = e.Value, int(plen)
		}
	}
	return best
}
