package analysis

import (
	"slices"
	"sort"
	"strconv"

	"github.com/cilium/ebpf"
)

// bpfFRdonlyProg is BPF_F_RDONLY_PROG: the program cannot write the map.
const bpfFRdonlyProg = 1 << 7

// MapInfo is what the program does with one map.
type MapInfo struct {
	Name       string `json:"name"`
	Type       string `json:"type"`
	KeySize    uint32 `json:"key_size"`
	ValueSize  uint32 `json:"value_size"`
	MaxEntries uint32 `json:"max_entries"`
	Flags      uint32 `json:"flags"`
	// ReadOnly is set when the data plane provably never writes the map:
	// no write sites and every pointer into it followed to its uses. Only
	// the control plane changes a read-only map.
	ReadOnly bool `json:"read_only"`
	// Sites are the IDs of the sites that access the map.
	Sites []int `json:"sites"`
	// WriteSites are the IDs of the sites that may write the map.
	WriteSites []int `json:"write_sites,omitempty"`
	// Reasons says why the map is not read-only: its write sites and
	// every place where the analysis stopped following a pointer to it.
	Reasons []string `json:"reasons,omitempty"`
	// Untracked is set when the analysis lost a pointer to the map or its
	// values: data-plane writes may exist that no site shows, so no pass
	// may rely on the list of write sites.
	Untracked bool `json:"untracked"`
	// Missing is set for a map the program references that the
	// collection spec does not describe.
	Missing bool `json:"missing,omitempty"`
}

func (r *recorder) maps(sites []*Site) map[string]*MapInfo {
	out := map[string]*MapInfo{}
	get := func(name string) *MapInfo {
		if mi := out[name]; mi != nil {
			return mi
		}
		mi := &MapInfo{Name: name, Sites: []int{}}
		if ms := r.a.mapSpec(name); ms != nil {
			mi.Type, mi.KeySize, mi.ValueSize, mi.MaxEntries, mi.Flags = ms.Type.String(), ms.KeySize, ms.ValueSize,
				ms.MaxEntries, ms.Flags
		} else {
			mi.Missing = true
		}
		out[name] = mi
		return mi
	}
	if r.a.coll != nil {
		for name := range r.a.coll.Maps {
			get(name)
		}
	}
	for _, s := range sites {
		if s.Map == "" {
			continue
		}
		mi := get(s.Map)
		mi.Sites = append(mi.Sites, s.ID)
		if s.Write {
			mi.WriteSites = append(mi.WriteSites, s.ID)
			mi.Reasons = append(mi.Reasons, siteWhere(s)+": written by "+siteWhat(s))
		}
	}
	for name, reasons := range r.lost {
		mi := get(name)
		mi.Untracked = true
		mi.Reasons = append(mi.Reasons, reasons...)
	}
	inner := innerCandidates(r.a.coll)
	for name, mi := range out {
		if len(r.anyMap) > 0 {
			mi.Untracked = true
			mi.Reasons = append(mi.Reasons, r.anyMap...)
		}
		if len(r.inner) > 0 && inner(name) {
			mi.Untracked = true
			mi.Reasons = append(mi.Reasons, r.inner...)
		}
		if mi.Missing {
			mi.Untracked = true
			mi.Reasons = append(mi.Reasons, "map is not in the collection spec")
		}
		mi.Reasons = slices.Compact(mi.Reasons)
		mi.ReadOnly = len(mi.WriteSites) == 0 && !mi.Untracked
	}
	return out
}

// innerCandidates returns a predicate for maps that could be placed in a
// map-in-map of the collection at run time.
func innerCandidates(coll *ebpf.CollectionSpec) func(string) bool {
	var inners []*ebpf.MapSpec
	anyInner := false
	if coll != nil {
		for _, ms := range coll.Maps {
			if isMapInMap(ms.Type) {
				if ms.InnerMap == nil {
					anyInner = true
				} else {
					inners = append(inners, ms.InnerMap)
				}
			}
		}
	}
	return func(name string) bool {
		if anyInner {
			return true
		}
		if coll == nil {
			return false
		}
		ms := coll.Maps[name]
		if ms == nil {
			return true
		}
		for _, in := range inners {
			if in.Type == ms.Type && in.KeySize == ms.KeySize && in.ValueSize == ms.ValueSize {
				return true
			}
		}
		return false
	}
}

func siteWhere(s *Site) string {
	return s.Func + ":b" + strconv.Itoa(s.Block) + ":" + strconv.Itoa(s.Index)
}

func siteWhat(s *Site) string {
	if s.Helper != "" {
		return s.Helper
	}
	return string(s.Kind)
}

// eligibility decides which passes may use a site.
func (r *recorder) eligibility(s *Site, mi *MapInfo) {
	s.Inline, s.HotCache, s.ConstKey = Eligibility{OK: true}, Eligibility{OK: true}, Eligibility{OK: true}
	var ms *ebpf.MapSpec
	if s.Map != "" {
		ms = r.a.mapSpec(s.Map)
	}
	both := func(reason string) {
		s.Inline.no(reason)
		s.HotCache.no(reason)
	}
	switch {
	case s.Map == "":
		both("map not resolved")
	case ms == nil:
		both("map not in the collection spec")
	}
	if s.Kind != SiteLookup {
		both("not a lookup")
	}
	if mi != nil && mi.Untracked {
		both("map has untracked data-plane accesses")
	}
	if mi != nil && !mi.ReadOnly {
		s.Inline.no("map is written by the data plane")
	}
	if ms != nil {
		switch ms.Type {
		case ebpf.PerCPUArray, ebpf.PerCPUHash, ebpf.LRUCPUHash, ebpf.PerCPUCGroupStorage:
			s.Inline.no("per-CPU map")
		}
	}
	switch {
	case s.Key == nil:
		s.ConstKey.no("no key")
		if s.Kind == SiteLookup {
			both("no key")
		}
	case s.Key.Location != "stack":
		both("key is not on the stack (" + s.Key.Location + ")")
		if !s.Key.Const {
			s.ConstKey.no("key bytes not all constant")
		}
	case !s.Key.OffKnown:
		both("key at a variable stack offset")
		s.ConstKey.no("key at a variable stack offset")
	case s.Key.Size == 0:
		both("key size unknown")
		s.ConstKey.no("key size unknown")
	case !s.Key.Const:
		s.ConstKey.no("key bytes not all constant")
	}
	if len(s.Escapes) > 0 {
		s.Inline.no("value pointer escapes")
	}
	if len(s.Writes) > 0 {
		s.Inline.no("value written through the returned pointer")
	}
	sort.Strings(s.Inline.Reasons)
	sort.Strings(s.HotCache.Reasons)
	sort.Strings(s.ConstKey.Reasons)
}

// Access is the map's data-plane access class as reports print it: "RO"
// (only the control plane writes it), "RW", or "RW?" when a pointer to
// the map was lost, so writes may have been missed.
func (mi *MapInfo) Access() string {
	switch {
	case mi.ReadOnly:
		return "RO"
	case mi.Untracked:
		return "RW?"
	}
	return "RW"
}
