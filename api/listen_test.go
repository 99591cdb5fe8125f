package api_test

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/morpheus-go/morpheus/api"
	"github.com/morpheus-go/morpheus/api/apitest"
)

func TestListenTCP(t *testing.T) {
	tests := []struct {
		addr        string
		allowRemote bool
		err         string // substring; empty means success
	}{
		{"127.0.0.1:0", false, ""},
		{"tcp:127.0.0.1:0", false, ""},
		{"localhost:0", false, ""},
		{"[::1]:0", false, ""},
		{"0.0.0.0:0", false, "not a loopback address"},
		{":0", false, "not a loopback address"},
		{"192.0.2.1:0", false, "--allow-remote"},
		{"example.com:0", false, "not a loopback address"},
		{"0.0.0.0:0", true, ""},
		{"127.0.0.1", false, "want unix:/path or host:port"},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			ln, err := api.Listen(t.Context(), tt.addr, tt.allowRemote)
			if err != nil && strings.Contains(err.Error(), "cannot assign requested address") {
				t.Skipf("no such address here: %v", err) // [::1] without IPv6
			}
			if tt.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				ln.Close()
				return
			}
			if err == nil {
				ln.Close()
				t.Fatalf("Listen(%q) succeeded, want error %q", tt.addr, tt.err)
			}
			if !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("Listen(%q): %v, want %q", tt.addr, err, tt.err)
			}
		})
	}
}

func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.sock")
	ln, err := api.Listen(t.Context(), "unix:"+path, false)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("socket directory holds %d entries, want only the socket", len(ents))
	}

	// The API answers on it.
	srv := api.NewServer(apitest.New(), api.Options{})
	go srv.Serve(t.Context(), ln)
	c, err := api.NewClient("unix:"+path, "")
	if err != nil {
		t.Fatal(err)
	}
	if progs, err := c.Programs(t.Context()); err != nil || len(progs) != 2 {
		t.Fatalf("programs over the socket: %v %v", err, progs)
	}

	// A second daemon must not steal a live socket.
	if _, err := api.Listen(t.Context(), "unix:"+path, false); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Listen on a live socket: %v", err)
	}
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left behind after Close: %v", err)
	}

	// A stale socket (its daemon died) is replaced.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	ln, err = api.Listen(t.Context(), "unix:"+path, false)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	ln.Close()

	// Anything that is not a socket is left alone.
	if err := os.WriteFile(path, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := api.Listen(t.Context(), "unix:"+path, false); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}
}
