//go:build linux

package bench

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/mapstate"
)

// Warm replays the trace once through the original NF, loaded with the
// scenario's configuration, and replaces State with a snapshot of the
// maps afterwards: the state the NF's own writes (learned addresses,
// connection entries, counters) leave behind, which is what the agent
// snapshots from a running NF. Specializing to the configuration alone
// would measure an optimized program whose caches of data-plane-written
// maps are invalidated by the first write of the measurement, a state a
// running NF leaves after its first packets.
//
// Maps whose contents are not data (program and map-in-map arrays, event
// buffers) and global-data sections keep the configuration's contents.
// Array entries that are all zero are left out: a fresh array is zero.
//
// Warm is done once per scenario; later calls do nothing.
func (sc *Scenario) Warm(ctx context.Context) error {
	if sc.warmed {
		return nil
	}
	coll, err := sc.load("the warm-up copy", sc.Spec)
	if err != nil {
		return err
	}
	defer coll.Close()
	h, err := sc.harness()
	if err != nil {
		return err
	}
	defer h.Close()
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, err := h.Run(coll.Programs[sc.Program], len(sc.Frames)); err != nil {
		return fmt.Errorf("bench: warm up %s: %w", sc.NF, err)
	}
	warm := &mapstate.State{Variables: sc.State.Variables, Maps: map[string]*mapstate.Map{}}
	for name, m := range coll.Maps {
		if !snapshotted(name, m.Type()) {
			if c := sc.State.Maps[name]; c != nil {
				warm.Maps[name] = c
			}
			continue
		}
		snap, err := mapstate.SnapshotMap(m)
		if err != nil {
			return fmt.Errorf("bench: warm up %s: read map %s: %w", sc.NF, name, err)
		}
		if isArray(m.Type()) {
			snap.Entries = nonZero(snap.Entries)
		}
		if len(snap.Entries) > 0 {
			warm.Maps[name] = snap
		}
	}
	sc.State, sc.warmed = warm, true
	return nil
}

// snapshotted tells whether Warm takes a map's contents from the warmed-up
// NF.
func snapshotted(name string, t ebpf.MapType) bool {
	if strings.HasPrefix(name, ".") {
		return false
	}
	switch t {
	case ebpf.Hash, ebpf.Array, ebpf.PerCPUHash, ebpf.PerCPUArray, ebpf.LRUHash, ebpf.LRUCPUHash, ebpf.LPMTrie:
		return true
	}
	return false
}

func isArray(t ebpf.MapType) bool { return t == ebpf.Array || t == ebpf.PerCPUArray }

// nonZero drops the entries whose value (every CPU's value) is all zero.
func nonZero(es []mapstate.Entry) []mapstate.Entry {
	out := es[:0]
	for _, e := range es {
		zero := allZero(e.Value)
		for _, v := range e.Values {
			zero = zero && allZero(v)
		}
		if !zero {
			out = append(out, e)
		}
	}
	return out
}

func allZero(b []byte) bool { return len(bytes.TrimLeft(b, "\x00")) == 0 }
