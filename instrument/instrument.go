// Package instrument builds the profiling variant of a BPF program: a copy
// whose map lookups also count, for a sample of their executions, the key
// they look up in a per-CPU hash ("heat map") of their own. The optimizer
// swaps the variant in for a profiling window, reads the heat maps into a
// heatmap.Heatmap and swaps the optimized program back in.
//
// # What is instrumented
//
// A lookup site (bpf_map_lookup_elem) is instrumented when the analysis
// knows which map it looks up and where its key lives, and the map is
// worth profiling: an LPM trie, or a hash map with more entries than
// Options.MaxInline (smaller tables are inlined whole by the mapinline
// pass, whatever the traffic). Arrays are never instrumented: their lookup
// is already an index. The key may be in the function's own stack at a
// known offset (the common case), or behind a pointer of a kind the
// analysis resolved (a caller's stack, a map value, global data, the
// packet). Any other site is left exactly as it was and listed in
// Variant.Skipped with the reason.
//
// # The injected code
//
// In front of the original call, for a sampled execution:
//
//	r1 = heat map; r2 = key pointer
//	r0 = bpf_map_lookup_elem(r1, r2)
//	if r0 != 0 { lock *(u64 *)(r0 + 0) += 1 }
//	else       { bpf_map_update_elem(heat, key, &one, BPF_NOEXIST) } // failure ignored
//	r1 = map; r2 = key pointer                                        // restored
//	r0 = bpf_map_lookup_elem(r1, r2)                                   // the original call
//
// The injected code writes no NF map: only the heat maps and the
// sampler's control map, which the NF's code never touches. The key is
// read in place with the original map's key size, so an LPM key is
// recorded whole (prefix length and data). At a lookup call only R1 (the
// map) and R2 (the key pointer) can be live among the caller-saved
// registers, since the call defines R0-R5; R1 is rematerialized from the
// map's identity the analysis proved, R2 as fp+keyOff for a stack key,
// else it is spilled to an 8-byte stack slot no instruction of the
// function touches (analysis StackUsage.FreeSlots) and reloaded. R6-R9
// survive helper calls. A stack key therefore costs no scratch memory.
//
// # Sampling
//
// SamplerCountdown (the default) keeps a countdown per CPU, in a
// cache-line-sized slot of a single-element array reached by a direct
// value pointer and indexed by bpf_get_smp_processor_id (which the x86-64
// verifier inlines). An unsampled execution costs 14 BPF instructions on
// x86-64 (the inlined CPU id, one read-modify-write of the CPU's own cache
// line, the branch, and restoring R1 and R2) and no helper call. When the
// countdown expires the site
// samples and reloads it with an interval drawn uniformly from
// [1, 2N-1] (mean N = round(1/Rate)) by a per-CPU xorshift generator, so
// the long-run sampling rate is exactly 1/N. SamplerPrandom is the seed's
// scheme: bpf_get_prandom_u32 on every execution, sampled when below
// Rate·2³². At Rate 1 every execution is recorded and no sampling code is
// emitted.
//
// # Recording
//
// RecorderHash (the default, the seed's scheme, shown above) counts keys in
// a per-CPU hash per map: exact counts, but each sample touches a hash
// bucket, element and per-CPU value that are rarely still in cache.
// RecorderRing instead appends the key to this CPU's ring (a cache line
// holding the number of samples written, then RingEntries key slots, in a
// single-element array reached by a direct value pointer): a few
// sequential stores per sample. Reading counts the keys in the rings, each
// CPU's entries weighted by the samples that CPU wrote since the last
// drain over the entries its ring holds, so the estimate covers the whole
// window as long as the traffic mix is steady within it; counts are exact
// while a window's samples fit the ring.
//
// # Reading
//
// Heat maps are read from the collection loaded from Variant.Spec
// (Variant.Load shares the running NF's maps): Collect reads them, Drain
// reads and empties them (one window of a profile), Reset empties them and
// Decay ages counts in place. The heatmap.Heatmap returned is keyed by the
// instrumented map's original name; its counts are estimated executions,
// the per-CPU counts summed and multiplied by 1/Rate (exact at Rate 1).
// The agent's loop: Instrument, Load against the live maps, swap the
// variant in for a window, Drain into a heatmap.Profile (decaying across
// windows), swap the optimized program back in.
package instrument

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/morpheus-go/morpheus/analysis"
	"github.com/morpheus-go/morpheus/program"
	"github.com/morpheus-go/morpheus/verify"
)

// Defaults of Options.
const (
	// DefaultRate is the seed's sampling rate: 5% of lookups.
	DefaultRate = 0.05
	// DefaultMaxInline matches passes.DefaultOptions().MaxInline: maps with
	// at most this many entries are inlined whole and need no profile.
	DefaultMaxInline = 64
	// DefaultHeatmapEntries bounds each heat map. Keys first seen when
	// the map is full are not recorded until it is drained.
	DefaultHeatmapEntries = 4096
)

// maxInterval is the countdown sampler's largest mean interval: reloads
// draw from [1, 2N-1], and 2N-1 must fit a positive 32-bit immediate.
const maxInterval = 1 << 30

// Sampler selects how the injected code decides to record an execution.
type Sampler int

const (
	// SamplerCountdown records every N-th execution on average using a
	// per-CPU countdown with randomized reloads; no helper call unless
	// sampled.
	SamplerCountdown Sampler = iota
	// SamplerPrandom draws bpf_get_prandom_u32 on every execution.
	SamplerPrandom
)

// String names the sampler as the CLI spells it.
func (s Sampler) String() string {
	switch s {
	case SamplerCountdown:
		return "countdown"
	case SamplerPrandom:
		return "prandom"
	}
	return fmt.Sprintf("Sampler(%d)", int(s))
}

// ParseSampler parses a sampler name as printed by Sampler.String.
func ParseSampler(s string) (Sampler, error) {
	switch s {
	case "countdown", "":
		return SamplerCountdown, nil
	case "prandom":
		return SamplerPrandom, nil
	}
	return 0, fmt.Errorf("instrument: unknown sampler %q (countdown or prandom)", s)
}

// Recorder selects how a sampled execution is recorded.
type Recorder int

const (
	// RecorderHash counts keys in a per-CPU hash per map (the seed's
	// scheme): exact counts, but a sample touches a hash entry that is
	// rarely in cache.
	RecorderHash Recorder = iota
	// RecorderRing appends sampled keys to a per-CPU ring per map with
	// sequential stores, counted in Go when the ring is read. A sample
	// costs a few stores; the ring holds the last RingEntries samples
	// of each CPU, which stand for all samples since the last drain.
	RecorderRing
)

// String names the recorder as the CLI spells it.
func (r Recorder) String() string {
	switch r {
	case RecorderHash:
		return "hash"
	case RecorderRing:
		return "ring"
	}
	return fmt.Sprintf("Recorder(%d)", int(r))
}

// ParseRecorder parses a recorder name as printed by Recorder.String.
func ParseRecorder(s string) (Recorder, error) {
	switch s {
	case "hash", "":
		return RecorderHash, nil
	case "ring":
		return RecorderRing, nil
	}
	return 0, fmt.Errorf("instrument: unknown recorder %q (hash or ring)", s)
}

// DefaultRingEntries is the per-CPU capacity of a ring recorder, reduced
// when the rings of all CPUs would not fit one array value (4 MiB).
const DefaultRingEntries = 1 << 14

// maxRingValue is the kernel's limit on an array value (KMALLOC_MAX_SIZE).
const maxRingValue = 4 << 20

// Options selects and tunes the instrumentation.
type Options struct {
	// Rate is the fraction of lookup executions recorded, in (0, 1].
	// Zero means DefaultRate. With SamplerCountdown the rate used is
	// 1/round(1/Rate) (Variant.Rate).
	Rate float64
	// Sampler picks the sampling scheme; the zero value is
	// SamplerCountdown.
	Sampler Sampler
	// MaxInline: a hash map with at most this many entries is not
	// instrumented. Zero means DefaultMaxInline; negative instruments
	// maps of any size. LPM tries are instrumented whatever their size,
	// as in the seed: the hot addresses matter even for a short table.
	MaxInline int
	// Entries gives the current number of entries per map name (from the
	// control plane's state). A map not listed counts with its
	// MaxEntries, the most it can hold.
	Entries map[string]int
	// Maps restricts instrumentation to the named maps; nil means every
	// qualifying map.
	Maps []string
	// Sites restricts instrumentation to these analysis site IDs; nil
	// means every qualifying site.
	Sites []int
	// HeatmapEntries is the capacity of each heat map. Zero means
	// DefaultHeatmapEntries.
	HeatmapEntries uint32
	// Recorder picks the recording scheme; the zero value is
	// RecorderHash.
	Recorder Recorder
	// RingEntries is the per-CPU capacity of RecorderRing, rounded down
	// to a power of two. Zero means DefaultRingEntries.
	RingEntries uint32
	// Seed seeds the per-CPU generators of SamplerCountdown (they are
	// stored in the control map's initial contents). Zero picks 1.
	Seed uint64
}

func (o Options) withDefaults() (Options, error) {
	if o.Rate == 0 {
		o.Rate = DefaultRate
	}
	if !(o.Rate > 0 && o.Rate <= 1) {
		return o, fmt.Errorf("instrument: rate %v is not in (0, 1]", o.Rate)
	}
	if o.MaxInline == 0 {
		o.MaxInline = DefaultMaxInline
	}
	if o.HeatmapEntries == 0 {
		o.HeatmapEntries = DefaultHeatmapEntries
	}
	if o.Sampler != SamplerCountdown && o.Sampler != SamplerPrandom {
		return o, fmt.Errorf("instrument: unknown sampler %d", int(o.Sampler))
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.Recorder != RecorderHash && o.Recorder != RecorderRing {
		return o, fmt.Errorf("instrument: unknown recorder %d", int(o.Recorder))
	}
	if o.RingEntries == 0 {
		o.RingEntries = DefaultRingEntries
	}
	return o, nil
}

// Variant is an instrumented copy of a collection.
type Variant struct {
	// Spec is a copy of the input collection spec in which Program has
	// the instrumented code and the heat maps and the control map are
	// added. Load it with CollectionOptions.MapReplacements set to the
	// running NF's maps to profile live traffic.
	Spec *ebpf.CollectionSpec
	// Program is the name of the instrumented program in Spec.Programs.
	Program string
	// Rate is the sampling rate the code implements: Options.Rate, or
	// 1/N for SamplerCountdown.
	Rate float64
	// Sampler is the sampling scheme of the code.
	Sampler Sampler
	// Recorder is the recording scheme; RingEntries the per-CPU ring
	// capacity of RecorderRing.
	Recorder    Recorder
	RingEntries uint32
	// Sites are the instrumented lookups in program order.
	Sites []SiteInfo
	// Skipped lists the lookup sites left alone and why.
	Skipped []Skip
	// HeatMaps maps an instrumented map's name to its heat map's name
	// (its ring's name with RecorderRing).
	HeatMaps map[string]string
	// ControlMap is the single-element array holding the constant 1 that
	// new heat map entries start from and, for SamplerCountdown, the
	// per-CPU sampler state.
	ControlMap string
	// Original holds the program's instructions before instrumentation.
	Original asm.Instructions
}

// SiteInfo describes one instrumented lookup.
type SiteInfo struct {
	// Site is the analysis site ID (analysis.Result.Sites index).
	Site int `json:"site"`
	// Func, Block and Index locate the call in the lifted original.
	Func  string `json:"func"`
	Block int    `json:"block"`
	Index int    `json:"index"`
	// Map is the looked-up map, HeatMap the map counting its keys.
	Map     string `json:"map"`
	HeatMap string `json:"heat_map"`
	// KeySize is the key's size in bytes.
	KeySize uint32 `json:"key_size"`
	// KeyLocation is where the key lives (analysis.Operand.Location):
	// "stack" for the function's own frame, else parent_stack,
	// map_value, map_data or packet.
	KeyLocation string `json:"key_location"`
	// KeyOff is the key's offset from R10 for a stack key.
	KeyOff int `json:"key_off,omitempty"`
	// KeySpill is the offset from R10 of the scratch slot that keeps the
	// key pointer (R2) across the injected calls when the key is not in
	// the function's own frame; 0 for stack keys, whose pointer is
	// rematerialized as fp+KeyOff.
	KeySpill int `json:"key_spill,omitempty"`
}

// Skip is a lookup site that was not instrumented.
type Skip struct {
	Site   int    `json:"site"`
	Map    string `json:"map"`
	Reason string `json:"reason"`
}

// Added returns the names of the maps the instrumentation added to Spec,
// sorted: the heat maps and the control map. Every other map of Spec is
// the NF's own.
func (v *Variant) Added() []string {
	var out []string
	for _, hm := range v.HeatMaps {
		out = append(out, hm)
	}
	out = append(out, v.ControlMap)
	slices.Sort(out)
	return out
}

// IsAdded reports whether the named map was added by the instrumentation.
func (v *Variant) IsAdded(name string) bool {
	return slices.Contains(v.Added(), name)
}

// Baseline returns a copy of Spec in which Program has its original code:
// the same maps as the variant, so that verify.Differential can run the
// original and the variant (as the candidate) against identical map sets.
func (v *Variant) Baseline() *ebpf.CollectionSpec {
	s := v.Spec.Copy()
	s.Programs[v.Program].Instructions = slices.Clone(v.Original)
	return s
}

// Load loads the variant through the kernel verifier (verify.Load, so a
// rejection is a *verify.VerifierError) with every map of live whose name
// is in Spec used in place of a new one: pass the running NF's maps, and
// the variant reads and updates the NF's state while its heat maps and
// control map are created fresh. Passing the maps of a previously loaded
// variant of the same program as well keeps its heat maps' counts. The
// caller owns the returned collection and attaches (swaps in) its
// Program.
func (v *Variant) Load(live map[string]*ebpf.Map) (*ebpf.Collection, error) {
	repl := map[string]*ebpf.Map{}
	for name, m := range live {
		if v.Spec.Maps[name] != nil {
			repl[name] = m
		}
	}
	return verify.Load(v.Spec, nil, verify.LoadOptions{MapReplacements: repl})
}

// Scale is the factor from recorded counts to estimated executions: 1/Rate.
func (v *Variant) Scale() float64 { return 1 / v.Rate }

// ErrNoSites is returned (wrapped) by Instrument when no lookup of the
// program qualifies; the variant would equal the original.
var ErrNoSites = errors.New("instrument: no lookup site qualifies")

// Instrument builds the profiling variant of program progName of spec.
// spec is not modified. If no site qualifies it returns an error wrapping
// ErrNoSites together with the variant (whose Skipped says why).
func Instrument(spec *ebpf.CollectionSpec, progName string, opts Options) (*Variant, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if spec == nil {
		return nil, errors.New("instrument: nil collection spec")
	}
	ps, ok := spec.Programs[progName]
	if !ok {
		return nil, fmt.Errorf("instrument: program %q is not in the collection spec", progName)
	}
	coll := spec.Copy()
	prog, err := program.Lift(coll.Programs[progName])
	if err != nil {
		return nil, fmt.Errorf("instrument: lift %s: %w", progName, err)
	}
	res, err := analysis.Analyze(coll, prog, analysis.Options{})
	if err != nil {
		return nil, fmt.Errorf("instrument: %w", err)
	}

	v := &Variant{
		Spec:     coll,
		Program:  progName,
		Rate:     opts.Rate,
		Sampler:  opts.Sampler,
		Recorder: opts.Recorder,
		HeatMaps: map[string]string{},
		Original: slices.Clone(ps.Instructions),
	}
	var n int
	if opts.Sampler == SamplerCountdown {
		if opts.Rate < 1/float64(maxInterval) {
			return nil, fmt.Errorf("instrument: rate %v is below the countdown sampler's 1/%d", opts.Rate, maxInterval)
		}
		n = int(math.Round(1 / opts.Rate))
		v.Rate = 1 / float64(n)
	}

	blocks := map[int]*program.Block{}
	funcs := map[int]*program.Func{}
	for _, f := range prog.Funcs {
		for _, b := range f.Blocks {
			blocks[b.ID], funcs[b.ID] = b, f
		}
	}
	type plan struct {
		info  SiteInfo
		block *program.Block
		fn    *program.Func
	}
	var plans []plan
	for _, s := range res.Sites {
		if s.Kind != analysis.SiteLookup {
			continue
		}
		b := blocks[s.Block]
		why := qualify(coll, res, s, b, opts)
		if why != "" {
			v.Skipped = append(v.Skipped, Skip{Site: s.ID, Map: s.Map, Reason: why})
			continue
		}
		ms := coll.Maps[s.Map]
		info := SiteInfo{Site: s.ID, Func: s.Func, Block: s.Block, Index: s.Index, Map: s.Map,
			KeySize: ms.KeySize, KeyLocation: s.Key.Location}
		if onOwnStack(s.Key) {
			info.KeyOff = s.Key.StackOff
		} else {
			slot, ok := scratchSlot(res, s.Func)
			if !ok {
				v.Skipped = append(v.Skipped, Skip{Site: s.ID, Map: s.Map, Reason: "no free stack slot to keep the key pointer"})
				continue
			}
			info.KeySpill = slot
		}
		plans = append(plans, plan{info: info, block: b, fn: funcs[s.Block]})
	}
	if len(plans) == 0 {
		return v, fmt.Errorf("%w in %s (%d lookups skipped)", ErrNoSites, progName, len(v.Skipped))
	}

	e := &emitter{prog: prog, rate: opts.Rate, sampler: opts.Sampler, n: n, recorder: opts.Recorder}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("instrument: %w", err)
	}
	e.cpuSlots = controlSlots(cpus)
	slots := 0
	if opts.Rate < 1 && opts.Sampler == SamplerCountdown {
		slots = e.cpuSlots
	}
	if opts.Recorder == RecorderRing {
		maxKey := uint32(0)
		for _, p := range plans {
			maxKey = max(maxKey, p.info.KeySize)
		}
		e.ringEntries = ringEntries(opts.RingEntries, uint32(e.cpuSlots), maxKey)
		v.RingEntries = e.ringEntries
	}
	e.ctl = uniqueName(coll, "hm_ctl", "")
	coll.Maps[e.ctl] = controlSpec(e.ctl, slots, n, opts.Seed)
	v.ControlMap = e.ctl
	// Rewrite from the last site of each block backwards so that the
	// instruction indices of earlier sites stay valid.
	slices.SortStableFunc(plans, func(a, b plan) int { return b.info.Index - a.info.Index })
	for _, p := range plans {
		hm, ok := v.HeatMaps[p.info.Map]
		if !ok {
			hm = uniqueName(coll, "hm_", p.info.Map)
			if opts.Recorder == RecorderRing {
				coll.Maps[hm] = ringSpec(hm, p.info.KeySize, e.ringEntries, e.cpuSlots)
			} else {
				coll.Maps[hm] = heatSpec(hm, p.info.KeySize, opts.HeatmapEntries)
			}
			v.HeatMaps[p.info.Map] = hm
		}
		p.info.HeatMap = hm
		e.site(p.fn, p.block, p.info)
		v.Sites = append(v.Sites, p.info)
	}
	slices.SortFunc(v.Sites, func(a, b SiteInfo) int { return a.Site - b.Site })

	insns, err := prog.Lower()
	if err != nil {
		return nil, fmt.Errorf("instrument: lower %s: %w", progName, err)
	}
	coll.Programs[progName].Instructions = insns
	return v, nil
}

// qualify returns why site s may not be instrumented, or "".
func qualify(coll *ebpf.CollectionSpec, res *analysis.Result, s *analysis.Site, b *program.Block, opts Options) string {
	if opts.Sites != nil && !slices.Contains(opts.Sites, s.ID) {
		return "not selected (Options.Sites)"
	}
	if s.Map == "" {
		return "the analysis cannot tell which map is looked up"
	}
	if opts.Maps != nil && !slices.Contains(opts.Maps, s.Map) {
		return "map not selected (Options.Maps)"
	}
	ms := coll.Maps[s.Map]
	if ms == nil {
		return "map is not in the collection spec"
	}
	switch ms.Type {
	case ebpf.LPMTrie:
	case ebpf.Hash, ebpf.LRUHash, ebpf.PerCPUHash, ebpf.LRUCPUHash:
		entries, ok := opts.Entries[s.Map]
		if !ok {
			entries = int(ms.MaxEntries)
		}
		if opts.MaxInline >= 0 && entries <= opts.MaxInline {
			return fmt.Sprintf("%d entries: small enough to inline whole", entries)
		}
	default:
		return fmt.Sprintf("%s maps are not profiled", ms.Type)
	}
	if s.Helper != asm.FnMapLookupElem.String() {
		return "not a bpf_map_lookup_elem call"
	}
	k := s.Key
	switch {
	case k == nil:
		return "no key operand"
	case !keyLocations[k.Location]:
		return "key pointer of unknown kind (" + k.Location + ")"
	case k.Location == "stack" && !k.OffKnown:
		return "key at a variable stack offset"
	case k.Size != int(ms.KeySize) || k.Size <= 0:
		return fmt.Sprintf("key size %d, map key size %d", k.Size, ms.KeySize)
	}
	if b == nil || s.Index >= len(b.Insns) {
		return "site not found in the program"
	}
	call := b.Insns[s.Index]
	if !call.IsBuiltinCall() || asm.BuiltinFunc(call.Constant) != asm.FnMapLookupElem {
		return "site is not the lookup call"
	}
	// Double-check the facts the rewrite relies on: R1 is exactly the
	// map and R2 exactly fp+keyOff on every path to the call, and no other
	// caller-saved register is live (the injected calls clobber R0-R5).
	st := res.StateBefore(b, s.Index)
	if st == nil {
		return "site is unreachable"
	}
	r1, r2 := st.Reg(asm.R1), st.Reg(asm.R2)
	if r1.Kind != analysis.PtrMap || r1.Map != s.Map {
		return "R1 is not known to be the map"
	}
	if onOwnStack(k) && (r2.Kind != analysis.PtrStack || !r2.OffKnown || r2.Off != int64(k.StackOff)) {
		return "R2 is not known to be fp+keyOff"
	}
	if r2.Kind.String() != k.Location {
		return "R2 does not hold the key pointer"
	}
	live := res.LiveIn(b, s.Index)
	for _, r := range []asm.Register{asm.R0, asm.R3, asm.R4, asm.R5} {
		if live.Has(r) {
			return fmt.Sprintf("%s is live across the call", r)
		}
	}
	return ""
}

// keyLocations are the key pointer kinds the injected code can pass on:
// memory the verifier lets a helper read as a key and that the injected
// code never writes.
var keyLocations = map[string]bool{
	"stack": true, "parent_stack": true, "map_value": true, "map_data": true, "packet": true,
}

// onOwnStack reports whether the key is at a known offset of the
// function's own frame, so that its pointer can be rebuilt from R10.
func onOwnStack(k *analysis.Operand) bool {
	return k.Location == "stack" && k.OffKnown
}

// scratchSlot returns an 8-byte stack slot of function fn that no
// instruction touches: the highest one, so that the frame grows as
// little as possible (the frames of a call chain share 512 bytes).
func scratchSlot(res *analysis.Result, fn string) (int, bool) {
	u := res.Stack(fn)
	if u == nil || u.All || len(u.FreeSlots) == 0 {
		return 0, false
	}
	return u.FreeSlots[0], true
}

// uniqueName returns prefix+base cut to the kernel's 15 characters, made
// unique among coll's maps by a number.
func uniqueName(coll *ebpf.CollectionSpec, prefix, base string) string {
	const maxLen = 15 // BPF_OBJ_NAME_LEN - 1
	cut := func(s string) string {
		if len(s) > maxLen {
			return s[:maxLen]
		}
		return s
	}
	// The kernel accepts only [A-Za-z0-9_.] in object names.
	clean := strings.Map(func(r rune) rune {
		if r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' {
			return r
		}
		return '_'
	}, base)
	name := cut(prefix + clean)
	for i := 1; coll.Maps[name] != nil; i++ {
		suffix := fmt.Sprint(i)
		name = cut(prefix + clean)[:min(len(cut(prefix+clean)), maxLen-len(suffix))] + suffix
	}
	return name
}

// ringStride is the bytes one CPU's ring takes: a cache line holding the
// number of samples written so far, then the entries, each key padded to
// 8 bytes. It is a multiple of 64, so CPUs never share a line.
func ringStride(keySize, entries uint32) uint32 {
	return lineSize + entries*((keySize+7)&^7)
}

// ringEntries returns the largest power of two at most want whose rings
// for slots CPUs and keys of keySize bytes fit one array value.
func ringEntries(want, slots, keySize uint32) uint32 {
	n := uint32(1) << (bits.Len32(max(want, 8)) - 1)
	for n > 8 && uint64(slots)*uint64(ringStride(keySize, n)) > maxRingValue {
		n /= 2
	}
	return n
}

// ringSpec is a single-element array holding one sample ring per CPU
// slot, reached through a direct value pointer.
func ringSpec(name string, keySize, entries uint32, slots int) *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       name,
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  uint32(slots) * ringStride(keySize, entries),
		MaxEntries: 1,
	}
}

// heatSpec is the per-CPU hash counting one map's keys.
func heatSpec(name string, keySize, entries uint32) *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name:       name,
		Type:       ebpf.PerCPUHash,
		KeySize:    keySize,
		ValueSize:  8,
		MaxEntries: entries,
	}
}
