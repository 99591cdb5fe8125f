// Package agent runs a network function under the optimizer: it loads a
// clang-built eBPF collection with its initial map contents, attaches its
// programs (XDP, TC clsact filters, prog-array slots), hands out guarded
// map handles to the control plane, and re-optimizes the running programs
// in a cycle, swapping verified candidates in atomically.
//
// # The cycle
//
// Every Options.Period, right after a change through a [Map] handle, and
// on [NF.Cycle], the agent snapshots the maps (global data, unreadable
// maps and maps above Options.MaxSnapshotEntries are skipped; a candidate
// that depends on a skipped map is dropped), asks the [Profiler] for a
// heatmap, and runs the optimizer (optimize.RunLive: passes, the kernel
// verifier and the differential test, each against fresh copies of the
// maps). An accepted candidate is loaded against the live maps and the
// agent's live guard map, and swapped in on every attachment of its
// program: a bpf_link update for XDP, a cls_bpf filter replace (same
// handle and priority) for TC, a prog-array update for tail calls. A
// candidate identical to the running one (same instructions, same cache
// contents) is not swapped. A candidate that fails anything is dropped;
// the running program is never touched by a failure. The programs of a
// network function are optimized side by side, up to GOMAXPROCS at a
// time (their profiling windows one after the other); each is checked
// and swapped on its own.
//
// # What a cycle verifies
//
// Every candidate that is not identical to the running one passes, before
// a swap: the kernel verifier (a candidate refused for its complexity is
// rebuilt once without constprop, see optimize.ProgramReport.Attempts);
// a differential test against two freshly loaded copies of the original
// on Options.Generated packets generated from the snapshot's map keys and
// the heatmap's hot keys (hits, neighbours inside their prefixes, random
// misses) plus a quarter as many edge cases, comparing verdict, output
// packet, context and map contents; and, unless Options.SkipGuardCheck,
// one guard check per guarded map (up to optimize.MaxGuardChecks) with
// that map emptied and every guard tripped, on optimize.GuardCheckPackets
// packets spread over the same set. A candidate with the shape of the
// running one (the same code, optimize.Shape, differing only in constants
// such as hot keys and cached values) is tested on a quarter of the
// packets, at least optimize.SteadyMinPackets, spread over generated
// packets and edge cases alike (ProgramCycle.SteadyTest); a new shape,
// and the first candidate after an adoption, get the whole set. Within
// the differential test the maps the analysis says a program may write
// are compared periodically, and every map after the last packet and
// after any packet whose result differed: a difference that persists is
// always found, a transient one only in a map some program writes. The cost of a cycle is mostly the
// loading of these copies (map creation, the verifier) and the map
// comparisons; measure it with
//
//	go test ./optimize -run XXX -bench Cycle -benchtime 3x
//
// # Guards
//
// The kernel refuses kprobes, so guards are bumped by the agent itself.
// One guard map (an array with one u64 version per guarded map) lives as
// long as the agent and is shared by every candidate, so versions persist
// from candidate to candidate; each candidate compares with the versions
// the guard table holds when it is built. [Map.Update], [Map.Delete] and
// [NF.Apply] bump the map's guard BEFORE writing, so from the very next
// packet the optimized code takes the original path for that map; then a
// cycle re-specializes. A cycle drops a candidate if a map it depends on
// changed while it was being built.
//
// # Guard elision
//
// A rewrite that depends on a map's contents without a runtime guard
// (an "elided" guard: cheaper code, no check per packet) is handled by
// the protocol instead: before such a map is changed through the agent,
// the original program is swapped back in, then the map is written, then
// a cycle re-optimizes. The agent treats any applied rewrite of a hash or
// LPM map without a guard slot in the candidate as elided (array rewrites
// point into the live element and assume nothing). Today's passes guard
// every such rewrite, so the list is empty unless a pass elides a guard.
//
// # Fingerprints
//
// Writers that bypass the agent (bpftool, another process) cannot bump the
// guard first. Every Options.FingerprintPeriod the agent hashes every map
// a running optimized program still trusts and compares it with the
// contents the program was specialized to; on a mismatch the guard is
// bumped at once (the original restored, for an elided guard) and a cycle
// queued. Between the foreign write and the check (at most one period)
// the optimized code may use the old contents: that window is inherent to
// a kernel without map-update probes.
//
// Maps the data plane writes are the exception: their cached lookups are
// guarded by tripwires the data plane trips itself, every cycle re-arms
// tripped guards before its snapshot, and fingerprints skip those maps,
// so a bypassing writer of such a map goes unnoticed until the next
// data-plane write or full cycle (see tripwire.go).
//
// # Crash safety
//
// With Options.PinDir the links, maps and original programs of the
// network function, and the agent's guard and state maps, are pinned. A
// killed agent leaves the last swapped-in program running (it stays
// correct: its guards still work, only bypassing writes go unnoticed until
// the next agent). Load with the same PinDir adopts the pins: it rebuilds
// the guard table from the pinned state, keeps the running optimized
// program only if every map it trusts matches the recorded fingerprint
// (bumping the guard of any map that does not), and restores the original
// when the state cannot vouch for what runs.
//
// # Stop and Close
//
// [NF.Stop] (or cancelling Run's context) swaps the originals back in and
// releases and unpins what the agent added; the network function keeps
// running. [NF.Close] also detaches it and removes every pin.
package agent
