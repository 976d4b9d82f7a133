package client

// QueueLen returns how many events wait in c's queue for the application.
func QueueLen(c *Client) int { return c.queueLen() }

// Paused reports whether c has paused room.
func Paused(c *Client, room string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.subs[room]
	return s != nil && s.paused
}

// RefreshDelay and TokenExpiry schedule token refreshes.
var (
	RefreshDelay = refreshDelay
	TokenExpiry  = tokenExpiry
)
