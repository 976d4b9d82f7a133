package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/gateway"
)

// Origin patterns with a wildcard in the scheme (http*://app.example.com
// allows http and https) are accepted at start-up, as the gateway matches them.
func TestOriginWildcardScheme(t *testing.T) {
	const pattern = "http*://app.example.com"

	// The gateway takes the pattern and lets https://app.example.com in.
	bus := fanout.NewMemory(fanout.MemoryConfig{})
	defer bus.Close()
	gw, err := gateway.New(gateway.Config{Bus: bus, Origins: []string{pattern}, DrainTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("gateway.New: %v", err)
	}
	hs := httptest.NewServer(gw.Handler())
	defer func() {
		gw.Shutdown(t.Context())
		hs.Close()
	}()
	req, _ := http.NewRequest(http.MethodOptions, hs.URL+"/v1/rooms/a/messages", nil)
	req.Header.Set("Origin", "https://app.example.com")
	req.Header.Set("Access-Control-Request-Method", "POST")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("gateway preflight from https://app.example.com: got %d, want 204", resp.StatusCode)
	}

	for _, p := range []string{pattern, "*://app.example.com", "https?://app.example.com"} {
		if _, err := parseServe([]string{"--addr", "localhost:0", "--origins", p}, func(string) string { return "" }, nil, nil); err != nil {
			t.Errorf("--origins %s: got %v, want nil", p, err)
		}
	}
}
