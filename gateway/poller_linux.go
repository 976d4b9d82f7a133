//go:build linux

package gateway

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// epollPoller is the poller on Linux: one epoll set that holds every idle
// WebSocket connection, and one goroutine that waits on it. The two
// processes' pollers (Go's runtime netpoller and this one) watch the same
// sockets: Go's for the reads and writes that run, this one for the idle.
type epollPoller struct {
	srv  *Server
	epfd int
	// wake is an eventfd in the set; a write to it ends wait.
	wake int

	mu       sync.Mutex
	sessions map[uint64]*session
	next     uint64

	// epMu orders arm's use of epfd with close: arm holds it to read,
	// close to write.
	epMu     sync.RWMutex
	epClosed bool

	// slots bounds the readers running at once (Config.MaxReaders).
	slots chan struct{}
	done  chan struct{} // closed when wait has returned
}

// readerDetach is how long a reader counts against Config.MaxReaders.
const readerDetach = 100 * time.Millisecond

// wakeToken is the epoll data of the eventfd; sessions' tokens start at 1.
const wakeToken = 0

// pollEvents are the events a connection is armed for: readable, or hung
// up (which reads as EOF). One-shot: the event disarms it until arm.
const pollEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

func newPoller(srv *Server) (poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setToken(&ev, wakeToken)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(wake)
		unix.Close(epfd)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	p := &epollPoller{
		srv:      srv,
		epfd:     epfd,
		wake:     wake,
		sessions: make(map[uint64]*session),
		slots:    make(chan struct{}, srv.cfg.MaxReaders),
		done:     make(chan struct{}),
	}
	srv.goroutines.Add(1)
	go p.wait()
	return p, nil
}

// setToken and token store a session's token in an event's data.
func setToken(ev *unix.EpollEvent, t uint64) {
	ev.Fd = int32(t)
	ev.Pad = int32(t >> 32)
}

func token(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// wait is the poller's goroutine: it starts a reader for each connection
// that becomes readable, waiting for a free slot when MaxReaders run.
func (p *epollPoller) wait() {
	defer p.srv.goroutines.Done()
	defer close(p.done)
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			p.srv.log.Error("epoll_wait failed; WebSocket sessions are no longer read", "err", err)
			return
		}
		for i := range n {
			t := token(&events[i])
			if t == wakeToken {
				return
			}
			p.mu.Lock()
			s := p.sessions[t]
			p.mu.Unlock()
			if s == nil || !s.poll.state.CompareAndSwap(readerPolled, readerRunning) {
				continue
			}
			p.slots <- struct{}{}
			p.srv.metrics.readers.Inc()
			p.srv.goroutines.Add(1)
			go func() {
				defer p.srv.goroutines.Done()
				var once sync.Once
				free := func() { once.Do(func() { <-p.slots }) }
				// A reader still busy after readerDetach (a command
				// waiting on the bus, a client that does not read its
				// replies, half a frame) leaves the bound, so that no
				// number of slow sessions stalls the reading of the
				// others.
				detach := time.AfterFunc(readerDetach, free)
				defer func() {
					detach.Stop()
					free()
					p.srv.metrics.readers.Dec()
				}()
				s.readable()
			}()
		}
	}
}

// add names s to the poller.
func (p *epollPoller) add(s *session) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.next++
	s.poll.token = p.next
	p.sessions[s.poll.token] = s
	p.srv.metrics.polled[s.transport].Inc()
}

// arm gives s's connection to the poller until it becomes readable once. It
// fails when the connection is closed.
func (p *epollPoller) arm(s *session) error {
	// Held across epoll_ctl, so that close cannot release the epoll
	// descriptor (whose number another epoll set could then take) under it.
	p.epMu.RLock()
	defer p.epMu.RUnlock()
	if p.epClosed {
		return errors.New("poller closed")
	}
	t := s.poll.token
	raw, err := s.poll.tcp.SyscallConn()
	if err != nil {
		return err
	}
	var ctlErr error
	// Control holds the descriptor open while the callback runs, so a
	// connection that closes meanwhile cannot lend its number to another.
	err = raw.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: pollEvents}
		setToken(&ev, t)
		ctlErr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev)
		if errors.Is(ctlErr, unix.ENOENT) {
			ctlErr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
		}
	})
	if err != nil {
		return err
	}
	return ctlErr
}

// forget drops a finished session; its descriptor left the epoll set when
// it closed.
func (p *epollPoller) forget(s *session) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.sessions[s.poll.token]; ok {
		delete(p.sessions, s.poll.token)
		p.srv.metrics.polled[s.transport].Dec()
	}
}

// close stops the poller's goroutine and releases its descriptors. Sessions
// still in it must have been closed first: Shutdown closes them all.
func (p *epollPoller) close() {
	p.epMu.Lock()
	if p.epClosed {
		p.epMu.Unlock()
		return
	}
	p.epClosed = true // arm no longer touches epfd
	p.epMu.Unlock()
	var one = [8]byte{1}
	unix.Write(p.wake, one[:])
	<-p.done
	// Arms under way when epClosed was set hold epMu to read.
	p.epMu.Lock()
	unix.Close(p.wake)
	unix.Close(p.epfd)
	p.epMu.Unlock()
}
