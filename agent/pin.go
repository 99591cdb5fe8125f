package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/morpheus-go/morpheus/guard"
)

// Pin layout under Options.PinDir:
//
//	maps/NAME           the network function's maps
//	progs/NAME          its original programs
//	links/PROG-KIND-IF  its XDP links (they keep the programs attached)
//	agent/guards        the live guard map
//	agent/state         the agent's state (guard slots, what runs, and
//	                    the fingerprints of the maps it trusts)
//
// bpffs refuses '.' in names, so ".rodata" is pinned as "_dot_rodata".
// Stop removes agent/; Close removes everything.
type pinLayout struct {
	dir string
}

func pinName(s string) string {
	s = strings.ReplaceAll(s, ".", "_dot_")
	return strings.ReplaceAll(s, "/", "_")
}

func (p *pinLayout) mapPath(name string) string  { return filepath.Join(p.dir, "maps", pinName(name)) }
func (p *pinLayout) progPath(name string) string { return filepath.Join(p.dir, "progs", pinName(name)) }
func (p *pinLayout) guardsPath() string          { return filepath.Join(p.dir, "agent", "guards") }
func (p *pinLayout) statePath() string           { return filepath.Join(p.dir, "agent", "state") }

func (p *pinLayout) link(a Attachment) string {
	name := fmt.Sprintf("%s-%s-%s", a.Program, a.Kind, a.Interface)
	if a.Netns != "" {
		name += "-" + filepath.Base(a.Netns)
	}
	return filepath.Join(p.dir, "links", pinName(name))
}

// exists reports whether a previous agent left its pins here.
func (p *pinLayout) exists() bool {
	ents, err := os.ReadDir(filepath.Join(p.dir, "maps"))
	return err == nil && len(ents) > 0
}

// create pins a fresh collection's maps and the guard map, and creates
// and pins the state map.
func (p *pinLayout) create(coll *ebpf.Collection, guards *ebpf.Map) (*ebpf.Map, error) {
	for _, sub := range []string{"maps", "progs", "links", "agent"} {
		if err := os.MkdirAll(filepath.Join(p.dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("pin directory: %w (is %s on a bpffs?)", err, p.dir)
		}
	}
	for name, m := range coll.Maps {
		if err := m.Pin(p.mapPath(name)); err != nil {
			return nil, fmt.Errorf("pin map %s: %w (is %s on a bpffs?)", name, err, p.dir)
		}
	}
	if err := guards.Pin(p.guardsPath()); err != nil {
		return nil, fmt.Errorf("pin guard map: %w", err)
	}
	return p.newStateMap()
}

func (p *pinLayout) newStateMap() (*ebpf.Map, error) {
	st, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "morpheus_state",
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  stateSize,
		MaxEntries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("create state map: %w", err)
	}
	if err := st.Pin(p.statePath()); err != nil {
		st.Close()
		return nil, fmt.Errorf("pin state map: %w", err)
	}
	return st, nil
}

// removeAgent unpins what belongs to the agent, not to the NF.
func (p *pinLayout) removeAgent() error {
	return os.RemoveAll(filepath.Join(p.dir, "agent"))
}

// removeAll unpins everything the agent pinned and removes PinDir if it
// is then empty. Nothing else in PinDir is touched.
func (p *pinLayout) removeAll() error {
	var errs []error
	for _, sub := range []string{"maps", "progs", "links", "agent"} {
		errs = append(errs, os.RemoveAll(filepath.Join(p.dir, sub)))
	}
	if err := os.Remove(p.dir); err != nil && !os.IsNotExist(err) {
		if ents, rerr := os.ReadDir(p.dir); rerr != nil || len(ents) == 0 {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// stateSize is the value size of the state map: a little-endian u32
// length followed by the JSON of savedState.
const stateSize = 1 << 16

// savedState is what a new agent needs to adopt a running NF.
type savedState struct {
	// Guards lists the guarded maps in slot order.
	Guards   []string                 `json:"guards"`
	Programs map[string]*savedProgram `json:"programs"`
}

type savedProgram struct {
	Enabled bool `json:"enabled"`
	// Running is the ID of the optimized program in service, 0 for the
	// original.
	Running   ebpf.ProgramID    `json:"running,omitempty"`
	Digest    []byte            `json:"digest,omitempty"`
	Insns     int               `json:"insns,omitempty"`
	Guarded   []string          `json:"guarded,omitempty"`
	Unguarded []string          `json:"unguarded,omitempty"`
	Versions  map[string]uint64 `json:"versions,omitempty"`
	Relies    map[string]uint64 `json:"relies,omitempty"`
}

// persistLocked writes the agent state to the pinned state map.
func (n *NF) persistLocked() error {
	if n.stateMap == nil {
		return nil
	}
	st := savedState{Programs: map[string]*savedProgram{}}
	st.Guards = make([]string, len(n.table.Guarded()))
	for _, g := range n.table.Guarded() {
		slot, _ := n.table.Slot(g)
		st.Guards[slot] = g
	}
	for name, ps := range n.progs {
		sp := &savedProgram{Enabled: ps.enabled}
		if r := ps.running; r != nil {
			if info, err := r.prog.Info(); err == nil {
				sp.Running, _ = info.ID()
			}
			sp.Digest = r.digest[:]
			sp.Insns = r.insns
			sp.Guarded, sp.Unguarded = r.guarded, r.unguarded
			sp.Versions, sp.Relies = r.versions, r.relies
		}
		st.Programs[name] = sp
	}
	js, err := json.Marshal(&st)
	if err != nil {
		return err
	}
	if len(js)+4 > stateSize {
		return fmt.Errorf("agent: state of %d bytes does not fit the state map", len(js))
	}
	buf := make([]byte, stateSize)
	binary.LittleEndian.PutUint32(buf, uint32(len(js)))
	copy(buf[4:], js)
	if err := n.stateMap.Put(uint32(0), buf); err != nil {
		return fmt.Errorf("agent: write state map: %w", err)
	}
	return nil
}

func readState(m *ebpf.Map) (*savedState, error) {
	buf, err := m.LookupBytes(uint32(0))
	if err != nil {
		return nil, err
	}
	if len(buf) < 4 {
		return nil, errors.New("state map value too short")
	}
	l := binary.LittleEndian.Uint32(buf)
	if l == 0 {
		return nil, nil // never written
	}
	if int(l) > len(buf)-4 {
		return nil, fmt.Errorf("state length %d out of range", l)
	}
	var st savedState
	dec := json.NewDecoder(bytes.NewReader(buf[4 : 4+l]))
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("decode state: %w", err)
	}
	return &st, nil
}

// maxSeedBumps bounds the work of rebuilding a guard table with the
// versions of a live guard map (see seedTable).
const maxSeedBumps = 1 << 16

// seedTable rebuilds a guard table with the slots of order and the
// versions in the live guard value. guard.Table has no setter, so the
// versions are replayed as bumps on a scratch guard map; ok is false if
// that would take more than maxSeedBumps bumps.
func seedTable(order []string, live []byte) (t *guard.Table, ok bool, err error) {
	t = guard.NewTable()
	total := uint64(0)
	versions := make([]uint64, len(order))
	for i, name := range order {
		slot, err := t.Slot(name)
		if err != nil {
			return nil, false, err
		}
		if int(slot) != i || 8*i+8 > len(live) {
			return nil, false, fmt.Errorf("guard slot of %s: got %d, want %d", name, slot, i)
		}
		versions[i] = binary.LittleEndian.Uint64(live[8*i:])
		total += versions[i]
	}
	if total > maxSeedBumps {
		return nil, false, nil
	}
	scratch, err := ebpf.NewMap(guard.Spec())
	if err != nil {
		return nil, false, err
	}
	defer scratch.Close()
	for i, name := range order {
		for range versions[i] {
			if err := t.Bump(scratch, name); err != nil {
				return nil, false, err
			}
		}
	}
	return t, true, nil
}

// adopt takes over a network function pinned by a previous agent.
func (n *NF) adopt(ctx context.Context, atts []Attachment) (err error) {
	p := n.pins
	var opened []interface{ Close() error }
	defer func() {
		if err != nil {
			for _, c := range opened {
				c.Close()
			}
		}
	}()
	n.maps = map[string]*ebpf.Map{}
	for name, ms := range n.spec.Maps {
		m, err := ebpf.LoadPinnedMap(p.mapPath(name), nil)
		if err != nil {
			return fmt.Errorf("agent: adopt %s: map %s: %w", p.dir, name, err)
		}
		opened = append(opened, m)
		if err := ms.Compatible(m); err != nil {
			return fmt.Errorf("agent: adopt %s: pinned map %s does not match the object: %w", p.dir, name, err)
		}
		n.maps[name] = m
	}
	progs := map[string]*ebpf.Program{}
	for _, a := range atts {
		if progs[a.Program] != nil {
			continue
		}
		prog, err := ebpf.LoadPinnedProgram(p.progPath(a.Program), nil)
		if err != nil {
			return fmt.Errorf("agent: adopt %s: original program %s: %w", p.dir, a.Program, err)
		}
		opened = append(opened, prog)
		progs[a.Program] = prog
	}
	guardsKept := true
	if n.guards, err = ebpf.LoadPinnedMap(p.guardsPath(), nil); err != nil {
		guardsKept = false
		if err := os.MkdirAll(filepath.Join(p.dir, "agent"), 0o700); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		if n.guards, err = ebpf.NewMap(guard.Spec()); err != nil {
			return fmt.Errorf("agent: create guard map: %w", err)
		}
		if err := n.guards.Pin(p.guardsPath()); err != nil {
			n.guards.Close()
			return fmt.Errorf("agent: pin guard map: %w", err)
		}
	}
	opened = append(opened, n.guards)
	var saved *savedState
	if n.stateMap, err = ebpf.LoadPinnedMap(p.statePath(), nil); err == nil {
		if saved, err = readState(n.stateMap); err != nil {
			n.log.Warn("unreadable agent state: restoring the originals", "err", err)
			saved = nil
		}
	} else if n.stateMap, err = p.newStateMap(); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	opened = append(opened, n.stateMap)

	// Guard table: slots from the saved order, versions from the live map.
	n.table = guard.NewTable()
	trustCandidates := guardsKept && saved != nil
	if trustCandidates {
		live, err := n.guards.LookupBytes(uint32(0))
		if err != nil {
			return fmt.Errorf("agent: read guard map: %w", err)
		}
		t, ok, err := seedTable(saved.Guards, live)
		switch {
		case err != nil:
			n.log.Warn("cannot rebuild the guard table: restoring the originals", "err", err)
			trustCandidates = false
		case !ok:
			n.log.Info("guard versions too high to replay: restoring the originals")
			trustCandidates = false
		default:
			n.table = t
		}
	}

	if err := n.addPrograms(progs, atts); err != nil {
		return err
	}
	for _, name := range n.order {
		ps := n.progs[name]
		for _, at := range ps.atts {
			if err := n.reattach(at, ps.original); err != nil {
				return fmt.Errorf("agent: adopt %s: %w", at.spec(), err)
			}
			if x, ok := at.(*xdpAttacher); ok && x.l != nil {
				opened = append(opened, x.l)
			}
		}
	}

	for _, name := range n.order {
		ps := n.progs[name]
		var sp *savedProgram
		if saved != nil {
			sp = saved.Programs[name]
		}
		if sp != nil {
			ps.enabled = sp.Enabled
		}
		if err := n.adoptRunning(ps, sp, trustCandidates); err != nil {
			return err
		}
	}
	if !trustCandidates {
		// No candidate runs now: nobody reads the old versions.
		if err := n.guards.Put(uint32(0), make([]byte, 8*guard.MaxGuards)); err != nil {
			return fmt.Errorf("agent: reset guard map: %w", err)
		}
	}
	n.adopted = true
	n.checkFingerprintsLocked(ctx, nil, nil)
	if err := n.persistLocked(); err != nil {
		return err
	}
	n.emit(Event{Kind: EventAdopt, Message: "adopted " + p.dir})
	n.log.Info("adopted", "pins", p.dir, "programs", n.order)
	n.kick("adopt")
	return nil
}

// reattach opens a pinned link or makes sure the attachment exists.
func (n *NF) reattach(at attacher, orig *ebpf.Program) error {
	if x, ok := at.(*xdpAttacher); ok {
		l, err := link.LoadPinnedLink(x.pin, nil)
		if err == nil {
			x.l = l
			return nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return x.attach(orig)
	}
	if _, err := at.current(); err != nil {
		return at.attach(orig)
	}
	return nil
}

// adoptRunning decides what runs on ps's attachments: the optimized
// program a previous agent left, if the state vouches for it and its
// guards are consistent, otherwise the original.
func (n *NF) adoptRunning(ps *progState, sp *savedProgram, trust bool) error {
	info, err := ps.original.Info()
	if err != nil {
		return err
	}
	origID, _ := info.ID()
	ids := make([]ebpf.ProgramID, len(ps.atts))
	for i, at := range ps.atts {
		if ids[i], err = at.current(); err != nil {
			return fmt.Errorf("agent: adopt %s: %w", at.spec(), err)
		}
	}
	same := true
	for _, id := range ids {
		same = same && id == ids[0]
	}
	if same && ids[0] == origID {
		return nil
	}
	if same && trust && sp != nil && sp.Running == ids[0] && sp.Running != 0 {
		prog, err := ebpf.NewProgramFromID(sp.Running)
		if err == nil {
			r := &running{
				prog:      prog,
				insns:     sp.Insns,
				guarded:   sp.Guarded,
				unguarded: sp.Unguarded,
				versions:  sp.Versions,
				relies:    map[string]uint64{},
				since:     time.Now(),
			}
			copy(r.digest[:], sp.Digest)
			for m, fp := range sp.Relies {
				// A guard already bumped no longer protects anything.
				if slices.Contains(r.guarded, m) && n.table.Version(m) != sp.Versions[m] {
					continue
				}
				r.relies[m] = fp
			}
			ps.running = r
			return nil
		}
		n.log.Warn("optimized program vanished", "program", ps.name, "err", err)
	}
	// Unknown program, inconsistent attachments or no usable state: the
	// original is the only program known to be right.
	for _, at := range ps.atts {
		if err := at.swap(ps.original); err != nil {
			return fmt.Errorf("agent: adopt %s: restore original: %w", at.spec(), err)
		}
	}
	n.stats.Deoptimizations++
	n.emit(Event{Kind: EventRestore, Program: ps.name, Message: "adopted without a trusted optimized program"})
	return nil
}
