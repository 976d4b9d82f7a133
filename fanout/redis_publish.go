package fanout

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Publishing is pipelined. Publish hands its request to the bus's
// publishers, a fixed number of goroutines, through a bounded queue,
// r.publishQueue, and waits for the reply. A publisher takes the first
// request waiting, then every other one waiting (up to maxPublishBatch),
// sends them to Redis as one pipeline of EVALSHA calls on a connection of
// its own, and hands each caller its reply. A lone publication goes out at
// once: nothing waits for a batch to fill. While the publishers' batches are
// in flight the next requests gather in the queue, so the more callers
// publish at once the bigger the batches, and a burst costs few round trips.
//
// Order: a caller that publishes twice in a room, waiting for the first
// acknowledgement, gets its two offsets in that order. Two batches in flight
// at once can reorder publications of different callers, which were
// concurrent anyway; the script assigns offsets atomically, so offsets,
// history and delivery agree whatever the order.
//
// No request that may have run is sent again. A NOSCRIPT reply (Redis lost
// its script cache: a restart) means the script did not run: the publisher
// loads the script and sends those requests once more. Any other failure, a
// connection lost in the middle of a batch among them, fails the requests
// that got no reply, with ErrRedisUnavailable.

// Publishing limits.
const (
	// publishers is how many batches may be in flight at once, each on a
	// connection of its own.
	publishers = 2
	// maxPublishBatch bounds the requests of one pipeline.
	maxPublishBatch = 512
	// publishBacklog bounds the requests waiting for a publisher; past it
	// Publish waits (within its context) for room in the queue.
	publishBacklog = 4 * maxPublishBatch
	// A request is sent only with a minBatchShare-th of publishTimeout
	// left, so that no batch goes out with too little time to be answered:
	// one that waited longer behind slow batches fails unsent.
	minBatchShare = 4
)

// publishRequest is one Publish waiting for its reply.
type publishRequest struct {
	keys []string
	args []any
	// deadline is publishTimeout after the call: its batch has until the
	// earliest deadline among its requests.
	deadline time.Time
	// gone is the caller's ctx.Done(): a request whose caller has left is
	// not sent.
	gone  <-chan struct{}
	reply chan publishReply // buffered: a publisher never waits on it
}

type publishReply struct {
	res []any
	err error
}

// Publish implements Bus. Its publication goes to Redis in one pipeline with
// the others waiting at the time (see publishers). A publication that has no
// reply within the URL's read_timeout (2s by default) of the call fails with
// ErrRedisUnavailable; one that waited most of that time for the batches
// before it to be answered fails without being sent.
//
// A caller whose ctx ends first gets ctx's error at once. Its publication is
// not sent if it is still waiting; if it is in a batch already, it may have
// been published, as when the deadline of a call passes while Redis runs it:
// a failed Publish may have published, and a publication with a Key is safe
// to make again.
func (r *Redis) Publish(ctx context.Context, room string, p Publication) (PublishResult, error) {
	if err := r.check(ctx); err != nil {
		return PublishResult{}, err
	}
	meta, hist := roomKeys(room)
	keys := []string{meta, hist}
	if p.Key != "" {
		keys = append(keys, keyKey(room, p.Key))
	}
	req := &publishRequest{
		keys:  keys,
		args:  []any{NewEpoch(), []byte(p.Data), p.From, r.cfg.HistorySize, r.historyMs, r.metaMs, r.keyMs, roomChannel(room)},
		gone:  ctx.Done(),
		reply: make(chan publishReply, 1),
	}
	if r.publishTimeout > 0 {
		req.deadline = time.Now().Add(r.publishTimeout)
	}
	select {
	case r.publishQueue <- req:
	case <-ctx.Done():
		return PublishResult{}, fmt.Errorf("fanout: publish: %w", ctx.Err())
	case <-r.stop:
		return PublishResult{}, ErrClosed
	}
	var rep publishReply
	select {
	case rep = <-req.reply:
	case <-ctx.Done():
		return PublishResult{}, fmt.Errorf("fanout: publish: %w", ctx.Err())
	case <-r.stop:
		return PublishResult{}, ErrClosed
	}
	if rep.err != nil {
		return PublishResult{}, r.fail(ctx, "publish", rep.err)
	}
	out, ok := parsePublish(rep.res)
	if !ok {
		return PublishResult{}, r.fail(ctx, "publish", fmt.Errorf("unexpected reply %v", rep.res))
	}
	return out, nil
}

// publishLoop is one of the bus's publishers: it sends what waits in
// r.publishQueue, a batch at a time, until Close.
func (r *Redis) publishLoop(ctx context.Context) {
	defer r.wg.Done()
	batch := make([]*publishRequest, 0, maxPublishBatch)
	for {
		select {
		case <-r.stop:
			return
		case req := <-r.publishQueue:
			batch = append(batch, req)
		}
	gather:
		for len(batch) < maxPublishBatch {
			select {
			case req := <-r.publishQueue:
				batch = append(batch, req)
			default:
				break gather
			}
		}
		r.publishBatch(ctx, batch)
		clear(batch)
		batch = batch[:0]
		if r.closed.Load() {
			return
		}
	}
}

// publishBatch sends reqs in one pipeline and hands each its reply. Requests
// whose callers have left are dropped; those with too little time left
// (they waited behind batches that Redis was slow to answer) are failed
// unsent.
func (r *Redis) publishBatch(ctx context.Context, reqs []*publishRequest) {
	now := time.Now()
	var deadline time.Time
	send := reqs[:0]
	for _, req := range reqs {
		select {
		case <-req.gone:
			continue
		default:
		}
		if !req.deadline.IsZero() {
			if req.deadline.Sub(now) < r.publishTimeout/minBatchShare {
				waited := now.Sub(req.deadline.Add(-r.publishTimeout))
				req.reply <- publishReply{err: fmt.Errorf("not sent: waited %v for redis to answer the publications before it", waited.Round(time.Millisecond))}
				continue
			}
			if deadline.IsZero() || req.deadline.Before(deadline) {
				deadline = req.deadline
			}
		}
		send = append(send, req)
	}
	if len(send) == 0 {
		return
	}
	// The batch has until its oldest request's deadline: no reply in that
	// time fails it, whatever the connection's timeouts would allow (a new
	// connection's handshake, then the batch, each within them).
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	cmds := r.pipelinePublishes(ctx, send)
	var again []*publishRequest
	for i, c := range cmds {
		if err := c.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			again = append(again, send[i])
			continue
		}
		send[i].reply <- r.replyOf(ctx, c)
	}
	if len(again) == 0 {
		return
	}
	// The script did not run for these: load it and send them once more.
	if err := r.scripts.publish.Load(ctx, r.client).Err(); err != nil {
		for _, req := range again {
			req.reply <- publishReply{err: fmt.Errorf("load script: %w", r.batchErr(ctx, err))}
		}
		return
	}
	for i, c := range r.pipelinePublishes(ctx, again) {
		again[i].reply <- r.replyOf(ctx, c)
	}
}

// pipelinePublishes runs the publish script for reqs in one pipeline and
// returns the commands, each with its reply or its error.
func (r *Redis) pipelinePublishes(ctx context.Context, reqs []*publishRequest) []*redis.Cmd {
	cmds := make([]*redis.Cmd, len(reqs))
	pipe := r.client.Pipeline()
	for i, req := range reqs {
		cmds[i] = r.scripts.publish.EvalSha(ctx, pipe, req.keys, req.args...)
	}
	// Every command carries its own error; Exec's is the first of them.
	_, _ = pipe.Exec(ctx)
	return cmds
}

// replyOf is the reply of c, of the batch run with ctx.
func (r *Redis) replyOf(ctx context.Context, c *redis.Cmd) publishReply {
	res, err := c.Slice()
	return publishReply{res: res, err: r.batchErr(ctx, err)}
}

// batchErr is err, of the batch run with ctx, unless the batch's deadline
// passed: then it says so, without wrapping context.DeadlineExceeded, since
// the caller's context has not ended.
func (r *Redis) batchErr(ctx context.Context, err error) error {
	var rerr redis.Error
	if err == nil || errors.As(err, &rerr) || !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("no reply within %v (%v)", r.publishTimeout, err)
}

func parsePublish(res []any) (PublishResult, bool) {
	if len(res) == 2 && res[0] == int64(1) {
		first, _ := res[1].(string)
		i := strings.LastIndexByte(first, ':')
		if i < 0 {
			return PublishResult{}, false
		}
		off, err := strconv.ParseUint(first[i+1:], 10, 64)
		return PublishResult{Position: Position{Epoch: first[:i], Offset: off}, Duplicate: true}, err == nil
	}
	if len(res) != 3 {
		return PublishResult{}, false
	}
	epoch, ok1 := res[1].(string)
	off, ok2 := res[2].(int64)
	return PublishResult{Position: Position{Epoch: epoch, Offset: uint64(off)}}, ok1 && ok2 && off > 0
}
