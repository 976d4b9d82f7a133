package gateway

import "testing"

func TestSmoke(t *testing.T) {
	ts := startServer(t, nil)
	a := dialWS(t, ts.ws, nil)
	a.expect("welcome")
	a.send(map[string]any{"type": "subscribe", "id": "1", "room": "lobby", "presence": true})
	t.Log(a.expect("ack"))
	a.send(map[string]any{"type": "publish", "id": "2", "room": "lobby", "data": map[string]any{"text": "hi"}})
	for i := 0; i < 3; i++ {
		t.Log(a.next())
	}
}
