package agent

import "fmt"

// Data-plane tripwires.
//
// hotcache may cache lookups of a map the data plane writes (the L2
// switch's fdb, written by MAC learning) when every data-plane write of
// the map first stores guard.Tripped into the map's guard slot. The data
// plane cannot know the next version, so the agent re-arms tripped slots
// at the start of every cycle, before the snapshot: the candidate of the
// cycle compares with the fresh version and specializes to contents that
// include every write made before the re-arm; a write after it trips the
// slot again and the candidate takes the original path, which is safe.
//
// The contents of such maps change without the agent by design, so the
// fingerprint check skips them (guard.Table.DataPlane): a fingerprint
// mismatch there says nothing about a bypassing writer. The honest window:
// a writer that bypasses the agent (bpftool, another process) and changes
// such a map is not detected at all. Optimized code may use the old
// contents of the entries it cached until the next data-plane write of the
// map trips the guard, or until the next full cycle
// (Options.FullCycleEvery) specializes to a new snapshot and swaps the
// result in; a bypassing writer must trip the guard itself (write
// guard.Tripped into the slot) or go through [Map].

// rearmLocked gives the guards that data-plane tripwires tripped a fresh
// version and records that running programs no longer use their cache of
// those maps.
func (n *NF) rearmLocked() {
	armed, err := n.table.Rearm(n.guards)
	if err != nil {
		n.log.Warn("re-arm tripped guards", "err", err)
	}
	for _, m := range armed {
		n.stats.GuardBumps++
		n.emit(Event{Kind: EventGuardBump, Map: m, Message: fmt.Sprintf("tripped by a data-plane write; re-armed at version %d", n.table.Version(m))})
		for _, ps := range n.progs {
			if r := ps.running; r != nil {
				delete(r.relies, m)
			}
		}
	}
}
