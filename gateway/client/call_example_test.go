package client_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/parley-rt/parley/gateway/client"
)

// Two clients join a call: the second finds the first in its ack, the
// first hears of the second, and of any two peers exactly one is polite
// toward the other. A signal goes through the node to one peer.
func ExampleClient_Join() {
	url, stop := exampleNode()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var calls []*client.Call
	for range 2 {
		c, err := client.Dial(ctx, client.Options{URL: url})
		if err != nil {
			log.Fatal(err)
		}
		defer c.Close()
		call, err := c.Join(ctx, "standup")
		if err != nil {
			log.Fatal(err)
		}
		calls = append(calls, call)
	}
	first, second := calls[0], calls[1]
	fmt.Println(len(second.Peers()), second.Peers()[0].Session == first.ID())

	ev := <-first.Events()
	fmt.Println(ev.Kind == client.CallPeerJoined, ev.Peer.Session == second.ID())
	fmt.Println(ev.Peer.Polite != second.Peers()[0].Polite)

	// The end of second's ICE candidates, for first.
	end := map[string]any{"candidate": map[string]any{"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}}
	if err := second.Signal(ctx, first.ID(), end); err != nil {
		log.Fatal(err)
	}
	ev = <-first.Events()
	fmt.Println(ev.Kind == client.CallSignal, ev.From == second.ID())
	// Output:
	// 1 true
	// true true
	// true
	// true true
}
