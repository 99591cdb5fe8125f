package api

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/morpheus-go/morpheus/heatmap"
	"github.com/morpheus-go/morpheus/mapstate"
)

// Client talks to a daemon's API.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// NewClient returns a client for addr, in the daemon's listen syntax
// ("unix:/run/morpheus.sock", "127.0.0.1:9090") or as an http(s) URL.
// A non-empty token is sent as a bearer token.
func NewClient(addr, token string) (*Client, error) {
	c := &Client{token: token, http: &http.Client{Timeout: 10 * time.Minute}}
	switch {
	case strings.HasPrefix(addr, "unix:"):
		path := strings.TrimPrefix(addr, "unix:")
		if path == "" {
			return nil, fmt.Errorf("api address %q: missing socket path", addr)
		}
		var d net.Dialer
		c.http.Transport = &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "unix", path)
			},
		}
		// The host is never resolved; it only has to be a valid name.
		c.base = "http://localhost"
	case strings.HasPrefix(addr, "http://"), strings.HasPrefix(addr, "https://"):
		c.base = strings.TrimSuffix(addr, "/")
	default:
		if _, _, err := net.SplitHostPort(strings.TrimPrefix(addr, "tcp:")); err != nil {
			return nil, fmt.Errorf("api address %q: want unix:/path, host:port or a URL", addr)
		}
		c.base = "http://" + strings.TrimPrefix(addr, "tcp:")
	}
	return c, nil
}

// Error is an error response of the API.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status)
}

// Programs lists the managed programs.
func (c *Client) Programs(ctx context.Context) ([]Program, error) {
	var out []Program
	return out, c.do(ctx, http.MethodGet, "/v1/programs", nil, &out)
}

// Program returns one program.
func (c *Client) Program(ctx context.Context, name string) (*Program, error) {
	var out Program
	return &out, c.do(ctx, http.MethodGet, "/v1/programs/"+url.PathEscape(name), nil, &out)
}

// SetEnabled turns optimization of a program on or off.
func (c *Client) SetEnabled(ctx context.Context, name string, enabled bool) error {
	action := "disable"
	if enabled {
		action = "enable"
	}
	return c.do(ctx, http.MethodPost, "/v1/programs/"+url.PathEscape(name)+"/"+action, nil, nil)
}

// Cycle forces an optimization cycle and waits for its result; the zero
// request cycles every NF.
func (c *Client) Cycle(ctx context.Context, req CycleRequest) (*CycleResult, error) {
	var out CycleResult
	return &out, c.do(ctx, http.MethodPost, "/v1/cycle", req, &out)
}

// Maps lists the maps.
func (c *Client) Maps(ctx context.Context) ([]Map, error) {
	var out []Map
	return out, c.do(ctx, http.MethodGet, "/v1/maps", nil, &out)
}

// Entries returns every entry of a map.
func (c *Client) Entries(ctx context.Context, mapName string) ([]mapstate.Entry, error) {
	var out EntriesResponse
	err := c.do(ctx, http.MethodGet, "/v1/maps/"+url.PathEscape(mapName)+"/entries", nil, &out)
	return out.Entries, err
}

// Lookup returns the entry of one key.
func (c *Client) Lookup(ctx context.Context, mapName string, key []byte) (mapstate.Entry, error) {
	var out EntriesResponse
	q := url.Values{"key": {hex.EncodeToString(key)}}
	if err := c.do(ctx, http.MethodGet, "/v1/maps/"+url.PathEscape(mapName)+"/entries?"+q.Encode(), nil, &out); err != nil {
		return mapstate.Entry{}, err
	}
	if len(out.Entries) != 1 {
		return mapstate.Entry{}, fmt.Errorf("map %q: server returned %d entries for one key", mapName, len(out.Entries))
	}
	return out.Entries[0], nil
}

// Update writes one entry through the guarded path.
func (c *Client) Update(ctx context.Context, mapName string, key, value []byte) (*ChangeResponse, error) {
	var out ChangeResponse
	req := UpdateRequest{Key: hex.EncodeToString(key), Value: hex.EncodeToString(value)}
	return &out, c.do(ctx, http.MethodPut, "/v1/maps/"+url.PathEscape(mapName)+"/entries", req, &out)
}

// Delete removes one entry through the guarded path.
func (c *Client) Delete(ctx context.Context, mapName string, key []byte) (*ChangeResponse, error) {
	var out ChangeResponse
	return &out, c.do(ctx, http.MethodDelete, "/v1/maps/"+url.PathEscape(mapName)+"/entries/"+hex.EncodeToString(key), nil, &out)
}

// Heatmaps returns the top hot keys per map, per NF (top <= 0: the
// server default).
func (c *Client) Heatmaps(ctx context.Context, top int) (map[string]*heatmap.Heatmap, error) {
	var out map[string]*heatmap.Heatmap
	path := "/v1/heatmaps"
	if top > 0 {
		path += "?top=" + strconv.Itoa(top)
	}
	return out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// Events returns events after a sequence number (at most limit; <= 0:
// the server default).
func (c *Client) Events(ctx context.Context, after uint64, limit int) ([]Event, error) {
	var out []Event
	q := url.Values{"after": {strconv.FormatUint(after, 10)}}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	return out, c.do(ctx, http.MethodGet, "/v1/events?"+q.Encode(), nil, &out)
}

// Stats returns the optimizer's counters.
func (c *Client) Stats(ctx context.Context) (*Stats, error) {
	var out Stats
	return &out, c.do(ctx, http.MethodGet, "/v1/stats", nil, &out)
}

// Series returns the sampled time series.
func (c *Client) Series(ctx context.Context) (*SeriesResponse, error) {
	var out SeriesResponse
	return &out, c.do(ctx, http.MethodGet, "/v1/series", nil, &out)
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var e ErrorResponse
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(data))
		}
		return &Error{Status: resp.StatusCode, Message: e.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decoding response: %v", method, path, err)
	}
	return nil
}
