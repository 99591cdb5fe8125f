package analysis

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// SiteKind says what a map access site does.
type SiteKind string

// Site kinds. Helper sites carry the helper's name in Site.Helper as well.
const (
	SiteLookup      SiteKind = "lookup"
	SiteUpdate      SiteKind = "update"
	SiteDelete      SiteKind = "delete"
	SitePush        SiteKind = "push"
	SitePop         SiteKind = "pop"
	SitePeek        SiteKind = "peek"
	SiteTailCall    SiteKind = "tail_call"
	SiteRedirect    SiteKind = "redirect"
	SiteOutput      SiteKind = "output"   // perf event / ring buffer output, reservation
	SiteForEach     SiteKind = "for_each" // for_each_map_elem
	SiteStorage     SiteKind = "storage"  // local storage get/delete
	SiteMapHelper   SiteKind = "helper"   // any other helper taking a map
	SiteLoad        SiteKind = "load"     // load through a map value pointer
	SiteStore       SiteKind = "store"    // store through a map value pointer
	SiteAtomic      SiteKind = "atomic"   // atomic op through a map value pointer
	SiteValueHelper SiteKind = "value_helper"
)

// sizeSpec says how many bytes a helper accesses through a pointer arg.
type sizeSpec struct {
	reg   asm.Register // size is in this register, if non-zero
	fixed int          // a fixed size, if positive
	key   bool         // the map's key size
	value bool         // the map's value size
}

// memArg is a pointer argument of a helper.
type memArg struct {
	reg   asm.Register
	size  sizeSpec
	write bool
}

type retKind uint8

const (
	retScalar    retKind = iota
	retUnknown           // anything, possibly a pointer
	retMapValue          // a maybe-null value of the map in mapArg
	retMapValue1         // a non-null value of the map in mapArg
	retOther             // a maybe-null pointer to unmodelled memory
)

// helperInfo is what the analysis knows about a helper's arguments and
// effects. Registers not listed are scalars or the context, which the
// helper cannot use to reach stack or map memory.
type helperInfo struct {
	args      int
	kind      SiteKind // for helpers with a map argument
	mapArg    asm.Register
	keyArg    asm.Register // pointer to the key, read
	keyReg    asm.Register // the key is a scalar in this register
	valueArg  asm.Register // pointer to a value the helper reads (update, push)
	outArg    asm.Register // pointer to a value the helper writes (pop, peek)
	mem       []memArg
	ret       retKind
	writesMap bool // changes the map's contents
	exposes   bool // hands the map's values to a callback
	callback  bool // calls back into BPF code that may use its pointer args
	known     bool
}

func regSize(r asm.Register) sizeSpec { return sizeSpec{reg: r} }

var helpers = map[asm.BuiltinFunc]helperInfo{
	asm.FnMapLookupElem:       {args: 2, kind: SiteLookup, mapArg: asm.R1, keyArg: asm.R2, ret: retMapValue},
	asm.FnMapLookupPercpuElem: {args: 3, kind: SiteLookup, mapArg: asm.R1, keyArg: asm.R2, ret: retMapValue},
	asm.FnMapUpdateElem:       {args: 4, kind: SiteUpdate, mapArg: asm.R1, keyArg: asm.R2, valueArg: asm.R3, writesMap: true},
	asm.FnMapDeleteElem:       {args: 2, kind: SiteDelete, mapArg: asm.R1, keyArg: asm.R2, writesMap: true},
	asm.FnMapPushElem:         {args: 3, kind: SitePush, mapArg: asm.R1, valueArg: asm.R2, writesMap: true},
	asm.FnMapPopElem:          {args: 2, kind: SitePop, mapArg: asm.R1, outArg: asm.R2, writesMap: true},
	asm.FnMapPeekElem:         {args: 2, kind: SitePeek, mapArg: asm.R1, outArg: asm.R2},
	asm.FnTailCall:            {args: 3, kind: SiteTailCall, mapArg: asm.R2, keyReg: asm.R3},
	asm.FnRedirectMap:         {args: 3, kind: SiteRedirect, mapArg: asm.R1, keyReg: asm.R2},
	asm.FnSkRedirectMap:       {args: 4, kind: SiteRedirect, mapArg: asm.R2, keyReg: asm.R3},
	asm.FnMsgRedirectMap:      {args: 4, kind: SiteRedirect, mapArg: asm.R2, keyReg: asm.R3},
	asm.FnSkRedirectHash:      {args: 4, kind: SiteRedirect, mapArg: asm.R2, keyArg: asm.R3},
	asm.FnMsgRedirectHash:     {args: 4, kind: SiteRedirect, mapArg: asm.R2, keyArg: asm.R3},
	asm.FnSockMapUpdate:       {args: 4, kind: SiteUpdate, mapArg: asm.R2, keyArg: asm.R3, writesMap: true},
	asm.FnSockHashUpdate:      {args: 4, kind: SiteUpdate, mapArg: asm.R2, keyArg: asm.R3, writesMap: true},
	asm.FnPerfEventOutput: {args: 5, kind: SiteOutput, mapArg: asm.R2,
		mem: []memArg{{reg: asm.R4, size: regSize(asm.R5)}}, writesMap: true},
	asm.FnSkbOutput: {args: 5, kind: SiteOutput, mapArg: asm.R2,
		mem: []memArg{{reg: asm.R4, size: regSize(asm.R5)}}, writesMap: true},
	asm.FnXdpOutput: {args: 5, kind: SiteOutput, mapArg: asm.R2,
		mem: []memArg{{reg: asm.R4, size: regSize(asm.R5)}}, writesMap: true},
	asm.FnPerfEventRead: {args: 2, kind: SiteMapHelper, mapArg: asm.R1},
	asm.FnPerfEventReadValue: {args: 4, kind: SiteMapHelper, mapArg: asm.R1,
		mem: []memArg{{reg: asm.R3, size: regSize(asm.R4), write: true}}},
	asm.FnGetStackid: {args: 3, kind: SiteMapHelper, mapArg: asm.R2, writesMap: true},
	asm.FnRingbufOutput: {args: 4, kind: SiteOutput, mapArg: asm.R1,
		mem: []memArg{{reg: asm.R2, size: regSize(asm.R3)}}, writesMap: true},
	asm.FnRingbufReserve: {args: 3, kind: SiteOutput, mapArg: asm.R1, ret: retOther, writesMap: true},
	asm.FnRingbufQuery:   {args: 2, kind: SiteMapHelper, mapArg: asm.R1},
	asm.FnRingbufSubmit:  {args: 2},
	asm.FnRingbufDiscard: {args: 2},
	asm.FnForEachMapElem: {args: 4, kind: SiteForEach, mapArg: asm.R1, exposes: true, callback: true,
		mem: []memArg{{reg: asm.R3, write: true}}},
	asm.FnGetLocalStorage:    {args: 2, kind: SiteStorage, mapArg: asm.R1, ret: retMapValue1},
	asm.FnSkStorageGet:       {args: 4, kind: SiteStorage, mapArg: asm.R1, valueArg: asm.R3, ret: retMapValue, writesMap: true},
	asm.FnSkStorageDelete:    {args: 2, kind: SiteStorage, mapArg: asm.R1, writesMap: true},
	asm.FnInodeStorageGet:    {args: 4, kind: SiteStorage, mapArg: asm.R1, valueArg: asm.R3, ret: retMapValue, writesMap: true},
	asm.FnInodeStorageDelete: {args: 2, kind: SiteStorage, mapArg: asm.R1, writesMap: true},
	asm.FnTaskStorageGet:     {args: 4, kind: SiteStorage, mapArg: asm.R1, valueArg: asm.R3, ret: retMapValue, writesMap: true},
	asm.FnTaskStorageDelete:  {args: 2, kind: SiteStorage, mapArg: asm.R1, writesMap: true},
	asm.FnCgrpStorageGet:     {args: 4, kind: SiteStorage, mapArg: asm.R1, valueArg: asm.R3, ret: retMapValue, writesMap: true},
	asm.FnCgrpStorageDelete:  {args: 2, kind: SiteStorage, mapArg: asm.R1, writesMap: true},

	// Helpers without a map argument that read or write memory.
	asm.FnProbeRead:            {args: 3, mem: []memArg{{reg: asm.R1, size: regSize(asm.R2), write: true}}},
	asm.FnProbeReadStr:         {args: 3, mem: []memArg{{reg: asm.R1, size: regSize(asm.R2), write: true}}},
	asm.FnProbeReadKernel:      {args: 3, mem: []memArg{{reg: asm.R1, size: regSize(asm.R2), write: true}}},
	asm.FnProbeReadKernelStr:   {args: 3, mem: []memArg{{reg: asm.R1, size: regSize(asm.R2), write: true}}},
	asm.FnProbeReadUser:        {args: 3, mem: []memArg{{reg: asm.R1, size: regSize(asm.R2), write: true}}},
	asm.FnProbeReadUserStr:     {args: 3, mem: []memArg{{reg: asm.R1, size: regSize(asm.R2), write: true}}},
	asm.FnGetCurrentComm:       {args: 2, mem: []memArg{{reg: asm.R1, size: regSize(asm.R2), write: true}}},
	asm.FnTracePrintk:          {args: 5, mem: []memArg{{reg: asm.R1, size: regSize(asm.R2)}}},
	asm.FnSkbLoadBytes:         {args: 4, mem: []memArg{{reg: asm.R3, size: regSize(asm.R4), write: true}}},
	asm.FnSkbLoadBytesRelative: {args: 5, mem: []memArg{{reg: asm.R3, size: regSize(asm.R4), write: true}}},
	asm.FnXdpLoadBytes:         {args: 4, mem: []memArg{{reg: asm.R3, size: regSize(asm.R4), write: true}}},
	asm.FnXdpStoreBytes:        {args: 4, mem: []memArg{{reg: asm.R3, size: regSize(asm.R4)}}},
	asm.FnSkbStoreBytes:        {args: 5, mem: []memArg{{reg: asm.R3, size: regSize(asm.R4)}}},
	asm.FnCsumDiff:             {args: 5, mem: []memArg{{reg: asm.R1, size: regSize(asm.R2)}, {reg: asm.R3, size: regSize(asm.R4)}}},
	asm.FnFibLookup:            {args: 4, mem: []memArg{{reg: asm.R2, size: regSize(asm.R3), write: true}}},
	asm.FnCheckMtu:             {args: 5, mem: []memArg{{reg: asm.R3, size: sizeSpec{fixed: 4}, write: true}}},
	asm.FnSkbGetTunnelKey:      {args: 4, mem: []memArg{{reg: asm.R2, size: regSize(asm.R3), write: true}}},
	asm.FnSkbSetTunnelKey:      {args: 4, mem: []memArg{{reg: asm.R2, size: regSize(asm.R3)}}},
	asm.FnSkbGetTunnelOpt:      {args: 3, mem: []memArg{{reg: asm.R2, size: regSize(asm.R3), write: true}}},
	asm.FnSkbSetTunnelOpt:      {args: 3, mem: []memArg{{reg: asm.R2, size: regSize(asm.R3)}}},
	asm.FnLoop:                 {args: 4, callback: true, mem: []memArg{{reg: asm.R3, write: true}}},

	// Scalar helpers: no pointer arguments besides the context.
	asm.FnKtimeGetNs:        {args: 0},
	asm.FnKtimeGetBootNs:    {args: 0},
	asm.FnKtimeGetCoarseNs:  {args: 0},
	asm.FnKtimeGetTaiNs:     {args: 0},
	asm.FnJiffies64:         {args: 0},
	asm.FnGetPrandomU32:     {args: 0},
	asm.FnGetSmpProcessorId: {args: 0},
	asm.FnGetNumaNodeId:     {args: 0},
	asm.FnGetCurrentPidTgid: {args: 0},
	asm.FnGetCurrentUidGid:  {args: 0},
	asm.FnRedirect:          {args: 2},
	asm.FnCloneRedirect:     {args: 3},
	asm.FnXdpAdjustHead:     {args: 2},
	asm.FnXdpAdjustTail:     {args: 2},
	asm.FnXdpAdjustMeta:     {args: 2},
	asm.FnXdpGetBuffLen:     {args: 1},
	asm.FnSkbVlanPush:       {args: 3},
	asm.FnSkbVlanPop:        {args: 1},
	asm.FnL3CsumReplace:     {args: 5},
	asm.FnL4CsumReplace:     {args: 5},
	asm.FnCsumUpdate:        {args: 2},
	asm.FnCsumLevel:         {args: 2},
	asm.FnSetHashInvalid:    {args: 1},
	asm.FnSetHash:           {args: 2},
	asm.FnGetHashRecalc:     {args: 1},
	asm.FnGetCgroupClassid:  {args: 1},
	asm.FnGetRouteRealm:     {args: 1},
	asm.FnSkbChangeProto:    {args: 3},
	asm.FnSkbChangeType:     {args: 2},
	asm.FnSkbChangeTail:     {args: 3},
	asm.FnSkbChangeHead:     {args: 3},
	asm.FnSkbPullData:       {args: 2},
	asm.FnSkbAdjustRoom:     {args: 4},
	asm.FnSkbEcnSetCe:       {args: 1},
	asm.FnRedirectNeigh:     {args: 4, mem: []memArg{{reg: asm.R2, size: regSize(asm.R3)}}},
	asm.FnRedirectPeer:      {args: 2},
	asm.FnGetSocketCookie:   {args: 1},
	asm.FnGetSocketUid:      {args: 1},
}

func init() {
	for fn, h := range helpers {
		h.known = true
		helpers[fn] = h
	}
}

// helperFor returns what is known about helper fn. Unknown helpers are
// assumed to take five arguments, to write through every pointer argument
// without a size limit and to return anything.
func helperFor(fn asm.BuiltinFunc) helperInfo {
	if h, ok := helpers[fn]; ok {
		return h
	}
	return helperInfo{args: 5, ret: retUnknown, mem: []memArg{
		{reg: asm.R1, write: true}, {reg: asm.R2, write: true}, {reg: asm.R3, write: true},
		{reg: asm.R4, write: true}, {reg: asm.R5, write: true},
	}}
}

// isMapInMap reports whether lookups in a map of this type return an inner
// map instead of a value.
func isMapInMap(t ebpf.MapType) bool {
	return t == ebpf.ArrayOfMaps || t == ebpf.HashOfMaps
}

// lookupReturnsValue reports whether a lookup in a map of this type
// returns a pointer to a value in the map (as opposed to a socket, a
// device, or an inner map).
func lookupReturnsValue(t ebpf.MapType) bool {
	switch t {
	case ebpf.Hash, ebpf.Array, ebpf.PerCPUHash, ebpf.PerCPUArray, ebpf.LRUHash, ebpf.LRUCPUHash,
		ebpf.LPMTrie, ebpf.CGroupStorage, ebpf.PerCPUCGroupStorage:
		return true
	}
	return false
}
