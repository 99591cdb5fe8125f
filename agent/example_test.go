package agent_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"

	"github.com/cilium/ebpf"

	"github.com/morpheus-go/morpheus/agent"
	"github.com/morpheus-go/morpheus/nf/router"
)

// loadRouter loads the example router into a prog-array slot (where a
// dispatcher would tail-call it), so the example needs no interface.
func loadRouter(ctx context.Context) (*agent.NF, error) {
	spec, err := router.Spec()
	if err != nil {
		return nil, err
	}
	spec.Maps["dispatch"] = &ebpf.MapSpec{Name: "dispatch", Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	state, err := router.ExampleConfig().State()
	if err != nil {
		return nil, err
	}
	atts := []agent.Attachment{{Program: router.Program, Kind: agent.TailCall, ProgArray: "dispatch"}}
	return agent.Load(ctx, spec, state, atts, agent.Options{
		Name:      "router",
		Generated: 200,
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
}

// Example loads the router, lets one cycle specialize it to its routing
// table, changes the configuration through the agent and re-optimizes.
func Example() {
	ctx := context.Background()
	nf, err := loadRouter(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer nf.Close()

	cs, err := nf.Cycle(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("cycle 1:", cs.Programs[0].Outcome)
	st, _ := nf.Program(router.Program)
	fmt.Println("optimized:", st.Optimized, "guards:", st.Guarded)

	// A new configuration: the routes guard is bumped before the write.
	cfg := router.ExampleConfig()
	cfg.Routes = cfg.Routes[:3]
	state, _ := cfg.State()
	if err := nf.Apply(state); err != nil {
		fmt.Println(err)
		return
	}
	st, _ = nf.Program(router.Program)
	fmt.Println("tripped:", st.Tripped)

	cs, _ = nf.Cycle(ctx)
	fmt.Println("cycle 2:", cs.Programs[0].Outcome)
	// Output:
	// cycle 1: swapped
	// optimized: true guards: [ifconfig nexthops routes]
	// tripped: [ifconfig nexthops routes]
	// cycle 2: swapped
}

// ExampleMap_Delete removes a route through the agent's map handle.
func ExampleMap_Delete() {
	ctx := context.Background()
	nf, err := loadRouter(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer nf.Close()
	if _, err := nf.Cycle(ctx); err != nil {
		fmt.Println(err)
		return
	}
	routes, err := nf.Map(router.MapRoutes)
	if err != nil {
		fmt.Println(err)
		return
	}
	// LPM key: prefix length, then the address in network byte order.
	key := binary.LittleEndian.AppendUint32(nil, 24)
	key = append(key, 10, 20, 30, 0)
	if err := routes.Delete(key); err != nil {
		fmt.Println(err)
		return
	}
	n := 0
	routes.Iterate(func(k, v []byte) bool { n++; return true })
	s := nf.Stats()
	fmt.Println("routes:", n, "guard bumps:", s.GuardBumps, "deletes:", s.MapDeletes)
	// Output:
	// routes: 5 guard bumps: 1 deletes: 1
}

// ExampleNF_Subscribe follows the agent's events.
func ExampleNF_Subscribe() {
	ctx := context.Background()
	nf, err := loadRouter(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	events, cancel := nf.Subscribe(16)
	defer cancel()
	nf.Cycle(ctx)
	nf.Stop()
	for e := range events { // closed by Stop
		if e.Program != "" {
			fmt.Println(e.Kind, e.Program)
		} else {
			fmt.Println(e.Kind)
		}
	}
	nf.Close()
	// Output:
	// swap xdp_router
	// cycle
	// restore xdp_router
	// stop
}
