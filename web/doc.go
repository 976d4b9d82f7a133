// Package web is Parley's browser side: the JavaScript SDK (parley.js, an ES
// module with no dependencies) and the demo pages that use it (a chat room
// and a live event stream), embedded in the binary with go:embed.
//
// The gateway serves Handler on GET / of its public listener, next to the
// protocol's endpoints (/v1/ws, /v1/sse, the HTTP API). The files live in
// static/; docs/SDK.md documents the SDK. The browser tests
// (browser_test.go, with scripts in testdata/) drive Debian's Chromium through
// playwright-core from npm: run `bash .ci/web-deps` once to install both.
//
// web imports nothing of Parley's own.
package web
