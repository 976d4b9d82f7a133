package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"time"

	"github.com/parley-rt/parley/fanout"
	"github.com/parley-rt/parley/gateway"
	"github.com/parley-rt/parley/gateway/client"
)

// exampleNode starts a Parley node in dev mode on 127.0.0.1 with an
// in-memory bus, and returns its WebSocket URL and a function that stops it.
func exampleNode() (url string, stop func()) {
	bus := fanout.NewMemory(fanout.MemoryConfig{})
	srv, err := gateway.New(gateway.Config{Bus: bus, NodeID: "example", DrainTimeout: 100 * time.Millisecond})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	return "ws://" + ln.Addr().String() + "/v1/ws", func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
		bus.Close()
	}
}

// nextMessage returns the next message event of c.
func nextMessage(c *client.Client) client.Message {
	for e := range c.Events() {
		if e.Kind == client.EventMessage {
			return e.Message
		}
	}
	log.Fatal("Events closed")
	return client.Message{}
}

func Example() {
	url, stop := exampleNode()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, err := client.Dial(ctx, client.Options{URL: url})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Subscribe(ctx, "chat", client.SubscribeOptions{}); err != nil {
		log.Fatal(err)
	}
	if _, err := c.Publish(ctx, "chat", map[string]string{"text": "hello"}, ""); err != nil {
		log.Fatal(err)
	}
	for e := range c.Events() {
		switch e.Kind {
		case client.EventMessage:
			fmt.Printf("%s #%d: %s\n", e.Message.Room, e.Message.Offset, e.Message.Data)
			return
		case client.EventLost:
			fmt.Println("reload", e.Room)
		}
	}
	// Output: chat #1: {"text":"hello"}
}

// Publish takes []byte and json.RawMessage as JSON, and encodes anything
// else with encoding/json.
func ExampleClient_Publish() {
	url, stop := exampleNode()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Options{URL: url})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Subscribe(ctx, "chat", client.SubscribeOptions{}); err != nil {
		log.Fatal(err)
	}

	for _, data := range []any{
		[]byte(`{"text": "as JSON"}`),
		struct {
			Text string `json:"text"`
		}{"encoded"},
		"a JSON string",
	} {
		if _, err := c.Publish(ctx, "chat", data, ""); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s\n", nextMessage(c).Data)
	}
	_, err = c.Publish(ctx, "chat", []byte(`{"text":`), "")
	fmt.Println(errors.Is(err, client.ErrInvalidJSON))

	// With a key, a publish whose connection dropped before its ack can be
	// sent again: the node publishes a key once.
	first, _ := c.Publish(ctx, "chat", []byte(`{"text":"once"}`), "order-17")
	again, _ := c.Publish(ctx, "chat", []byte(`{"text":"once"}`), "order-17")
	fmt.Println(first.Offset, again.Offset, again.Duplicate)
	// Output:
	// {"text":"as JSON"}
	// {"text":"encoded"}
	// "a JSON string"
	// true
	// 4 4 true
}

// An application that saved the position of the last message it processed
// subscribes from there, and gets the room's members with the same ack.
func ExampleClient_Subscribe() {
	url, stop := exampleNode()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Options{URL: url})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	var saved client.Position
	for i := 1; i <= 3; i++ {
		ack, err := c.Publish(ctx, "news", map[string]int{"n": i}, "")
		if err != nil {
			log.Fatal(err)
		}
		if i == 1 {
			saved = client.Position{Epoch: ack.Epoch, Offset: ack.Offset}
		}
	}

	ack, err := c.Subscribe(ctx, "news", client.SubscribeOptions{Presence: true, Since: &saved})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("recovered:", ack.Recovered, "members:", ack.MembersTotal)
	for range 2 {
		m := nextMessage(c)
		fmt.Printf("#%d %s\n", m.Offset, m.Data)
	}
	// Output:
	// recovered: true members: 1
	// #2 {"n":2}
	// #3 {"n":3}
}

// The goroutine that reads Events may call the client: here it answers every
// message with a publish that waits for its ack, and so reads nothing while
// its own messages come back. With an EventBuffer of 4, the room is paused
// and taken back from the node's history several times; every message still
// arrives once, in order.
func ExampleClient_Events() {
	url, stop := exampleNode()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Options{URL: url, EventBuffer: 4})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Subscribe(ctx, "echo", client.SubscribeOptions{}); err != nil {
		log.Fatal(err)
	}
	if _, err := c.Publish(ctx, "echo", []byte(`0`), ""); err != nil {
		log.Fatal(err)
	}

	var got []string
	for e := range c.Events() {
		if e.Kind != client.EventMessage {
			continue
		}
		got = append(got, string(e.Message.Data))
		if e.Message.Offset == 1 {
			for i := 1; i <= 12; i++ {
				if _, err := c.Publish(ctx, "echo", []byte(fmt.Sprint(i)), ""); err != nil {
					log.Fatal(err)
				}
			}
		}
		if len(got) == 13 {
			break
		}
	}
	fmt.Println(got)
	// Output: [0 1 2 3 4 5 6 7 8 9 10 11 12]
}

// Presence pages through a room's members; AllMembers walks every page.
func ExampleClient_Presence() {
	url, stop := exampleNode()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 5 {
		m, err := client.Dial(ctx, client.Options{URL: url})
		if err != nil {
			log.Fatal(err)
		}
		defer m.Close()
		if _, err := m.Subscribe(ctx, "lobby", client.SubscribeOptions{Presence: true}); err != nil {
			log.Fatal(err)
		}
	}
	c, err := client.Dial(ctx, client.Options{URL: url})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	opts := client.PresenceOptions{Limit: 2}
	for {
		page, err := c.Presence(ctx, "lobby", opts)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%d of %d\n", len(page.Members), page.Total)
		if page.Next == "" {
			break
		}
		opts.Cursor = page.Next
	}
	all, err := c.AllMembers(ctx, "lobby")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(all), "members")
	// Output:
	// 2 of 5
	// 2 of 5
	// 1 of 5
	// 5 members
}
