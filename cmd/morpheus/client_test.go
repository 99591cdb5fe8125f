package main

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/morpheus-go/morpheus/api"
	"github.com/morpheus-go/morpheus/api/apitest"
)

// execute runs the CLI with args and returns its output and error.
func execute(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(t.Context())
	return out.String(), err
}

func TestClientCommands(t *testing.T) {
	const token = "cli-token"
	tests := []struct {
		name string
		args []string
		want []string // substrings of the output
		err  string   // substring of the error; empty: success
	}{
		{"status", []string{"status"}, []string{"router:xdp_router", "optimized", "fw:xdp_firewall", "routes", "cycles 0"}, ""},
		{"status json", []string{"status", "--json"}, []string{`"programs": [`, `"stats": {`}, ""},
		{"map list", []string{"map", "list"}, []string{"router:routes", "LPMTrie", "xdp_router"}, ""},
		{"map get all", []string{"map", "get", "router:routes"}, []string{"080000000a000000\t0200000000000000", "18000000c0a80100\t0100000000000000"}, ""},
		{"map get key", []string{"map", "get", "router:routes", "0x18000000c0a80100"}, []string{"18000000c0a80100\t0100000000000000"}, ""},
		{"map get missing", []string{"map", "get", "router:routes", "0000000000000000"}, nil, "not found (HTTP 404)"},
		{"map get ambiguous", []string{"map", "get", "routes"}, nil, "ambiguous"},
		{"map get short key", []string{"map", "get", "router:routes", "18"}, nil, `key has 1 bytes, the map's key size is 8 bytes`},
		{"map get bad hex", []string{"map", "get", "router:routes", "xx"}, nil, `KEY "xx" is not hex`},
		{"map update", []string{"map", "update", "router:routes", "20000000c0a80107", "0300000000000000"}, []string{"updated router:routes[20000000c0a80107] (guard bumped, re-optimizing)"}, ""},
		{"map update unguarded", []string{"map", "update", "rules", "00000000", "0100000000000000"}, []string{"updated fw:rules[00000000]\n"}, ""},
		{"map update wrong size", []string{"map", "update", "router:routes", "20000000c0a80107", "03"}, nil, "value has 1 bytes"},
		{"map update arity", []string{"map", "update", "router:routes", "20000000c0a80107"}, nil, "accepts 3 arg(s)"},
		{"map delete", []string{"map", "delete", "router:routes", "18000000c0a80100"}, []string{"deleted router:routes[18000000c0a80100]"}, ""},
		{"heatmap", []string{"heatmap", "--top", "2"}, []string{"router:routes", "20000000c0a80107\t900\t 75.0%", "200000000a000001\t300\t 25.0%"}, ""},
		{"cycle", []string{"cycle"}, []string{"router:xdp_router", "swapped", "cycle took"}, ""},
		{"cycle program", []string{"cycle", "xdp_firewall"}, []string{"fw:xdp_firewall  swapped"}, ""},
		{"cycle unknown", []string{"cycle", "nope"}, nil, `program "nope" not found`},
		{"disable", []string{"disable", "xdp_router"}, []string{"optimization disabled for xdp_router"}, ""},
		{"enable", []string{"enable", "router:xdp_router"}, []string{"optimization enabled for router:xdp_router"}, ""},
		{"events", []string{"events"}, []string{"SEQ"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := httptest.NewServer(api.NewServer(apitest.New(), api.Options{Token: token}))
			defer ts.Close()
			out, err := execute(t, append(tt.args, "--api", ts.URL, "--token", token)...)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q; output:\n%s", err, tt.err, out)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v; output:\n%s", err, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestClientCommandsToken(t *testing.T) {
	ts := httptest.NewServer(api.NewServer(apitest.New(), api.Options{Token: "right"}))
	defer ts.Close()
	if _, err := execute(t, "status", "--api", ts.URL, "--token", "wrong"); err == nil || !strings.Contains(err.Error(), "HTTP 401") {
		t.Fatalf("wrong token: %v", err)
	}
	tokFile := t.TempDir() + "/tok"
	if err := os.WriteFile(tokFile, []byte("right\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := execute(t, "events", "--json", "--api", ts.URL, "--token-file", tokFile)
	if err != nil {
		t.Fatal(err)
	}
	var evs []api.Event
	if err := json.Unmarshal([]byte(out), &evs); err != nil {
		t.Fatalf("events --json: %v\n%s", err, out)
	}
}
