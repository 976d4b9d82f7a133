package rtc_test

import (
	"context"
	"log"
	"os/signal"

	"github.com/pion/webrtc/v4"

	"github.com/parley-rt/parley/gateway/client"
	"github.com/parley-rt/parley/gateway/client/rtc"
)

// A mesh over a call: each peer that joins connects to the peers already
// there, the others answer, and everyone says hello on each data channel.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background())
	defer stop()
	c, err := client.Dial(ctx, client.Options{URL: "ws://localhost:8080/v1/ws"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	call, err := c.Join(ctx, "standup")
	if err != nil {
		log.Fatal(err)
	}
	var peer *rtc.Peer
	peer = rtc.New(call, rtc.Options{
		OnChannel: func(remote string, dc *webrtc.DataChannel) {
			dc.OnMessage(func(m webrtc.DataChannelMessage) { log.Printf("%s says %s", remote, m.Data) })
			go func() {
				if peer.WaitOpen(ctx, remote) == nil {
					dc.SendText("hello")
				}
			}()
		},
		OnEvent: func(ev client.CallEvent) {
			if ev.Kind == client.CallRejoined && !ev.Resumed {
				// This client came back as a new peer: it connects again.
				for _, p := range ev.Peers {
					peer.Connect(p.Session)
				}
			}
		},
	})
	for _, p := range call.Peers() {
		peer.Connect(p.Session)
	}
	if err := peer.Run(ctx); err != nil && ctx.Err() == nil {
		log.Fatal(err)
	}
}
