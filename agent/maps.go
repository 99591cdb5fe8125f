package agent

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/mapstate"
)

// Map is a handle on one map of the network function. Changes through it
// keep the optimized code correct: the map's guard is bumped before the
// change (and, for a map an optimized program depends on without a guard,
// the original program is swapped back in first), then a cycle is queued
// to re-specialize. Reads go straight to the map. A Map is safe for
// concurrent use.
type Map struct {
	nf   *NF
	name string
	m    *ebpf.Map
}

// MapInfo describes a map of the network function.
type MapInfo struct {
	Name       string `json:"name"`
	Type       string `json:"type"`
	KeySize    uint32 `json:"key_size"`
	ValueSize  uint32 `json:"value_size"`
	MaxEntries uint32 `json:"max_entries"`
	PerCPU     bool   `json:"per_cpu"`
	// Guarded says whether optimized code may hold a guard on the map.
	Guarded bool `json:"guarded"`
	// Trusted lists the running optimized programs whose fast path
	// currently depends on the map's contents.
	Trusted []string `json:"trusted_by,omitempty"`
}

// Map returns the handle of the named map.
func (n *NF) Map(name string) (*Map, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, ErrClosed
	}
	m, ok := n.maps[name]
	if !ok {
		return nil, fmt.Errorf("agent: no map %q (have %v)", name, slices.Sorted(maps.Keys(n.maps)))
	}
	return &Map{nf: n, name: name, m: m}, nil
}

// Maps describes every map of the network function, by name.
func (n *NF) Maps() []MapInfo {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []MapInfo
	guarded := n.table.Guarded()
	for _, name := range slices.Sorted(maps.Keys(n.maps)) {
		m := n.maps[name]
		mi := MapInfo{
			Name:       name,
			Type:       m.Type().String(),
			KeySize:    m.KeySize(),
			ValueSize:  m.ValueSize(),
			MaxEntries: m.MaxEntries(),
			PerCPU:     mapstate.PerCPU(m.Type()),
			Guarded:    slices.Contains(guarded, name),
		}
		for _, pn := range n.order {
			if r := n.progs[pn].running; r != nil {
				if _, ok := r.relies[name]; ok {
					mi.Trusted = append(mi.Trusted, pn)
				}
			}
		}
		out = append(out, mi)
	}
	return out
}

// Name returns the map's name.
func (m *Map) Name() string { return m.name }

// Info describes the map.
func (m *Map) Info() MapInfo {
	for _, mi := range m.nf.Maps() {
		if mi.Name == m.name {
			return mi
		}
	}
	return MapInfo{Name: m.name}
}

// Lookup returns the value stored under key, or an error wrapping
// ebpf.ErrKeyNotExist. For per-CPU maps the value holds every possible
// CPU's value in CPU order, each padded to a multiple of 8 bytes.
func (m *Map) Lookup(key []byte) ([]byte, error) {
	if err := m.checkKey(key); err != nil {
		return nil, err
	}
	v, err := m.m.LookupBytes(key)
	if err != nil {
		return nil, fmt.Errorf("agent: map %s: lookup: %w", m.name, err)
	}
	if v == nil {
		return nil, fmt.Errorf("agent: map %s: lookup: %w", m.name, ebpf.ErrKeyNotExist)
	}
	return v, nil
}

// Update stores value under key with the given flags (ebpf.UpdateAny,
// UpdateNoExist, UpdateExist). For per-CPU maps, a value of ValueSize
// bytes is stored on every CPU. The map's guard is bumped before the
// write, so optimized code stops trusting the old contents first.
func (m *Map) Update(key, value []byte, flags ebpf.MapUpdateFlags) error {
	if err := m.checkKey(key); err != nil {
		return err
	}
	if uint32(len(value)) != m.m.ValueSize() {
		return fmt.Errorf("agent: map %s: value has %d bytes, map value size is %d", m.name, len(value), m.m.ValueSize())
	}
	return m.nf.change([]string{m.name}, func() error {
		var err error
		if mapstate.PerCPU(m.m.Type()) {
			var ncpu int
			if ncpu, err = ebpf.PossibleCPU(); err == nil {
				vals := make([][]byte, ncpu)
				for i := range vals {
					vals[i] = value
				}
				err = m.m.Update(key, vals, flags)
			}
		} else {
			err = m.m.Update(key, value, flags)
		}
		if err != nil {
			return fmt.Errorf("agent: map %s: update: %w", m.name, err)
		}
		m.nf.stats.MapUpdates++ // change holds the lock
		return nil
	})
}

// Delete removes key, bumping the map's guard first. A missing key gives
// an error wrapping ebpf.ErrKeyNotExist.
func (m *Map) Delete(key []byte) error {
	if err := m.checkKey(key); err != nil {
		return err
	}
	return m.nf.change([]string{m.name}, func() error {
		if err := m.m.Delete(key); err != nil {
			return fmt.Errorf("agent: map %s: delete: %w", m.name, err)
		}
		m.nf.stats.MapDeletes++ // change holds the lock
		return nil
	})
}

// Iterate calls fn for every entry in key order until fn returns false.
// Values are as Lookup returns them. The entries are read first, so fn
// may change the map.
func (m *Map) Iterate(fn func(key, value []byte) bool) error {
	mm, err := mapstate.SnapshotMap(m.m)
	if err != nil {
		return fmt.Errorf("agent: map %s: iterate: %w", m.name, err)
	}
	for _, e := range mm.Entries {
		v := []byte(e.Value)
		if e.Values != nil {
			v = joinPerCPU(e.Values)
		}
		if !fn(e.Key, v) {
			return nil
		}
	}
	return nil
}

func joinPerCPU(vals []mapstate.Hex) []byte {
	var b bytes.Buffer
	for _, v := range vals {
		b.Write(v)
		if pad := len(v) % 8; pad != 0 {
			b.Write(make([]byte, 8-pad))
		}
	}
	return b.Bytes()
}

func (m *Map) checkKey(key []byte) error {
	if uint32(len(key)) != m.m.KeySize() {
		return fmt.Errorf("agent: map %s: key has %d bytes, map key size is %d", m.name, len(key), m.m.KeySize())
	}
	return nil
}

// Apply writes every entry of state into the maps (variables cannot
// change after load and are rejected), bumping each affected map's guard
// once before the first write. Entries not mentioned are kept.
func (n *NF) Apply(state *mapstate.State) error {
	if state == nil {
		return nil
	}
	if len(state.Variables) > 0 {
		return errors.New("agent: global variables are fixed at load time")
	}
	names := make([]string, 0, len(state.Maps))
	for name := range state.Maps {
		names = append(names, name)
	}
	sort.Strings(names)
	n.mu.Lock()
	live := map[string]*ebpf.Map{}
	for _, name := range names {
		m, ok := n.maps[name]
		if !ok {
			n.mu.Unlock()
			return fmt.Errorf("agent: no map %q", name)
		}
		live[name] = m
	}
	n.mu.Unlock()
	return n.change(names, func() error {
		if err := state.Apply(live); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		for _, mm := range state.Maps {
			n.stats.MapUpdates += uint64(len(mm.Entries)) // change holds the lock
		}
		return nil
	})
}

// change runs op, which writes the named maps, inside the guard protocol:
//
//  1. every running optimized program that depends on one of the maps
//     without a guard (guard elision) gets its original swapped back in;
//     if that fails, op does not run;
//  2. the guard of every named map is bumped; if that fails, op does not
//     run;
//  3. op runs;
//  4. a cycle is queued to re-specialize to the new contents.
//
// The agent's lock is held throughout, so a cycle cannot swap in code
// built from contents older than the change (it checks the maps' change
// counts before swapping).
func (n *NF) change(names []string, op func() error) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return ErrClosed
	}
	if !n.stopped {
		for _, pn := range n.order {
			ps := n.progs[pn]
			if ps.running == nil {
				continue
			}
			for _, name := range names {
				if slices.Contains(ps.running.unguarded, name) {
					if err := n.restoreLocked(ps, "map "+name+" changes and its guard was elided"); err != nil {
						n.mu.Unlock()
						return fmt.Errorf("agent: map %s not changed: %w", name, err)
					}
					break
				}
			}
		}
		for _, name := range names {
			if err := n.bumpLocked(name); err != nil {
				n.mu.Unlock()
				return fmt.Errorf("agent: map %s not changed: bump guard: %w", name, err)
			}
		}
	}
	err := op()
	for _, name := range names {
		n.gen[name]++
	}
	if !n.stopped {
		if perr := n.persistLocked(); perr != nil {
			n.log.Warn("persist state", "err", perr)
		}
	}
	stopped := n.stopped
	n.mu.Unlock()
	if !stopped {
		n.kick("change")
	}
	return err
}
