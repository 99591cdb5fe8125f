package api

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/morpheus-go/morpheus/agent"
	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/mapstate"
)

func TestEntryPerCPU(t *testing.T) {
	tests := []struct {
		name  string
		info  agent.MapInfo
		value []byte
		want  mapstate.Entry
	}{
		{"plain", agent.MapInfo{ValueSize: 3}, []byte{1, 2, 3}, mapstate.Entry{Key: []byte{9}, Value: []byte{1, 2, 3}}},
		{"per-CPU padded", agent.MapInfo{ValueSize: 4, PerCPU: true}, []byte{1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0},
			mapstate.Entry{Key: []byte{9}, Values: []mapstate.Hex{{1, 0, 0, 0}, {2, 0, 0, 0}}}},
		{"per-CPU u64", agent.MapInfo{ValueSize: 8, PerCPU: true}, []byte{7, 0, 0, 0, 0, 0, 0, 0},
			mapstate.Entry{Key: []byte{9}, Values: []mapstate.Hex{{7, 0, 0, 0, 0, 0, 0, 0}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := entry(tt.info, []byte{9}, tt.value)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("entry = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestMapError(t *testing.T) {
	tests := []struct {
		err  error
		want error // nil: neither sentinel
	}{
		{fmt.Errorf("lookup: %w", ebpf.ErrKeyNotExist), ErrNotFound},
		{fmt.Errorf("update: %w", unix.E2BIG), ErrInvalid},
		{fmt.Errorf("update: %w", unix.EINVAL), ErrInvalid},
		{fmt.Errorf("update: %w", ebpf.ErrKeyExist), ErrInvalid},
		{errors.New("disk on fire"), nil},
	}
	for _, tt := range tests {
		got := mapError(tt.err)
		if tt.want != nil && !errors.Is(got, tt.want) {
			t.Errorf("mapError(%v) = %v, want it to wrap %v", tt.err, got, tt.want)
		}
		if tt.want == nil && (errors.Is(got, ErrNotFound) || errors.Is(got, ErrInvalid)) {
			t.Errorf("mapError(%v) = %v, want a plain error", tt.err, got)
		}
	}
	if mapError(nil) != nil {
		t.Error("mapError(nil) != nil")
	}
}

func TestHeatRecorder(t *testing.T) {
	heat := map[string]*heatmap.Heatmap{
		"a": {Maps: map[string][]heatmap.Key{"m": {{Key: mapstate.Hex{1}, Count: 5}, {Key: mapstate.Hex{2}, Count: 1}}}},
		"b": {Maps: map[string][]heatmap.Key{"m": {{Key: mapstate.Hex{1}, Count: 3}}}},
	}
	r := NewHeatRecorder(agent.ProfilerFunc(func(_ context.Context, prog string) (*heatmap.Heatmap, error) {
		if prog == "broken" {
			return nil, errors.New("no heat")
		}
		return heat[prog], nil
	}))
	if r.Last() != nil {
		t.Fatal("Last before any profile is not nil")
	}
	for _, p := range []string{"a", "b", "broken"} {
		h, err := r.Heatmap(t.Context(), p)
		if (err != nil) != (p == "broken") || h != heat[p] {
			t.Fatalf("Heatmap(%s) = %v, %v: the recorder must pass results through", p, h, err)
		}
	}
	top := r.Last().Top("m", 2)
	if len(top) != 2 || !slices.Equal(top[0].Key, []byte{1}) || top[0].Count != 8 || top[1].Count != 1 {
		t.Fatalf("merged heat %+v, want key 01 with 8 then 02 with 1", top)
	}
}
