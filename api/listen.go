package api

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// DefaultAddress is where the daemon listens unless told otherwise.
const DefaultAddress = "unix:/run/morpheus.sock"

// Listener is a listener opened by Listen.
type Listener struct {
	net.Listener
	// Unix is true for a unix socket.
	Unix bool
	// Loopback is true for a TCP listener on a loopback address.
	Loopback bool

	path      string
	closeOnce sync.Once
	closeErr  error
}

// Close closes the listener and removes a unix socket file.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		l.closeErr = l.Listener.Close()
		if l.path != "" {
			if err := os.Remove(l.path); err != nil && !errors.Is(err, fs.ErrNotExist) && l.closeErr == nil {
				l.closeErr = err
			}
		}
	})
	return l.closeErr
}

// Listen opens the API listener. addr is "unix:/path" for a unix socket
// (created with mode 0600, so only root can change the data plane) or
// "host:port" for TCP. TCP addresses must be loopback IPs or "localhost"
// unless allowRemote is set, because the API can rewrite a running data
// plane.
func Listen(ctx context.Context, addr string, allowRemote bool) (*Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return listenUnix(ctx, path)
	}
	host, _, err := net.SplitHostPort(strings.TrimPrefix(addr, "tcp:"))
	if err != nil {
		return nil, fmt.Errorf("api address %q: want unix:/path or host:port: %v", addr, err)
	}
	loopback := loopbackHost(host)
	if !loopback && !allowRemote {
		return nil, fmt.Errorf("api address %q is not a loopback address; refusing to expose the API beyond this machine without --allow-remote", addr)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", strings.TrimPrefix(addr, "tcp:"))
	if err != nil {
		return nil, err
	}
	return &Listener{Listener: ln, Loopback: loopback}, nil
}

// listenUnix binds the socket in a private directory, sets its mode and
// only then renames it into place, so it is never reachable with looser
// permissions (chmod after bind would leave a window).
func listenUnix(ctx context.Context, path string) (*Listener, error) {
	if path == "" {
		return nil, errors.New("api address unix: needs a socket path")
	}
	path = filepath.Clean(path)
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("api socket %s exists and is not a socket", path)
		}
		// A socket nobody answers on is left over from a daemon that died.
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("api socket %s is in use by another process", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".morpheus-sock-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "sock")
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "unix", tmp)
	if err != nil {
		return nil, err
	}
	ul := ln.(*net.UnixListener)
	// Listener.Close removes the final path; the temporary one is gone.
	ul.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, err
	}
	return &Listener{Listener: ln, Unix: true, path: path}, nil
}
