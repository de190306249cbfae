package server_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/internal/server"
)

// TestListenersCutSlowClients: over real TCP, a client that never finishes
// its headers, one that announces a body and stalls, and an idle keep-alive
// connection are each cut by the listener's timeouts, on the OTLP/HTTP and
// the web listeners; the stalled body gets a 408 with a body, counted.
func TestListenersCutSlowClients(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, addrs := startServerReg(t, reg, func(c *server.Config) {
		c.Query.Timeout = 500 * time.Millisecond
		short := server.HTTPTimeouts{ReadHeader: 300 * time.Millisecond, Read: time.Second, Idle: 300 * time.Millisecond}
		c.WebHTTP, c.OTLPHTTP = short, short
	})
	// closed reads c until the server closes it; the deadline only turns a
	// hang into a failure.
	closed := func(c net.Conn) {
		t.Helper()
		require.NoError(t, c.SetReadDeadline(time.Now().Add(60*time.Second)))
		_, err := io.ReadAll(c)
		require.NoError(t, err, "the server closes the connection before the test's deadline")
	}
	dial := func(addr string) net.Conn {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	for _, addr := range []string{addrs.OTLPHTTP, addrs.Web} {
		// Headers that never end (slowloris).
		c := dial(addr)
		_, err := io.WriteString(c, "POST /v1/traces HTTP/1.1\r\nHost: x\r\n")
		require.NoError(t, err)
		closed(c)

		// An idle keep-alive connection after a request.
		c = dial(addr)
		_, err = io.WriteString(c, "GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
		require.NoError(t, err)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.NoError(t, c.SetReadDeadline(time.Now().Add(60*time.Second)))
		_, err = io.ReadAll(br)
		require.NoError(t, err, "the idle connection is closed before the test's deadline")
	}

	// A body announced and stalled after one byte.
	c := dial(addrs.OTLPHTTP)
	_, err := io.WriteString(c, "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(60*time.Second)))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusRequestTimeout, resp.StatusCode)
	require.Contains(t, string(body), "--otlp.http.read-timeout")
	require.Equal(t, 1.0, counter(t, reg, "hopwatch_otlp_requests_refused_total", map[string]string{"protocol": "http", "reason": "timeout"}))
}
