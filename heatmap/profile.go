package heatmap

import (
	"bytes"
	"math"
	"sort"
)

// Merge returns the sum of the given heatmaps: a key's counts are added
// across them. Nil heatmaps are ignored.
func Merge(hs ...*Heatmap) *Heatmap {
	sum := map[string]map[string]float64{}
	for _, h := range hs {
		if h == nil {
			continue
		}
		add(sum, h, 1)
	}
	return build(sum)
}

// DefaultMinCount is the decayed count below which a Profile forgets a key.
const DefaultMinCount = 0.5

// Profile is an exponentially decayed aggregate of heatmap windows, so
// that the hot keys follow the traffic: after each window the counts so
// far are multiplied by Decay before the window's counts are added. With
// Decay d, a window k windows old weighs d^k; 0 keeps only the last
// window, 1 sums all of them.
//
// The runtime agent drains the kernel's heat maps once per window
// (instrument.Variant.Drain) and merges the result here; the optimizer
// reads Heatmap().
type Profile struct {
	// Decay is the weight the aggregate keeps per window, in [0, 1].
	Decay float64
	// MinCount: keys whose decayed count falls below it are dropped,
	// which bounds the profile's size. Zero means DefaultMinCount.
	MinCount float64

	counts  map[string]map[string]float64
	windows int
}

// NewProfile returns an empty profile with the given decay.
func NewProfile(decay float64) *Profile {
	return &Profile{Decay: math.Min(math.Max(decay, 0), 1), counts: map[string]map[string]float64{}}
}

// Merge folds one window into the profile.
func (p *Profile) Merge(window *Heatmap) {
	if p.counts == nil {
		p.counts = map[string]map[string]float64{}
	}
	minCount := p.MinCount
	if minCount == 0 {
		minCount = DefaultMinCount
	}
	for name, keys := range p.counts {
		for k, c := range keys {
			c *= p.Decay
			if c < minCount {
				delete(keys, k)
				continue
			}
			keys[k] = c
		}
		if len(keys) == 0 {
			delete(p.counts, name)
		}
	}
	if window != nil {
		add(p.counts, window, 1)
	}
	p.windows++
}

// Windows is the number of windows merged so far.
func (p *Profile) Windows() int { return p.windows }

// Heatmap returns the profile's current counts, rounded, most frequent
// first.
func (p *Profile) Heatmap() *Heatmap { return build(p.counts) }

func add(dst map[string]map[string]float64, h *Heatmap, w float64) {
	for name, keys := range h.Maps {
		m := dst[name]
		if m == nil {
			m = map[string]float64{}
			dst[name] = m
		}
		for _, k := range keys {
			m[string(k.Key)] += w * float64(k.Count)
		}
	}
}

func build(counts map[string]map[string]float64) *Heatmap {
	h := &Heatmap{Maps: map[string][]Key{}}
	for name, keys := range counts {
		out := make([]Key, 0, len(keys))
		for k, c := range keys {
			if n := uint64(math.Round(c)); n > 0 {
				out = append(out, Key{Key: []byte(k), Count: n})
			}
		}
		sort.Slice(out, func(i, j int) bool {
			if out[i].Count != out[j].Count {
				return out[i].Count > out[j].Count
			}
			return bytes.Compare(out[i].Key, out[j].Key) < 0
		})
		h.Maps[name] = out
	}
	return h
}
