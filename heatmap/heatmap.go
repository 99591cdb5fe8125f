// Package heatmap holds the hot keys of each map, as measured by the
// instrumented program or given by the user (`morpheus optimize --heatmap`).
//
// The JSON form is:
//
//	{"maps": {"NAME": [{"key": "HEX", "count": 1234}, ...]}}
package heatmap

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/morpheus-go/morpheus/mapstate"
)

// Key is one observed key and how often it was seen.
type Key struct {
	Key   mapstate.Hex `json:"key"`
	Count uint64       `json:"count"`
}

// Heatmap maps a map name to its observed keys.
type Heatmap struct {
	Maps map[string][]Key `json:"maps"`
}

// Top returns the k most frequent keys of a map, most frequent first; ties
// are broken by key bytes so the result is deterministic.
func (h *Heatmap) Top(mapName string, k int) []Key {
	if h == nil {
		return nil
	}
	keys := append([]Key(nil), h.Maps[mapName]...)
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].Count != keys[j].Count {
			return keys[i].Count > keys[j].Count
		}
		return string(keys[i].Key) < string(keys[j].Key)
	})
	if len(keys) > k {
		keys = keys[:k]
	}
	return keys
}

// Parse reads a heatmap from JSON.
func Parse(r io.Reader) (*Heatmap, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var h Heatmap
	if err := dec.Decode(&h); err != nil {
		return nil, fmt.Errorf("heatmap: %w", err)
	}
	for name, keys := range h.Maps {
		for i, k := range keys {
			if len(k.Key) == 0 {
				return nil, fmt.Errorf("heatmap: map %q key %d: empty key", name, i)
			}
		}
	}
	return &h, nil
}

// ReadFile parses the heatmap stored at path.
func ReadFile(path string) (*Heatmap, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return h, nil
}
