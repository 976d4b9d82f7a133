package web_test

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/parley-rt/parley/web"
)

func TestFS(t *testing.T) {
	for _, name := range []string{"index.html", "chat.html", "chat.js", "events.html", "events.js", "call.html", "call.js", "call.css",
		"diagnostics.html", "diagnostics.js", "diagnostics.css", "dashboard.html", "dashboard.js", "dashboard.css",
		"parley.js", "parley.d.ts", "style.css", "favicon.svg"} {
		if _, err := fs.Stat(web.FS(), name); err != nil {
			t.Errorf("embedded %s: %v", name, err)
		}
	}
	// Only the static files are embedded: no tests, no node_modules.
	fs.WalkDir(web.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(p, "node_modules") || strings.HasSuffix(p, ".go") || strings.HasSuffix(p, ".mjs") {
			t.Errorf("embedded %s, want only the web app's files", p)
		}
		return nil
	})
}

func TestHandler(t *testing.T) {
	h := web.Handler()
	get := func(method, path string, header http.Header) *http.Response {
		t.Helper()
		req := httptest.NewRequest(method, path, nil)
		for k, v := range header {
			req.Header[k] = v
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Result()
	}
	for _, tt := range []struct {
		name, method, path string
		status             int
		ctype, contains    string
	}{
		{"index", "GET", "/", 200, "text/html", "<title>Parley</title>"},
		{"index by name", "GET", "/index.html", 200, "text/html", "<title>Parley</title>"},
		{"sdk", "GET", "/parley.js", 200, "javascript", "export class Parley"},
		{"chat", "GET", "/chat.html", 200, "text/html", `src="chat.js"`},
		{"events", "GET", "/events.html", 200, "text/html", `src="events.js"`},
		{"types", "GET", "/parley.d.ts", 200, "application/typescript", "export class Call"},
		{"css", "GET", "/style.css", 200, "text/css", ":root"},
		{"icon", "GET", "/favicon.svg", 200, "image/svg+xml", "<svg"},
		{"head", "HEAD", "/parley.js", 200, "javascript", ""},
		{"unknown", "GET", "/nope.html", 404, "text/plain", "not found"},
		{"no directory listing", "GET", "/static/", 404, "text/plain", "not found"},
		{"no escape", "GET", "/../web.go", 404, "text/plain", "not found"},
		{"post", "POST", "/", 405, "text/plain", "method not allowed"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp := get(tt.method, tt.path, nil)
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status {
				t.Fatalf("got status %d, want %d", resp.StatusCode, tt.status)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.Contains(ct, tt.ctype) {
				t.Errorf("got Content-Type %q, want %q", ct, tt.ctype)
			}
			if !strings.Contains(string(body), tt.contains) {
				t.Errorf("body does not contain %q", tt.contains)
			}
		})
	}

	t.Run("pages forbid foreign scripts", func(t *testing.T) {
		resp := get("GET", "/chat.html", nil)
		csp := resp.Header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "script-src 'self'") {
			t.Errorf("got Content-Security-Policy %q, want script-src 'self'", csp)
		}
		if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("got X-Content-Type-Options %q, want nosniff", got)
		}
	})

	t.Run("revalidation", func(t *testing.T) {
		etag := get("GET", "/parley.js", nil).Header.Get("ETag")
		if etag == "" {
			t.Fatal("no ETag")
		}
		resp := get("GET", "/parley.js", http.Header{"If-None-Match": {etag}})
		if resp.StatusCode != http.StatusNotModified {
			t.Errorf("got status %d for a current ETag, want 304", resp.StatusCode)
		}
		if cc := resp.Header.Get("Cache-Control"); cc != "no-cache" {
			t.Errorf("got Cache-Control %q, want no-cache", cc)
		}
	})
}

// TestThroughGateway checks that the gateway serves the web app on / without
// shadowing its own endpoints.
func TestThroughGateway(t *testing.T) {
	n, err := startNode(t, "node-static")
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{}
	defer client.CloseIdleConnections()
	for _, tt := range []struct {
		name, path      string
		status          int
		ctype, contains string
	}{
		{"index", "/", 200, "text/html", "<title>Parley</title>"},
		{"sdk", "/parley.js", 200, "javascript", "export class Parley"},
		{"unknown", "/v1/nope", 404, "", ""},
		{"health", "/healthz", 200, "text/plain", "ok"},
		{"API", "/v1/rooms/lobby/presence", 200, "application/json", `"members"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := client.Get(n.url + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status {
				t.Fatalf("got status %d, want %d", resp.StatusCode, tt.status)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.Contains(ct, tt.ctype) {
				t.Errorf("got Content-Type %q, want %q", ct, tt.ctype)
			}
			if !strings.Contains(string(body), tt.contains) {
				t.Errorf("body does not contain %q", tt.contains)
			}
		})
	}
}
