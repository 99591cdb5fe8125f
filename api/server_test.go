package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/morpheus-go/morpheus/api"
	"github.com/morpheus-go/morpheus/api/apitest"
)

func newTestServer(t *testing.T, opts api.Options) (*apitest.Fake, *api.Server, *httptest.Server) {
	t.Helper()
	fake := apitest.New()
	srv := api.NewServer(fake, opts)
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return fake, srv, ts
}

func request(t *testing.T, ts *httptest.Server, method, path, body string, hdr map[string]string) (int, string) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, ts.URL+path, r)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestRoutes(t *testing.T) {
	tests := []struct {
		name         string
		method, path string
		body         string
		status       int
		want         []string // substrings of the response body
	}{
		{"programs", "GET", "/v1/programs", "", 200, []string{`"name": "xdp_router"`, `"nf": "router"`, `"version": 1`, `"hotcache"`, `"guards"`}},
		{"program by name", "GET", "/v1/programs/xdp_router", "", 200, []string{`"program_id": 11`}},
		{"program by NF:name", "GET", "/v1/programs/fw:xdp_firewall", "", 200, []string{`"program_id": 20`}},
		{"unknown program", "GET", "/v1/programs/nope", "", 404, []string{`"error": "program \"nope\" not found"`}},
		{"disable", "POST", "/v1/programs/xdp_router/disable", "", 200, []string{`"enabled": false`}},
		{"enable unknown", "POST", "/v1/programs/nope/enable", "", 404, []string{"not found"}},
		{"cycle all", "POST", "/v1/cycle", "", 200, []string{`"outcome": "swapped"`, `"program": "xdp_firewall"`}},
		{"cycle one", "POST", "/v1/cycle", `{"program":"xdp_router"}`, 200, []string{`"program": "xdp_router"`}},
		{"cycle NF mismatch", "POST", "/v1/cycle", `{"program":"xdp_router","nf":"fw"}`, 400, []string{`does not belong to NF \"fw\"`}},
		{"cycle unknown field", "POST", "/v1/cycle", `{"prog":"x"}`, 400, []string{`unknown field \"prog\"`}},
		{"cycle unknown NF", "POST", "/v1/cycle", `{"nf":"nope"}`, 404, []string{"not found"}},
		{"maps", "GET", "/v1/maps", "", 200, []string{`"name": "routes"`, `"key_size": 8`, `"guarded": true`}},
		{"ambiguous map", "GET", "/v1/maps/routes/entries", "", 400, []string{`ambiguous`, `fw:routes, router:routes`}},
		{"entries", "GET", "/v1/maps/router:routes/entries", "", 200, []string{`"map": "router:routes"`, `"key": "080000000a000000"`, `"value": "0100000000000000"`}},
		{"lookup", "GET", "/v1/maps/router:routes/entries?key=18000000c0a80100", "", 200, []string{`"value": "0100000000000000"`}},
		{"lookup 0x", "GET", "/v1/maps/router:routes/entries?key=0x18000000c0a80100", "", 200, []string{`"value": "0100000000000000"`}},
		{"lookup missing key", "GET", "/v1/maps/router:routes/entries?key=0000000000000000", "", 404, []string{`map \"router:routes\": key 0000000000000000: key not in map: not found`}},
		{"lookup short key", "GET", "/v1/maps/router:routes/entries?key=1800", "", 400, []string{`map \"router:routes\": key has 2 bytes, the map's key size is 8 bytes (16 hex digits)`}},
		{"lookup bad hex", "GET", "/v1/maps/router:routes/entries?key=zz", "", 400, []string{`key \"zz\" is not hex`}},
		{"lookup empty key", "GET", "/v1/maps/router:routes/entries?key=", "", 400, []string{`key is missing`}},
		{"unknown map", "GET", "/v1/maps/nope/entries", "", 404, []string{`map \"nope\" not found`}},
		{"update", "PUT", "/v1/maps/router:routes/entries", `{"key":"20000000c0a80107","value":"0300000000000000"}`, 200, []string{`"guarded": true`, `"value": "0300000000000000"`}},
		{"update unguarded", "PUT", "/v1/maps/rules/entries", `{"key":"00000000","value":"0100000000000000"}`, 200, []string{`"guarded": false`}},
		{"update long value", "PUT", "/v1/maps/router:routes/entries", `{"key":"20000000c0a80107","value":"030000000000000000"}`, 400, []string{`value has 9 bytes, the map's value size is 8 bytes`}},
		{"update odd hex", "PUT", "/v1/maps/router:routes/entries", `{"key":"20000000c0a8010","value":"0300000000000000"}`, 400, []string{`is not hex`}},
		{"update missing value", "PUT", "/v1/maps/router:routes/entries", `{"key":"20000000c0a80107"}`, 400, []string{`value is missing`}},
		{"update empty body", "PUT", "/v1/maps/router:routes/entries", "", 400, []string{`request body is empty`}},
		{"update not JSON", "PUT", "/v1/maps/router:routes/entries", "key=1", 400, []string{`bad request body`}},
		{"update two values", "PUT", "/v1/maps/router:routes/entries", `{"key":"20000000c0a80107","value":"0300000000000000"} {}`, 400, []string{`more than one JSON value`}},
		{"delete", "DELETE", "/v1/maps/router:routes/entries/18000000c0a80100", "", 200, []string{`"deleted": true`}},
		{"delete missing", "DELETE", "/v1/maps/router:routes/entries/18000000c0a80101", "", 404, []string{`not found`}},
		{"delete bad key", "DELETE", "/v1/maps/router:routes/entries/18", "", 400, []string{`key has 1 bytes`}},
		{"heatmaps", "GET", "/v1/heatmaps?top=2", "", 200, []string{`"router"`, `"key": "20000000c0a80107"`, `"count": 900`}},
		{"heatmaps bad top", "GET", "/v1/heatmaps?top=-1", "", 400, []string{`top: \"-1\" is not an integer`}},
		{"events", "GET", "/v1/events", "", 200, []string{`[]`}},
		{"events bad after", "GET", "/v1/events?after=x", "", 400, []string{`after`}},
		{"stats", "GET", "/v1/stats", "", 200, []string{`"cycles": 0`}},
		{"series", "GET", "/v1/series", "", 200, []string{`"interval_ns": 1000000000`}},
		{"unknown route", "GET", "/v1/nope", "", 404, []string{`no route GET /v1/nope`}},
		{"wrong method", "PATCH", "/v1/programs", "", 405, []string{`no route PATCH /v1/programs`}},
		{"status page", "GET", "/", "", 200, []string{`<script src="/static/app.js"`}},
		{"script", "GET", "/static/app.js", "", 200, []string{`createElementNS`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, ts := newTestServer(t, api.Options{})
			status, body := request(t, ts, tt.method, tt.path, tt.body, nil)
			if status != tt.status {
				t.Fatalf("%s %s: status %d, want %d; body %s", tt.method, tt.path, status, tt.status, body)
			}
			for _, w := range tt.want {
				if !strings.Contains(body, w) {
					t.Errorf("%s %s: body lacks %q:\n%s", tt.method, tt.path, w, body)
				}
			}
			if strings.HasPrefix(tt.path, "/v1/") && status >= 400 {
				var e api.ErrorResponse
				if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == "" {
					t.Errorf("error body is not {\"error\": ...}: %s", body)
				}
			}
		})
	}
}

func TestOversizeBody(t *testing.T) {
	_, _, ts := newTestServer(t, api.Options{MaxBodyBytes: 128})
	big := `{"key":"20000000c0a80107","value":"` + strings.Repeat("00", 100) + `"}`
	status, body := request(t, ts, "PUT", "/v1/maps/router:routes/entries", big, nil)
	if status != http.StatusRequestEntityTooLarge || !strings.Contains(body, "larger than 128 bytes") {
		t.Fatalf("status %d body %s, want 413", status, body)
	}
}

func TestToken(t *testing.T) {
	const token = "s3cret-token"
	tests := []struct {
		name   string
		path   string
		auth   string
		status int
	}{
		{"no header", "/v1/programs", "", 401},
		{"wrong token", "/v1/programs", "Bearer nope", 401},
		{"prefix of token", "/v1/programs", "Bearer s3cret", 401},
		{"not bearer", "/v1/programs", "Basic " + token, 401},
		{"right token", "/v1/programs", "Bearer " + token, 200},
		{"metrics need it", "/metrics", "", 401},
		{"metrics with it", "/metrics", "Bearer " + token, 200},
		{"unknown route", "/v1/nope", "", 404},
		{"page is public", "/", "", 200},
		{"assets are public", "/static/style.css", "", 200},
	}
	_, _, ts := newTestServer(t, api.Options{Token: token})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := map[string]string{}
			if tt.auth != "" {
				hdr["Authorization"] = tt.auth
			}
			status, body := request(t, ts, "GET", tt.path, "", hdr)
			if status != tt.status {
				t.Fatalf("status %d, want %d: %s", status, tt.status, body)
			}
			if status == 401 && !strings.Contains(body, "bearer token") {
				t.Errorf("401 body %s", body)
			}
		})
	}
}

func TestHostAndOrigin(t *testing.T) {
	tests := []struct {
		name   string
		method string
		hdr    map[string]string
		status int
	}{
		{"loopback host", "GET", map[string]string{"Host": "127.0.0.1:9090"}, 200},
		{"localhost", "GET", map[string]string{"Host": "localhost:9090"}, 200},
		{"ipv6 loopback", "GET", map[string]string{"Host": "[::1]:9090"}, 200},
		{"rebound name", "GET", map[string]string{"Host": "evil.example:9090"}, 403},
		{"lan address", "GET", map[string]string{"Host": "192.168.1.4:9090"}, 403},
		{"cross-origin post", "POST", map[string]string{"Host": "127.0.0.1:9090", "Origin": "http://evil.example"}, 403},
		{"same-origin post", "POST", map[string]string{"Host": "127.0.0.1:9090", "Origin": "http://127.0.0.1:9090"}, 200},
		{"post without origin", "POST", map[string]string{"Host": "127.0.0.1:9090"}, 200},
	}
	srv := api.NewServer(apitest.New(), api.Options{CheckHost: true})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := "/v1/programs"
			if tt.method == "POST" {
				path = "/v1/programs/xdp_router/disable"
			}
			req := httptest.NewRequestWithContext(t.Context(), tt.method, path, nil)
			for k, v := range tt.hdr {
				if k == "Host" {
					req.Host = v
				} else {
					req.Header.Set(k, v)
				}
			}
			rec := httptest.NewRecorder()
			srv.ServeHTTP(rec, req)
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.status, rec.Body)
			}
		})
	}
}

func TestClient(t *testing.T) {
	_, _, ts := newTestServer(t, api.Options{Token: "tok"})
	c, err := api.NewClient(ts.URL, "tok")
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	key := []byte{0x20, 0, 0, 0, 10, 0, 0, 9}
	val := []byte{7, 0, 0, 0, 0, 0, 0, 0}
	if _, err := c.Update(ctx, "router:routes", key, val); err != nil {
		t.Fatal(err)
	}
	e, err := c.Lookup(ctx, "router:routes", key)
	if err != nil || string(e.Value) != string(val) {
		t.Fatalf("lookup after update: %v %x", err, e.Value)
	}
	progs, err := c.Programs(ctx)
	if err != nil || len(progs) != 2 || !progs[1].Guards[0].Tripped {
		t.Fatalf("programs after guarded update: %v %+v", err, progs)
	}
	if _, err := c.Delete(ctx, "router:routes", key); err != nil {
		t.Fatal(err)
	}
	_, err = c.Lookup(ctx, "router:routes", key)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != 404 {
		t.Fatalf("lookup after delete: %v, want a 404 api.Error", err)
	}
	res, err := c.Cycle(ctx, api.CycleRequest{Program: "router:xdp_router"})
	if err != nil || len(res.Programs) != 1 || res.Programs[0].Outcome != "swapped" {
		t.Fatalf("cycle: %v %+v", err, res)
	}
	if err := c.SetEnabled(ctx, "xdp_firewall", false); err != nil {
		t.Fatal(err)
	}
	p, err := c.Program(ctx, "fw:xdp_firewall")
	if err != nil || p.Enabled {
		t.Fatalf("program after disable: %v %+v", err, p)
	}
	evs, err := c.Events(ctx, 0, 2)
	if err != nil || len(evs) != 2 || evs[1].Kind != api.EventCycle {
		t.Fatalf("events: %v %+v", err, evs)
	}
	heat, err := c.Heatmaps(ctx, 1)
	if err != nil || len(heat["router"].Maps["routes"]) != 1 {
		t.Fatalf("heatmaps: %v %+v", err, heat)
	}
	st, err := c.Stats(ctx)
	if err != nil || st.GuardBumps != 2 || st.Cycles != 1 {
		t.Fatalf("stats: %v %+v", err, st)
	}

	bad, err := api.NewClient(ts.URL, "wrong")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Programs(ctx); !errors.As(err, &ae) || ae.Status != 401 {
		t.Fatalf("wrong token: %v", err)
	}
}

func TestNewClientAddress(t *testing.T) {
	tests := []struct {
		addr string
		ok   bool
	}{
		{"unix:/run/morpheus.sock", true},
		{"127.0.0.1:9090", true},
		{"tcp:127.0.0.1:9090", true},
		{"http://127.0.0.1:9090/", true},
		{"unix:", false},
		{"localhost", false},
	}
	for _, tt := range tests {
		_, err := api.NewClient(tt.addr, "")
		if (err == nil) != tt.ok {
			t.Errorf("NewClient(%q): %v, want ok=%v", tt.addr, err, tt.ok)
		}
	}
}

func TestParseHex(t *testing.T) {
	tests := []struct {
		in   string
		size uint32
		want string // hex, or the error substring
		ok   bool
	}{
		{"0a0b", 2, "0a0b", true},
		{"0x0A0B", 2, "0a0b", true},
		{"0a0b0c", 2, `key has 3 bytes, the map's key size is 2 bytes (4 hex digits)`, false},
		{"0a0", 2, `is not hex`, false},
		{"", 2, `key is missing (want 2 bytes as 4 hex digits)`, false},
		{"xyz1", 2, `is not hex`, false},
	}
	for _, tt := range tests {
		b, err := api.ParseHex("m", "key", tt.in, tt.size)
		switch {
		case tt.ok && (err != nil || strings.ToLower(tt.want) != strings.ToLower(hexString(b))):
			t.Errorf("ParseHex(%q) = %x, %v; want %s", tt.in, b, err, tt.want)
		case !tt.ok && (err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), `map "m"`)):
			t.Errorf("ParseHex(%q) error %v; want one naming the map and %q", tt.in, err, tt.want)
		}
	}
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

func TestSeriesAndMetrics(t *testing.T) {
	fake, srv, ts := newTestServer(t, api.Options{SeriesLength: 3})
	ctx := t.Context()
	t0 := time.Unix(1_700_000_000, 0)
	// 1000 packets/s at 50 ns each for the router; the firewall idles.
	for i := range 5 {
		fake.SetRun("router:xdp_router", uint64(1000*i), time.Duration(50_000*i))
		srv.Sample(ctx, t0.Add(time.Duration(i)*time.Second))
	}
	if _, err := fake.Cycle(ctx, "", ""); err != nil {
		t.Fatal(err)
	}
	srv.Sample(ctx, t0.Add(5*time.Second))

	c, err := api.NewClient(ts.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Series(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := s.Programs["router:xdp_router"]
	if len(r) != 3 {
		t.Fatalf("router series has %d samples, want the bound 3: %+v", len(r), r)
	}
	if r[1].NSPerPacket != 50 || r[1].PPS != 1000 || r[1].Packets != 1000 || r[2].Packets != 0 || r[2].Version != 2 {
		t.Errorf("router samples %+v", r)
	}
	if fw := s.Programs["fw:xdp_firewall"]; len(fw) != 3 || fw[0].Packets != 0 || fw[0].NSPerPacket != 0 {
		t.Errorf("idle firewall samples %+v", fw)
	}

	// A program restarted with fresh stats starts a new interval instead
	// of producing a negative sample.
	fake.SetRun("router:xdp_router", 10, 500)
	srv.Sample(ctx, t0.Add(6*time.Second))
	if s, _ := c.Series(ctx); s.Programs["router:xdp_router"][2].Time.Equal(t0.Add(6 * time.Second)) {
		t.Errorf("a counter reset produced a sample")
	}

	fake.SetRun("router:xdp_router", 1010, 500+60_000)
	srv.Sample(ctx, t0.Add(7*time.Second))
	status, body := request(t, ts, "GET", "/metrics", "", nil)
	if status != 200 {
		t.Fatalf("/metrics: %d %s", status, body)
	}
	for _, want := range []string{
		`morpheus_program_ns_per_packet{nf="router",program="xdp_router"} 60`,
		`morpheus_program_packets_total{nf="router",program="xdp_router"} 1010`,
		`morpheus_program_version{nf="router",program="xdp_router"} 2`,
		`morpheus_program_optimization_enabled{nf="fw",program="xdp_firewall"} 1`,
		`morpheus_cycles_total 1`,
		`morpheus_swaps_total 2`,
		`morpheus_guard_bumps_total 0`,
		`morpheus_verifier_rejections_total 0`,
		`morpheus_differential_failures_total 0`,
		`morpheus_deoptimizations_total 0`,
		`morpheus_cycle_duration_seconds_bucket{le="0.02"} 1`,
		`morpheus_cycle_duration_seconds_count 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(body, `morpheus_program_ns_per_packet{nf="fw"`) {
		t.Errorf("/metrics reports ns/packet for a program without packets")
	}
}

func TestServeShutdown(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	ln, err := api.Listen(ctx, "127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(apitest.New(), api.Options{SampleInterval: 10 * time.Millisecond, CheckHost: true})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	c, err := api.NewClient(ln.Addr().String(), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Programs(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}
