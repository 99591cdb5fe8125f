package passes

import (
	"encoding/binary"
	"strings"

	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/analysis"
	"github.com/morpheus-go/morpheus/program"
)

// lookupSite is a map lookup as the rewriting passes see it.
type lookupSite struct {
	fn      *program.Func
	block   *program.Block
	index   int
	mapName string
	// keyOff is the key's offset from R10, nil when unknown.
	keyOff *int16
	// parentKeyOff is the key's offset from its frame's R10 when the key
	// lives in a caller's frame (passed in by pointer; R2 points at it at
	// the call), nil otherwise. Only passes that read the key through R2
	// use it; keyOff stays nil for such keys.
	parentKeyOff *int16
	keyBytes     []analysis.KeyByte
	// constKey holds the key when every byte is constant.
	constKey []byte
	// readOnlyMap: the data plane never writes the map.
	readOnlyMap bool
	// valueReadOnly: nothing is written through the returned pointer and
	// it never escapes.
	valueReadOnly bool
	// ineligible explains why no rewrite may touch the site at all.
	ineligible string
}

// keyAt is where code in front of the lookup reads its key: the
// function's own stack, or a caller's through R2; false when unknown.
func (s lookupSite) keyAt() (keyAddr, bool) {
	switch {
	case s.keyOff != nil:
		return stackKey(*s.keyOff), true
	case s.parentKeyOff != nil:
		return keyAddr{reg: asm.R2, frameOff: *s.parentKeyOff}, true
	}
	return keyAddr{}, false
}

// hasKey reports whether keyAt knows where the key is.
func (s lookupSite) hasKey() bool { _, ok := s.keyAt(); return ok }

// lpmPrefixLen returns the constant prefix length of an LPM lookup key.
func (s lookupSite) lpmPrefixLen() (uint32, bool) {
	if len(s.keyBytes) < 4 {
		return 0, false
	}
	var b [4]byte
	for i := range 4 {
		if s.keyBytes[i].Kind != "const" {
			return 0, false
		}
		b[i] = s.keyBytes[i].Value
	}
	return binary.LittleEndian.Uint32(b[:]), true
}

// keyCompatible reports whether key agrees with the key bytes the site
// always passes as constants: a hot key that contradicts them can never be
// looked up here.
func (s lookupSite) keyCompatible(key []byte) bool {
	for i, kb := range s.keyBytes {
		if i < len(key) && kb.Kind == "const" && kb.Value != key[i] {
			return false
		}
	}
	return true
}

// lookupSites lists the map lookups of the current program.
func (c *Context) lookupSites() ([]lookupSite, error) {
	res, err := c.Analysis()
	if err != nil {
		return nil, err
	}
	blocks := map[int]*program.Block{}
	funcs := map[int]*program.Func{}
	for _, f := range c.Prog.Funcs {
		for _, b := range f.Blocks {
			blocks[b.ID], funcs[b.ID] = b, f
		}
	}
	var out []lookupSite
	for _, s := range res.Sites {
		if s.Kind != analysis.SiteLookup {
			continue
		}
		b := blocks[s.Block]
		if b == nil {
			continue
		}
		ls := lookupSite{fn: funcs[s.Block], block: b, index: s.Index, mapName: s.Map}
		mi := res.Maps[s.Map]
		switch {
		case s.Map == "" || c.Coll.Maps[s.Map] == nil:
			ls.ineligible = "the analysis cannot tell which map is looked up"
		case mi == nil || mi.Untracked:
			ls.ineligible = "pointers to this map are not all followed"
		}
		if mi != nil {
			ls.readOnlyMap = mi.ReadOnly && !mi.Untracked
		}
		ls.valueReadOnly = len(s.Writes) == 0 && len(s.Escapes) == 0
		if k := s.Key; k != nil && k.Location == "parent_stack" && k.OffKnown {
			off := int16(k.StackOff)
			ls.parentKeyOff = &off
			ls.keyBytes = k.Bytes
		}
		if k := s.Key; k != nil && k.Location == "stack" && k.OffKnown {
			off := int16(k.StackOff)
			ls.keyOff = &off
			ls.keyBytes = k.Bytes
			if k.Const {
				ls.constKey = make([]byte, len(k.Bytes))
				for i, kb := range k.Bytes {
					ls.constKey[i] = kb.Value
				}
			}
		}
		if ls.ineligible == "" && len(s.Escapes) > 0 {
			ls.ineligible = "value pointer escapes: " + strings.Join(s.Escapes, "; ")
		}
		out = append(out, ls)
	}
	return out, nil
}
