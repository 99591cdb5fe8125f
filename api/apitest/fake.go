// Package apitest provides an in-memory api.Backend for tests of the API
// server, its clients and the status page: programs, maps with real key
// and value sizes, guards, events and counters behave like the agent's,
// without a kernel.
package apitest

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/morpheus-go/morpheus/api"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/mapstate"
	"github.com/morpheus-go/morpheus/passes"
)

// Fake is an in-memory api.Backend. Its zero value is not usable; build
// one with New. It is safe for concurrent use.
type Fake struct {
	mu       sync.Mutex
	programs []api.Program
	maps     []api.Map
	entries  map[string]map[string][]byte // map ID -> hex key -> value
	heat     map[string]*heatmap.Heatmap
	events   []api.Event
	stats    api.Stats
	seq      uint64
	now      func() time.Time
}

// New returns a fake with one NF "router" running program "xdp_router"
// (two routes, a hot-key heatmap) and one NF "fw" with program
// "xdp_firewall" whose map "routes" clashes with the router's by name.
func New() *Fake {
	f := &Fake{
		entries: map[string]map[string][]byte{},
		heat:    map[string]*heatmap.Heatmap{},
		now:     time.Now,
	}
	f.programs = []api.Program{
		{
			Name: "xdp_firewall", NF: "fw", Type: "XDP", Attach: []string{"xdp_firewall xdp@veth1"},
			Enabled: true, ProgramID: 20, InstructionsOriginal: 400, InstructionsRunning: 400,
			Maps: []string{"routes", "rules"},
		},
		{
			Name: "xdp_router", NF: "router", Type: "XDP", Attach: []string{"xdp_router xdp@veth0"},
			Enabled: true, Version: 1, Optimized: true, ProgramID: 11,
			InstructionsOriginal: 220, InstructionsRunning: 180,
			Passes:  []passes.PassResult{{Name: "hotcache", Changes: 1, Duration: 3 * time.Millisecond}},
			Remarks: []passes.Remark{{Pass: "hotcache", Func: "xdp_router", Block: 4, Map: "routes", Applied: true, Message: "cached 2 hot keys"}},
			Guards:  []api.Guard{{Map: "routes"}},
			Maps:    []string{"routes", "counters"},
		},
	}
	f.maps = []api.Map{
		{Name: "routes", NF: "fw", Type: "Hash", KeySize: 4, ValueSize: 4, MaxEntries: 16},
		{Name: "rules", NF: "fw", Type: "Array", KeySize: 4, ValueSize: 8, MaxEntries: 4},
		{Name: "counters", NF: "router", Type: "PerCPUArray", KeySize: 4, ValueSize: 8, MaxEntries: 4, PerCPU: true},
		{Name: "routes", NF: "router", Type: "LPMTrie", KeySize: 8, ValueSize: 8, MaxEntries: 1024, Guarded: true, TrustedBy: []string{"xdp_router"}},
	}
	f.entries["router:routes"] = map[string][]byte{
		"18000000c0a80100": {1, 0, 0, 0, 0, 0, 0, 0},
		"080000000a000000": {2, 0, 0, 0, 0, 0, 0, 0},
	}
	f.heat["router"] = &heatmap.Heatmap{Maps: map[string][]heatmap.Key{
		"routes": {
			{Key: mapstate.Hex{0x20, 0, 0, 0, 0xc0, 0xa8, 0x01, 0x07}, Count: 900},
			{Key: mapstate.Hex{0x20, 0, 0, 0, 0x0a, 0, 0, 0x01}, Count: 300},
			{Key: mapstate.Hex{0x20, 0, 0, 0, 0x0a, 0, 0, 0x02}, Count: 40},
		},
	}}
	return f
}

// SetRun sets a program's cumulative run statistics (as bpf_stats would
// report them).
func (f *Fake) SetRun(id string, packets uint64, runTime time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.programs {
		if f.programs[i].ID() == id {
			f.programs[i].Run = api.RunStats{Packets: packets, RunTime: runTime}
		}
	}
}

// AddEvent appends an event as the agent would.
func (f *Fake) AddEvent(e api.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addEvent(e)
}

func (f *Fake) addEvent(e api.Event) {
	f.seq++
	e.Seq = f.seq
	if e.Time.IsZero() {
		e.Time = f.now()
	}
	f.events = append(f.events, e)
}

// Programs implements api.Backend.
func (f *Fake) Programs(ctx context.Context) ([]api.Program, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.programs), ctx.Err()
}

func (f *Fake) program(nf, name string) (*api.Program, error) {
	for i := range f.programs {
		if f.programs[i].NF == nf && f.programs[i].Name == name {
			return &f.programs[i], nil
		}
	}
	return nil, fmt.Errorf("program %s: %w", name, api.ErrNotFound)
}

// SetEnabled implements api.Backend.
func (f *Fake) SetEnabled(ctx context.Context, nf, name string, enabled bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, err := f.program(nf, name)
	if err != nil {
		return err
	}
	p.Enabled = enabled
	if !enabled && p.Optimized {
		p.Optimized = false
		p.InstructionsRunning = p.InstructionsOriginal
		f.stats.Deoptimizations++
		f.addEvent(api.Event{Kind: "restore", NF: nf, Program: name, Message: "optimization disabled"})
	}
	return ctx.Err()
}

// Cycle implements api.Backend: every enabled program in scope gets a new
// version.
func (f *Fake) Cycle(ctx context.Context, nf, name string) (*api.CycleResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if name != "" {
		if _, err := f.program(nf, name); err != nil {
			return nil, err
		}
	}
	res := &api.CycleResult{Duration: 12 * time.Millisecond}
	found := false
	for i := range f.programs {
		p := &f.programs[i]
		if (nf != "" && p.NF != nf) || (name != "" && p.Name != name) {
			continue
		}
		found = true
		r := api.ProgramResult{NF: p.NF, Program: p.Name, InstructionsBefore: p.InstructionsOriginal}
		if !p.Enabled {
			r.Outcome, r.Reason = "skipped", "optimization disabled"
		} else {
			p.Version++
			p.Optimized = true
			p.SwappedAt = f.now()
			p.LastOutcome, r.Outcome = "swapped", "swapped"
			f.stats.Swaps++
			f.addEvent(api.Event{Kind: "swap", NF: p.NF, Program: p.Name, Message: fmt.Sprintf("version %d", p.Version)})
		}
		r.InstructionsAfter = p.InstructionsRunning
		res.Programs = append(res.Programs, r)
	}
	if !found {
		return nil, fmt.Errorf("NF %q: %w", nf, api.ErrNotFound)
	}
	f.stats.Cycles++
	f.addEvent(api.Event{Kind: api.EventCycle, NF: nf, Program: name, Duration: res.Duration})
	return res, ctx.Err()
}

// Maps implements api.Backend.
func (f *Fake) Maps(ctx context.Context) ([]api.Map, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.maps), ctx.Err()
}

func (f *Fake) lookupMap(nf, name string) (api.Map, error) {
	for _, m := range f.maps {
		if m.NF == nf && m.Name == name {
			return m, nil
		}
	}
	return api.Map{}, fmt.Errorf("map %s: %w", name, api.ErrNotFound)
}

// check re-validates sizes: the server already does, but a backend must
// not trust its caller.
func check(m api.Map, key, value []byte, withValue bool) error {
	if uint32(len(key)) != m.KeySize {
		return fmt.Errorf("key has %d bytes, want %d: %w", len(key), m.KeySize, api.ErrInvalid)
	}
	if withValue && uint32(len(value)) != m.ValueSize {
		return fmt.Errorf("value has %d bytes, want %d: %w", len(value), m.ValueSize, api.ErrInvalid)
	}
	return nil
}

// Entries implements api.Backend.
func (f *Fake) Entries(ctx context.Context, nf, name string) ([]mapstate.Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.lookupMap(nf, name); err != nil {
		return nil, err
	}
	var out []mapstate.Entry
	for k, v := range f.entries[nf+":"+name] {
		kb, _ := hex.DecodeString(k)
		out = append(out, mapstate.Entry{Key: kb, Value: slices.Clone(v)})
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].Key, out[j].Key) < 0 })
	return out, ctx.Err()
}

// Lookup implements api.Backend.
func (f *Fake) Lookup(ctx context.Context, nf, name string, key []byte) (mapstate.Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, err := f.lookupMap(nf, name)
	if err != nil {
		return mapstate.Entry{}, err
	}
	if err := check(m, key, nil, false); err != nil {
		return mapstate.Entry{}, err
	}
	v, ok := f.entries[nf+":"+name][hex.EncodeToString(key)]
	if !ok {
		return mapstate.Entry{}, fmt.Errorf("key not in map: %w", api.ErrNotFound)
	}
	return mapstate.Entry{Key: slices.Clone(key), Value: slices.Clone(v)}, ctx.Err()
}

// Update implements api.Backend: a guarded map's guard is bumped first.
func (f *Fake) Update(ctx context.Context, nf, name string, key, value []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, err := f.lookupMap(nf, name)
	if err != nil {
		return err
	}
	if err := check(m, key, value, true); err != nil {
		return err
	}
	f.bump(m)
	id := nf + ":" + name
	if f.entries[id] == nil {
		f.entries[id] = map[string][]byte{}
	}
	f.entries[id][hex.EncodeToString(key)] = slices.Clone(value)
	return ctx.Err()
}

// Delete implements api.Backend.
func (f *Fake) Delete(ctx context.Context, nf, name string, key []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, err := f.lookupMap(nf, name)
	if err != nil {
		return err
	}
	if err := check(m, key, nil, false); err != nil {
		return err
	}
	k := hex.EncodeToString(key)
	if _, ok := f.entries[nf+":"+name][k]; !ok {
		return fmt.Errorf("key not in map: %w", api.ErrNotFound)
	}
	f.bump(m)
	delete(f.entries[nf+":"+name], k)
	return ctx.Err()
}

func (f *Fake) bump(m api.Map) {
	if !m.Guarded {
		return
	}
	f.stats.GuardBumps++
	for i := range f.programs {
		for j := range f.programs[i].Guards {
			g := &f.programs[i].Guards[j]
			if f.programs[i].NF == m.NF && g.Map == m.Name {
				g.Tripped = true
			}
		}
	}
	f.addEvent(api.Event{Kind: "guard-bump", NF: m.NF, Map: m.Name})
}

// Heatmaps implements api.Backend.
func (f *Fake) Heatmaps(ctx context.Context) (map[string]*heatmap.Heatmap, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]*heatmap.Heatmap, len(f.heat))
	for nf, h := range f.heat {
		c := &heatmap.Heatmap{Maps: map[string][]heatmap.Key{}}
		for m, keys := range h.Maps {
			c.Maps[m] = slices.Clone(keys)
		}
		out[nf] = c
	}
	return out, ctx.Err()
}

// Events implements api.Backend.
func (f *Fake) Events(ctx context.Context, after uint64) ([]api.Event, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []api.Event
	for _, e := range f.events {
		if e.Seq > after {
			out = append(out, e)
		}
	}
	return out, ctx.Err()
}

// Stats implements api.Backend.
func (f *Fake) Stats(ctx context.Context) (api.Stats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats, ctx.Err()
}
