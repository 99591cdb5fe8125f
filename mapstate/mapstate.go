// Package mapstate describes the contents of a collection's maps (and its
// global variables) as plain data, so that a configuration can be written to
// a file, loaded into a running collection, snapshotted and compared.
//
// The JSON form is the one `morpheus optimize --state` reads:
//
//	{
//	  "variables": {"NAME": "HEX"},
//	  "maps": {
//	    "NAME": {"entries": [{"key": "HEX", "value": "HEX"}]}
//	  }
//	}
//
// Keys and values are hex strings of exactly the map's key and value size.
// For per-CPU maps an entry may give "value" (the same bytes on every CPU) or
// "values" (one string per possible CPU). Variables set global variables
// (.rodata/.data/.bss) of the object before it is loaded.
package mapstate

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/cilium/ebpf"
)

// Hex is a byte string that encodes to JSON as lower-case hex.
type Hex []byte

// MarshalJSON encodes h as a hex string.
func (h Hex) MarshalJSON() ([]byte, error) {
	return json.Marshal(hex.EncodeToString(h))
}

// UnmarshalJSON decodes a hex string; spaces and a 0x prefix are tolerated.
func (h *Hex) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a hex string, got %s", b)
	}
	s = string(bytes.ReplaceAll([]byte(s), []byte(" "), nil))
	if len(s) >= 2 && (s[:2] == "0x" || s[:2] == "0X") {
		s = s[2:]
	}
	d, err := hex.DecodeString(s)
	if err != nil {
		return fmt.Errorf("bad hex %q: %v", s, err)
	}
	*h = d
	return nil
}

// Entry is one key and its value(s).
type Entry struct {
	Key Hex `json:"key"`
	// Value is the value of a normal map, or the value of every CPU of a
	// per-CPU map.
	Value Hex `json:"value,omitempty"`
	// Values holds one value per possible CPU of a per-CPU map.
	Values []Hex `json:"values,omitempty"`
}

// Map is the content of one map.
type Map struct {
	Entries []Entry `json:"entries"`
}

// GetEntries returns m's entries; a nil map has none.
func (m *Map) GetEntries() []Entry {
	if m == nil {
		return nil
	}
	return m.Entries
}

// State is the content of a set of maps and global variables.
type State struct {
	Variables map[string]Hex  `json:"variables,omitempty"`
	Maps      map[string]*Map `json:"maps"`
}

// New returns an empty state.
func New() *State {
	return &State{Maps: map[string]*Map{}}
}

// Put appends an entry for the named map.
func (s *State) Put(mapName string, key, value []byte) {
	m := s.Maps[mapName]
	if m == nil {
		m = &Map{}
		s.Maps[mapName] = m
	}
	m.Entries = append(m.Entries, Entry{Key: key, Value: value})
}

// SetVariable records the bytes of a global variable.
func (s *State) SetVariable(name string, value []byte) {
	if s.Variables == nil {
		s.Variables = map[string]Hex{}
	}
	s.Variables[name] = value
}

// Parse reads a state from JSON, rejecting unknown fields so that a typo in
// a field name is reported rather than ignored.
func Parse(r io.Reader) (*State, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var s State
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("map state: %w", err)
	}
	if s.Maps == nil {
		s.Maps = map[string]*Map{}
	}
	for name, m := range s.Maps {
		if m == nil {
			return nil, fmt.Errorf("map state: map %q: want an object with \"entries\", got null", name)
		}
		for i, e := range m.Entries {
			if e.Key == nil {
				return nil, fmt.Errorf("map state: map %q entry %d: missing \"key\"", name, i)
			}
			if e.Value != nil && e.Values != nil {
				return nil, fmt.Errorf("map state: map %q entry %d: give \"value\" or \"values\", not both", name, i)
			}
		}
	}
	return &s, nil
}

// ReadFile parses the state stored at path.
func ReadFile(path string) (*State, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// Write encodes s as indented JSON with map names in sorted order.
func (s *State) Write(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

// Check validates s against a collection spec: every map and variable must
// exist and every key and value must have the right size. The error names the
// map and the entry index.
func (s *State) Check(spec *ebpf.CollectionSpec) error {
	for _, name := range sortedKeys(s.Variables) {
		v, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("map state: variable %q does not exist in the object", name)
		}
		if uint32(len(s.Variables[name])) != v.Size() {
			return fmt.Errorf("map state: variable %q: %d bytes given, variable has %d", name, len(s.Variables[name]), v.Size())
		}
	}
	for _, name := range sortedKeys(s.Maps) {
		ms, ok := spec.Maps[name]
		if !ok {
			return fmt.Errorf("map state: map %q does not exist in the object", name)
		}
		if err := s.Maps[name].check(name, ms.Type, ms.KeySize, ms.ValueSize, ms.MaxEntries); err != nil {
			return err
		}
	}
	return nil
}

func (m *Map) check(name string, typ ebpf.MapType, keySize, valueSize, maxEntries uint32) error {
	if uint32(len(m.Entries)) > maxEntries && maxEntries != 0 {
		return fmt.Errorf("map state: map %q: %d entries given, map holds at most %d", name, len(m.Entries), maxEntries)
	}
	for i, e := range m.Entries {
		if uint32(len(e.Key)) != keySize {
			return fmt.Errorf("map state: map %q entry %d: key has %d bytes, map key size is %d", name, i, len(e.Key), keySize)
		}
		if e.Values != nil && !PerCPU(typ) {
			return fmt.Errorf("map state: map %q entry %d: \"values\" is only for per-CPU maps", name, i)
		}
		vals := e.Values
		if vals == nil {
			vals = []Hex{e.Value}
		}
		for j, v := range vals {
			if uint32(len(v)) != valueSize {
				return fmt.Errorf("map state: map %q entry %d value %d: has %d bytes, map value size is %d", name, i, j, len(v), valueSize)
			}
		}
	}
	return nil
}

// ApplySpec sets the state's variables in spec; call it before loading.
func (s *State) ApplySpec(spec *ebpf.CollectionSpec) error {
	for _, name := range sortedKeys(s.Variables) {
		v, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("map state: variable %q does not exist in the object", name)
		}
		if err := v.Set([]byte(s.Variables[name])); err != nil {
			return fmt.Errorf("map state: variable %q: %w", name, err)
		}
	}
	return nil
}

// Apply writes every entry into the named maps. Maps not mentioned in s are
// left as they are.
func (s *State) Apply(maps map[string]*ebpf.Map) error {
	for _, name := range sortedKeys(s.Maps) {
		m, ok := maps[name]
		if !ok {
			return fmt.Errorf("map state: map %q does not exist in the collection", name)
		}
		ms := s.Maps[name]
		if err := ms.check(name, m.Type(), m.KeySize(), m.ValueSize(), m.MaxEntries()); err != nil {
			return err
		}
		for i, e := range ms.Entries {
			if err := put(m, e); err != nil {
				return fmt.Errorf("map state: map %q entry %d: %w", name, i, err)
			}
		}
	}
	return nil
}

// PutEntry writes one entry into m as Apply does: a per-CPU map's
// entry with Value gets that value on every CPU.
func PutEntry(m *ebpf.Map, e Entry) error { return put(m, e) }

func put(m *ebpf.Map, e Entry) error {
	if !PerCPU(m.Type()) {
		return m.Put([]byte(e.Key), []byte(e.Value))
	}
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	vals := make([][]byte, n)
	for i := range vals {
		switch {
		case e.Values == nil:
			vals[i] = e.Value
		case i < len(e.Values):
			vals[i] = e.Values[i]
		default:
			vals[i] = make([]byte, m.ValueSize())
		}
	}
	return m.Put([]byte(e.Key), vals)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// PerCPU reports whether maps of type t hold one value per possible CPU.
func PerCPU(t ebpf.MapType) bool {
	switch t {
	case ebpf.PerCPUHash, ebpf.PerCPUArray, ebpf.LRUCPUHash, ebpf.PerCPUCGroupStorage:
		return true
	}
	return false
}

// Load sets s's variables in spec, loads the collection and writes s's map
// entries into it. spec is modified. On failure nothing stays loaded.
func (s *State) Load(spec *ebpf.CollectionSpec, opts ebpf.CollectionOptions) (*ebpf.Collection, error) {
	if err := s.ApplySpec(spec); err != nil {
		return nil, err
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, opts)
	if err != nil {
		return nil, fmt.Errorf("load collection: %w", err)
	}
	if err := s.Apply(coll.Maps); err != nil {
		coll.Close()
		return nil, err
	}
	return coll, nil
}
