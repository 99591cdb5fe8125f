package api

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/morpheus-go/morpheus/agent"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/mapstate"
)

// AgentNF is one network function served by an AgentBackend.
type AgentNF struct {
	NF *agent.NF
	// Heat, if set, is the profiler the NF was loaded with; its latest
	// heatmaps are served by /v1/heatmaps.
	Heat *HeatRecorder
}

// AgentBackend is the Backend of the daemon: it serves the network
// functions run by package agent. Events of all NFs are merged into one
// sequence; program run statistics come from the kernel (bpf_stats) and
// are kept monotonic across swaps.
type AgentBackend struct {
	nfs    []AgentNF
	byName map[string]AgentNF

	evMu   sync.Mutex
	events []Event
	seq    uint64
	maxEv  int

	runMu sync.Mutex
	runs  map[string]*runState

	cancels []func()
	wg      sync.WaitGroup
}

// runState accumulates the bpf_stats of a program across the kernel
// programs that ran in its place (originals, candidates, profiling
// variants). A program can come back (the optimized one after a profiling
// window), so the latest counts are kept per kernel program until it is
// gone, and only then folded into base.
type runState struct {
	cur  ebpf.ProgramID
	prog *ebpf.Program // handle on cur
	seen map[ebpf.ProgramID]RunStats
	base RunStats
}

// NewAgentBackend serves nfs, which must have distinct names. It
// subscribes to their events at once; call Close when done.
func NewAgentBackend(nfs []AgentNF) (*AgentBackend, error) {
	b := &AgentBackend{byName: map[string]AgentNF{}, runs: map[string]*runState{}, maxEv: 1024}
	for _, n := range nfs {
		name := n.NF.Name()
		if _, dup := b.byName[name]; dup {
			return nil, fmt.Errorf("two network functions are named %q", name)
		}
		if strings.Contains(name, ":") {
			return nil, fmt.Errorf("network function name %q contains ':'", name)
		}
		b.byName[name] = n
		b.nfs = append(b.nfs, n)
	}
	sort.Slice(b.nfs, func(i, j int) bool { return b.nfs[i].NF.Name() < b.nfs[j].NF.Name() })
	for _, n := range b.nfs {
		// Subscribe before reading the backlog: an event is then either
		// in the backlog or delivered, and the pump skips the overlap.
		ch, cancel := n.NF.Subscribe(256)
		b.cancels = append(b.cancels, cancel)
		var upTo uint64
		for _, e := range n.NF.Events(0) {
			b.add(n.NF.Name(), e)
			upTo = e.Seq
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			for e := range ch {
				if e.Seq > upTo {
					b.add(n.NF.Name(), e)
				}
			}
		}()
	}
	return b, nil
}

// Close stops following the NFs' events and releases program handles.
func (b *AgentBackend) Close() error {
	for _, c := range b.cancels {
		c()
	}
	b.wg.Wait()
	b.runMu.Lock()
	defer b.runMu.Unlock()
	for _, r := range b.runs {
		if r.prog != nil {
			r.prog.Close()
		}
	}
	return nil
}

func (b *AgentBackend) add(nf string, e agent.Event) {
	ev := Event{Time: e.Time, Kind: string(e.Kind), NF: nf, Program: e.Program, Map: e.Map, Message: e.Message}
	if c := e.Cycle; c != nil {
		ev.Duration = c.Duration
		if ev.Message == "" {
			var parts []string
			for _, p := range c.Programs {
				parts = append(parts, p.Program+" "+string(p.Outcome))
			}
			ev.Message = c.Trigger + ": " + strings.Join(parts, ", ")
		}
	}
	b.evMu.Lock()
	defer b.evMu.Unlock()
	b.seq++
	ev.Seq = b.seq
	b.events = append(b.events, ev)
	if len(b.events) > b.maxEv {
		b.events = append(b.events[:0:0], b.events[len(b.events)-b.maxEv:]...)
	}
}

func (b *AgentBackend) nf(name string) (*agent.NF, error) {
	n, ok := b.byName[name]
	if !ok {
		return nil, fmt.Errorf("network function %q: %w", name, ErrNotFound)
	}
	return n.NF, nil
}

// Programs implements Backend.
func (b *AgentBackend) Programs(ctx context.Context) ([]Program, error) {
	var out []Program
	for _, n := range b.nfs {
		maps := n.NF.Maps()
		for _, st := range n.NF.Programs() {
			p := Program{
				Name:                 st.Name,
				NF:                   n.NF.Name(),
				Type:                 st.Type,
				Enabled:              st.Enabled,
				Version:              int(st.Swaps),
				Optimized:            st.Optimized,
				Profiling:            st.Profiling,
				ProgramID:            uint32(st.RunningID),
				InstructionsOriginal: st.InstructionsOriginal,
				InstructionsRunning:  st.InstructionsRunning,
				SwappedAt:            st.SwappedAt,
				LastOutcome:          string(st.LastOutcome),
				LastReason:           st.LastReason,
			}
			if st.Error != "" && p.LastReason == "" {
				p.LastReason = st.Error
			}
			for _, a := range st.Attachments {
				p.Attach = append(p.Attach, describeAttachment(a))
			}
			for _, g := range st.Guarded {
				p.Guards = append(p.Guards, Guard{Map: g, Tripped: slices.Contains(st.Tripped, g)})
			}
			for _, g := range st.Unguarded {
				p.Guards = append(p.Guards, Guard{Map: g, Elided: true})
			}
			for _, m := range maps {
				p.Maps = append(p.Maps, m.Name)
			}
			p.Run = b.runStats(p.ID(), st.RunningID)
			out = append(out, p)
		}
	}
	return out, ctx.Err()
}

func describeAttachment(a agent.Attachment) string {
	s := a.String()
	if a.Kind == agent.XDP {
		s += " " + a.XDPMode.String()
	}
	if a.Netns != "" {
		s += " netns " + a.Netns
	}
	return s
}

// runStats returns the cumulative bpf_stats of a program, kept monotonic
// across swaps (runs between the last sample and a swap are lost).
func (b *AgentBackend) runStats(key string, id ebpf.ProgramID) RunStats {
	b.runMu.Lock()
	defer b.runMu.Unlock()
	r := b.runs[key]
	if r == nil {
		r = &runState{seen: map[ebpf.ProgramID]RunStats{}}
		b.runs[key] = r
	}
	if id != r.cur {
		if r.prog != nil {
			r.prog.Close()
			r.prog = nil
		}
		r.cur = id
		if id != 0 {
			if p, err := ebpf.NewProgramFromID(id); err == nil {
				r.prog = p
			}
		}
		// Programs that no longer exist cannot run again: their counts
		// are final.
		for old, st := range r.seen {
			if old == id {
				continue
			}
			p, err := ebpf.NewProgramFromID(old)
			if err == nil {
				p.Close()
				continue
			}
			if errors.Is(err, os.ErrNotExist) {
				r.base.Packets += st.Packets
				r.base.RunTime += st.RunTime
				delete(r.seen, old)
			}
		}
	}
	if r.prog != nil {
		if st, err := r.prog.Stats(); err == nil {
			r.seen[r.cur] = RunStats{Packets: st.RunCount, RunTime: st.Runtime}
		}
	}
	total := r.base
	for _, st := range r.seen {
		total.Packets += st.Packets
		total.RunTime += st.RunTime
	}
	return total
}

// SetEnabled implements Backend.
func (b *AgentBackend) SetEnabled(ctx context.Context, nf, program string, enabled bool) error {
	n, err := b.nf(nf)
	if err != nil {
		return err
	}
	if _, err := n.Program(program); err != nil {
		return fmt.Errorf("%v: %w", err, ErrNotFound)
	}
	return n.SetEnabled(program, enabled)
}

// Cycle implements Backend. The agent cycles a whole NF at a time, so a
// cycle for one program runs its NF's cycle and reports that program.
func (b *AgentBackend) Cycle(ctx context.Context, nf, program string) (*CycleResult, error) {
	targets := b.nfs
	if nf != "" {
		n, ok := b.byName[nf]
		if !ok {
			return nil, fmt.Errorf("network function %q: %w", nf, ErrNotFound)
		}
		if program != "" {
			if _, err := n.NF.Program(program); err != nil {
				return nil, fmt.Errorf("%v: %w", err, ErrNotFound)
			}
		}
		targets = []AgentNF{n}
	}
	start := time.Now()
	res := &CycleResult{}
	for _, n := range targets {
		st, err := n.NF.Cycle(ctx)
		if err != nil {
			return nil, fmt.Errorf("network function %q: %w", n.NF.Name(), err)
		}
		for _, pc := range st.Programs {
			if program != "" && pc.Program != program {
				continue
			}
			res.Programs = append(res.Programs, ProgramResult{
				NF:                 n.NF.Name(),
				Program:            pc.Program,
				Outcome:            string(pc.Outcome),
				Reason:             pc.Reason,
				InstructionsBefore: pc.InstructionsBefore,
				InstructionsAfter:  pc.InstructionsAfter,
			})
		}
	}
	res.Duration = time.Since(start)
	return res, nil
}

// Maps implements Backend.
func (b *AgentBackend) Maps(ctx context.Context) ([]Map, error) {
	var out []Map
	for _, n := range b.nfs {
		for _, mi := range n.NF.Maps() {
			out = append(out, Map{
				Name:       mi.Name,
				NF:         n.NF.Name(),
				Type:       mi.Type,
				KeySize:    mi.KeySize,
				ValueSize:  mi.ValueSize,
				MaxEntries: mi.MaxEntries,
				PerCPU:     mi.PerCPU,
				Guarded:    mi.Guarded,
				TrustedBy:  mi.Trusted,
			})
		}
	}
	return out, ctx.Err()
}

func (b *AgentBackend) handle(nf, name string) (*agent.Map, error) {
	n, err := b.nf(nf)
	if err != nil {
		return nil, err
	}
	m, err := n.Map(name)
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrNotFound)
	}
	return m, nil
}

// entry splits a per-CPU value (every CPU's value, each padded to 8
// bytes) into one value per CPU.
func entry(info agent.MapInfo, key, value []byte) mapstate.Entry {
	e := mapstate.Entry{Key: slices.Clone(key)}
	if !info.PerCPU {
		e.Value = slices.Clone(value)
		return e
	}
	stride := (int(info.ValueSize) + 7) &^ 7
	for off := 0; stride > 0 && off+int(info.ValueSize) <= len(value); off += stride {
		e.Values = append(e.Values, slices.Clone(value[off:off+int(info.ValueSize)]))
	}
	return e
}

// Entries implements Backend.
func (b *AgentBackend) Entries(ctx context.Context, nf, name string) ([]mapstate.Entry, error) {
	m, err := b.handle(nf, name)
	if err != nil {
		return nil, err
	}
	info := m.Info()
	var out []mapstate.Entry
	err = m.Iterate(func(k, v []byte) bool {
		out = append(out, entry(info, k, v))
		return ctx.Err() == nil
	})
	if err != nil {
		return nil, mapError(err)
	}
	return out, ctx.Err()
}

// Lookup implements Backend.
func (b *AgentBackend) Lookup(ctx context.Context, nf, name string, key []byte) (mapstate.Entry, error) {
	m, err := b.handle(nf, name)
	if err != nil {
		return mapstate.Entry{}, err
	}
	v, err := m.Lookup(key)
	if err != nil {
		return mapstate.Entry{}, mapError(err)
	}
	return entry(m.Info(), key, v), ctx.Err()
}

// Update implements Backend.
func (b *AgentBackend) Update(ctx context.Context, nf, name string, key, value []byte) error {
	m, err := b.handle(nf, name)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return mapError(m.Update(key, value, ebpf.UpdateAny))
}

// Delete implements Backend.
func (b *AgentBackend) Delete(ctx context.Context, nf, name string, key []byte) error {
	m, err := b.handle(nf, name)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return mapError(m.Delete(key))
}

// mapError classifies kernel map errors: a missing key is a 404; a key or
// value the kernel refuses for this map (array index out of range, a full
// map, a map type user space cannot write) is the client's problem.
func mapError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return fmt.Errorf("%w: %v", ErrNotFound, err)
	case errors.Is(err, unix.E2BIG), errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSPC),
		errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, ebpf.ErrKeyExist):
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return err
}

// Heatmaps implements Backend: per NF, the agent's own profile of every
// program merged with the heatmaps its Profiler served.
func (b *AgentBackend) Heatmaps(ctx context.Context) (map[string]*heatmap.Heatmap, error) {
	out := map[string]*heatmap.Heatmap{}
	for _, n := range b.nfs {
		var hs []*heatmap.Heatmap
		if n.Heat != nil {
			hs = append(hs, n.Heat.Last())
		}
		for _, st := range n.NF.Programs() {
			h, err := n.NF.Heatmap(st.Name)
			if err != nil {
				return nil, err
			}
			hs = append(hs, h)
		}
		if h := heatmap.Merge(hs...); h != nil && len(h.Maps) > 0 {
			out[n.NF.Name()] = h
		}
	}
	return out, ctx.Err()
}

// Events implements Backend.
func (b *AgentBackend) Events(ctx context.Context, after uint64) ([]Event, error) {
	b.evMu.Lock()
	defer b.evMu.Unlock()
	i := sort.Search(len(b.events), func(i int) bool { return b.events[i].Seq > after })
	return slices.Clone(b.events[i:]), ctx.Err()
}

// Stats implements Backend: the sum over the NFs.
func (b *AgentBackend) Stats(ctx context.Context) (Stats, error) {
	var s Stats
	for _, n := range b.nfs {
		st := n.NF.Stats()
		s.Cycles += st.Cycles
		s.Swaps += st.Swaps
		s.VerifierRejections += st.VerifierRejections
		s.DifferentialFailures += st.DifferentialFailures
		s.GuardBumps += st.GuardBumps
		s.Deoptimizations += st.Deoptimizations
		s.ProfileWindows += st.ProfileWindows
	}
	return s, ctx.Err()
}

// HeatRecorder wraps the profiler of an NF and remembers the heatmap it
// last returned for each program, so the API can show what the optimizer
// saw.
type HeatRecorder struct {
	inner agent.Profiler
	mu    sync.Mutex
	last  map[string]*heatmap.Heatmap
}

// NewHeatRecorder wraps p; pass the result as agent.Options.Profiler.
func NewHeatRecorder(p agent.Profiler) *HeatRecorder {
	return &HeatRecorder{inner: p, last: map[string]*heatmap.Heatmap{}}
}

// Heatmap implements agent.Profiler.
func (r *HeatRecorder) Heatmap(ctx context.Context, program string) (*heatmap.Heatmap, error) {
	h, err := r.inner.Heatmap(ctx, program)
	if err == nil && h != nil {
		r.mu.Lock()
		r.last[program] = h
		r.mu.Unlock()
	}
	return h, err
}

// Last merges the latest heatmaps of every program (counts of a key seen
// by several programs add up); nil before the first.
func (r *HeatRecorder) Last() *heatmap.Heatmap {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.last) == 0 {
		return nil
	}
	hs := make([]*heatmap.Heatmap, 0, len(r.last))
	for _, h := range r.last {
		hs = append(hs, h)
	}
	return heatmap.Merge(hs...)
}
