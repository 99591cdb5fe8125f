package heatmap

import (
	"strings"
	"testing"
)

func TestTopOrdersByCountThenKey(t *testing.T) {
	h, err := Parse(strings.NewReader(`{"maps": {"routes": [
		{"key": "02", "count": 5}, {"key": "01", "count": 5}, {"key": "03", "count": 9}, {"key": "04", "count": 1}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	top := h.Top("routes", 3)
	want := []string{"03", "01", "02"}
	if len(top) != 3 {
		t.Fatalf("got %d keys", len(top))
	}
	for i, k := range top {
		if got := strings.TrimPrefix(string(mustJSON(t, k.Key)), `"`); !strings.HasPrefix(got, want[i]) {
			t.Fatalf("rank %d: key %s, want %s", i, got, want[i])
		}
	}
	if len(h.Top("other", 3)) != 0 || len((*Heatmap)(nil).Top("routes", 3)) != 0 {
		t.Fatal("unknown map or nil heatmap must give no keys")
	}
}

func mustJSON(t *testing.T, k interface{ MarshalJSON() ([]byte, error) }) []byte {
	t.Helper()
	b, err := k.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct{ name, json, want string }{
		{"empty key", `{"maps": {"m": [{"key": "", "count": 1}]}}`, `map "m" key 0: empty key`},
		{"unknown field", `{"maps": {}, "x": 1}`, "unknown field"},
		{"bad count", `{"maps": {"m": [{"key": "01", "count": -1}]}}`, "heatmap"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(c.json))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
		})
	}
}
