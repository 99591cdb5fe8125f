// Package nfmap is the control-plane plumbing the sample NFs share: laying
// out map keys and values the way their BPF programs read them, and loading
// an NF's collection with the map state of its configuration.
package nfmap

import (
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/mapstate"
)

// Encode lays v out as the BPF program sees it (little-endian target). v
// must be of fixed size (the bpf2go-generated structs, integers, arrays):
// anything else is a programming error and panics.
func Encode(v any) []byte {
	b, err := binary.Append(nil, binary.LittleEndian, v)
	if err != nil {
		panic(fmt.Sprintf("nfmap: encode %T: %v", v, err))
	}
	return b
}

// U32 is a u32 key or value.
func U32(v uint32) []byte {
	return binary.LittleEndian.AppendUint32(nil, v)
}

// Load builds the map state of a configuration (state, which validates it),
// loads a fresh spec with it and fills the maps. Errors name the NF. The
// caller owns the returned collection.
func Load(nf string, state func() (*mapstate.State, error), spec func() (*ebpf.CollectionSpec, error)) (*ebpf.Collection, error) {
	st, err := state()
	if err != nil {
		return nil, err
	}
	s, err := spec()
	if err != nil {
		return nil, err
	}
	coll, err := st.Load(s, ebpf.CollectionOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", nf, err)
	}
	return coll, nil
}
