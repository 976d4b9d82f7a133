package fanout

import (
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// The Redis bus keeps everything under keyPrefix. Every key and the channel
// of a room carry the room as a hash tag, {room}, so that a room lives in one
// Redis Cluster slot and one script can touch all of it:
//
//	parley:{room}            the room's channel: messages and presence events
//	parley:{room}:m          hash: epoch, offset (outlives the history)
//	parley:{room}:h          stream of the history, entry ids <offset>-0,
//	                         fields data, from, time (Unix ns, Redis's clock)
//	parley:{room}:k:<key>    an idempotency key: "<epoch>:<offset>"
//	parley:{room}:p          hash: session -> member (encodeMember)
//	parley:{room}:pe         sorted set: session -> lease expiry (Unix ms)
//	parley:{room}:pl         sorted set: session at score 0, for pages in
//	                         session order (ZRANGEBYLEX)
//	parley:s:{session}       a session's address for Send: the registration
//	                         holding it (sessionAddr), or "" once released
//	parley:s:{session}:mb    list: what Post holds for a session that no live
//	                         node took, oldest first, until Claim empties it
//	                         or its TTL (reset by each Post) passes
//	parley:node:<node>       a node's channel: what Send addresses to it, and
//	                         word between nodes about sessions that moved
//	                         (parley:node:{<node>} in a cluster)
//	parley:nodes             hash: node life -> the live node's id, URL,
//	                         start and last-seen times (redis_nodes.go)
//
// Room names have no braces (PROTOCOL.md), so no two rooms' keys meet.
// Redis's clock times everything stored, so nodes' clocks need not agree.
const keyPrefix = "parley:"

// roomChannel is the room's channel, and the prefix of its keys.
func roomChannel(room string) string { return keyPrefix + "{" + room + "}" }

func roomKeys(room string) (meta, hist string) {
	c := roomChannel(room)
	return c + ":m", c + ":h"
}

func keyKey(room, key string) string { return roomChannel(room) + ":k:" + key }

func presenceKeys(room string) []string {
	c := roomChannel(room)
	return []string{c + ":p", c + ":pe", c + ":pl"}
}

func sessionKey(session string) string { return keyPrefix + "s:{" + session + "}" }

// mailboxKey is session's mailbox, in the hash slot of its address so that
// one script can take both.
func mailboxKey(session string) string { return sessionKey(session) + ":mb" }

// nodeChannelPrefix, followed by a node id, is that node's channel.
const nodeChannelPrefix = keyPrefix + "node:"

// nodeChannel is node's channel; in a cluster its hash tag is the node.
func nodeChannel(cluster bool, node string) string {
	if cluster {
		return nodeChannelPrefix + "{" + node + "}"
	}
	return nodeChannelPrefix + node
}

// luaCommon is the start of every presence script: the time from Redis's
// clock, integer formatting for arguments, reaping of lapsed leases (a leave
// event for each) and the presence keys' expiry, which follows the last
// lease.
const luaCommon = `
local function int(x) return string.format('%d', x) end
local function now_ms()
	local t = redis.call('TIME')
	return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function reap(p, pe, pl, ch, now)
	local dead = redis.call('ZRANGEBYSCORE', pe, '-inf', '(' .. int(now))
	for i = 1, #dead do
		local s = dead[i]
		local v = redis.call('HGET', p, s)
		redis.call('HDEL', p, s)
		redis.call('ZREM', pl, s)
		if v then redis.call('PUBLISH', ch, 'l' .. v) end
	end
	if #dead > 0 then redis.call('ZREMRANGEBYSCORE', pe, '-inf', '(' .. int(now)) end
	return #dead
end
local function keep(p, pe, pl, ttl)
	local last = redis.call('ZRANGE', pe, -1, -1, 'WITHSCORES')
	if #last == 0 then
		redis.call('DEL', p, pe, pl)
		return
	end
	local at = int(tonumber(last[2]) + ttl)
	redis.call('PEXPIREAT', p, at)
	redis.call('PEXPIREAT', pe, at)
	redis.call('PEXPIREAT', pl, at)
end
local p, pe, pl = KEYS[1], KEYS[2], KEYS[3]
local ch, ttl = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
`

// publishLua appends a message and publishes it, or answers a repeated
// idempotency key with the first publication's position.
//
// KEYS: meta, history[, key]. ARGV: epoch for a room without one, data,
// from, history size, history TTL ms, meta TTL ms, key TTL ms, channel.
// Returns {0, epoch, offset}, or {1, "<epoch>:<offset>"} for a repeat.
//
// A room without meta (new, or Redis lost it) starts in the given epoch with
// an empty history. The payload published is
// m<epoch>:<offset>:<time ns>:<len(from)>:<from><data>.
const publishLua = (`
local meta, hist = KEYS[1], KEYS[2]
if #KEYS > 2 then
	local first = redis.call('GET', KEYS[3])
	if first then return {1, first} end
end
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
	epoch = ARGV[1]
	redis.call('HSET', meta, 'epoch', epoch)
	redis.call('DEL', hist)
end
local id = string.format('%d', redis.call('HINCRBY', meta, 'offset', 1))
local t = redis.call('TIME')
local ts = t[1] .. string.format('%06d', tonumber(t[2])) .. '000'
local data, from = ARGV[2], ARGV[3]
redis.call('XADD', hist, 'MAXLEN', ARGV[4], id .. '-0', 'data', data, 'from', from, 'time', ts)
redis.call('PEXPIRE', hist, ARGV[5])
redis.call('PEXPIRE', meta, ARGV[6])
if #KEYS > 2 then redis.call('SET', KEYS[3], epoch .. ':' .. id, 'PX', ARGV[7]) end
redis.call('PUBLISH', ARGV[8], 'm' .. epoch .. ':' .. id .. ':' .. ts .. ':' .. #from .. ':' .. from .. data)
return {0, epoch, tonumber(id)}
`)

// historyScript reads a room's position and history. A room without meta
// gets one, in the given epoch, so that its position always has an epoch.
// Messages older than the history TTL count as gone.
//
// KEYS: meta, history. ARGV: epoch for a room without one, history TTL ms,
// TTL ms of meta made here, "1" when since is given, since epoch, since
// offset, limit, "1" when since is a position the node delivered (a top
// below it in its epoch then moves the room to the given epoch). Returns {epoch, top, recovered 0/1, then id, time, from,
// data per message, oldest first}.
var historyScript = redis.NewScript(`
local meta, hist = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
	epoch = ARGV[1]
	redis.call('HSET', meta, 'epoch', epoch)
	redis.call('PEXPIRE', meta, ARGV[3])
	redis.call('DEL', hist)
end
local top = tonumber(redis.call('HGET', meta, 'offset') or '0')
local t = redis.call('TIME')
local cutoff = tonumber(t[1]) * 1e9 + tonumber(t[2]) * 1e3 - tonumber(ARGV[2]) * 1e6
local limit = tonumber(ARGV[7])
local out = {epoch, top, 0}
local function add(e)
	local f = e[2]
	local data, from, ts = '', '', '0'
	for i = 1, #f, 2 do
		if f[i] == 'data' then data = f[i + 1]
		elseif f[i] == 'from' then from = f[i + 1]
		elseif f[i] == 'time' then ts = f[i + 1] end
	end
	if tonumber(ts) < cutoff then return false end
	out[#out + 1] = e[1]
	out[#out + 1] = ts
	out[#out + 1] = from
	out[#out + 1] = data
	return true
end
if ARGV[4] == '1' then
	local since = tonumber(ARGV[6])
	if ARGV[5] == epoch and since > top and ARGV[8] == '1' then
		-- A node delivered past the top: Redis lost acknowledged messages
		-- and would number new ones with used offsets. A new epoch.
		epoch = ARGV[1]
		redis.call('HSET', meta, 'epoch', epoch)
		out[1] = epoch
		return out
	end
	if ARGV[5] ~= epoch or since > top then return out end
	if since == top then
		out[3] = 1
		return out
	end
	local first = string.format('%d', since + 1) .. '-0'
	local r
	if limit > 0 then
		r = redis.call('XRANGE', hist, first, '+', 'COUNT', limit)
	else
		r = redis.call('XRANGE', hist, first, '+')
	end
	if #r == 0 or r[1][1] ~= first or not add(r[1]) then return out end
	out[3] = 1
	for i = 2, #r do add(r[i]) end
	return out
end
if limit <= 0 then return out end
local r = redis.call('XREVRANGE', hist, '+', '-', 'COUNT', limit)
for i = #r, 1, -1 do add(r[i]) end
return out
`)

// joinLua joins a member, publishing a join event when it is new.
//
// KEYS: presence keys. ARGV: channel, lease ms, session, member, max, "1"
// to list the others, and a session prefix that a present member must have
// ("" for none). Returns {1, members...} (the other members, in session
// order, when listed), {0} when max refuses the member, or {2} when no
// member has the prefix.
const joinLua = (luaCommon + `
local s, v = ARGV[3], ARGV[4]
local max, list, after = tonumber(ARGV[5]), ARGV[6] == '1', ARGV[7]
reap(p, pe, pl, ch, now)
if after ~= '' then
	local first = redis.call('ZRANGEBYLEX', pl, '[' .. after, '+', 'LIMIT', 0, 1)
	if #first == 0 or string.sub(first[1], 1, #after) ~= after then return {2} end
end
local known = redis.call('HEXISTS', p, s) == 1
local out = {1}
if list then
	local ss = redis.call('ZRANGE', pl, 0, -1)
	local n = #ss
	if known then n = n - 1 end
	if max > 0 and n >= max then return {0} end
	for i = 1, #ss do
		if ss[i] ~= s then out[#out + 1] = redis.call('HGET', p, ss[i]) end
	end
end
redis.call('HSET', p, s, v)
redis.call('ZADD', pe, int(now + ttl), s)
redis.call('ZADD', pl, 0, s)
if not known then redis.call('PUBLISH', ch, 'j' .. v) end
keep(p, pe, pl, ttl)
return out
`)

// leaveLua removes a member, publishing a leave event when it was there.
//
// KEYS: presence keys. ARGV: channel, lease ms, session.
const leaveLua = (luaCommon + `
local n = reap(p, pe, pl, ch, now)
local v = redis.call('HGET', p, ARGV[3])
if v then
	redis.call('HDEL', p, ARGV[3])
	redis.call('ZREM', pe, ARGV[3])
	redis.call('ZREM', pl, ARGV[3])
	redis.call('PUBLISH', ch, 'l' .. v)
end
if v or n > 0 then keep(p, pe, pl, ttl) end
return 0
`)

// renewLua renews the leases of one node's members of a room, adding
// back (with a join event) any that the room lost, then reaps lapsed ones:
// renewing first, so that a live node's members whose leases lapsed while
// Redis was out of reach (and kept its data) are renewed, not reaped and
// added back with a leave and a join.
//
// KEYS: presence keys. ARGV: channel, lease ms, "1" to reap, then session,
// member pairs. Returns how many members the room has left.
const renewLua = (luaCommon + `
local lease = int(now + ttl)
for i = 4, #ARGV, 2 do
	local s, v = ARGV[i], ARGV[i + 1]
	if redis.call('HSETNX', p, s, v) == 1 then
		redis.call('ZADD', pl, 0, s)
		redis.call('PUBLISH', ch, 'j' .. v)
	end
	redis.call('ZADD', pe, lease, s)
end
local n = 0
if ARGV[3] == '1' then n = reap(p, pe, pl, ch, now) end
if #ARGV > 3 or n > 0 then keep(p, pe, pl, ttl) end
return redis.call('ZCARD', pe)
`)

// presenceLua reaps, then reads one page of members.
//
// KEYS: presence keys. ARGV: channel, lease ms, the session the page starts
// after ("" for the first page), limit. Returns {total, 1 if more follow,
// then session, member per member}.
const presenceLua = (luaCommon + `
local after, limit = ARGV[3], tonumber(ARGV[4])
if reap(p, pe, pl, ch, now) > 0 then keep(p, pe, pl, ttl) end
local min = '-'
if after ~= '' then min = '(' .. after end
local ss = redis.call('ZRANGEBYLEX', pl, min, '+', 'LIMIT', 0, limit + 1)
local n, more = #ss, 0
if n > limit then n, more = limit, 1 end
local out = {redis.call('ZCARD', pl), more}
for i = 1, n do
	out[#out + 1] = ss[i]
	out[#out + 1] = redis.call('HGET', p, ss[i])
end
return out
`)

// A session's address is the registration that holds it, sessionAddr: the
// node id, length-prefixed, then a token of that Register call, so that a
// node tells its registration from an older or newer one of the same
// session. "" is an address released (Unregister): no node holds it, and a
// renewal in flight or a node that missed being told it was replaced does
// not take it back.
//
// luaAddr parses an address: addr_node returns its node, or nil for none.
const luaAddr = `
local function addr_node(a)
	if not a then return nil end
	local n = string.match(a, '^(%d+):')
	if not n then return nil end
	return string.sub(a, #n + 2, #n + 1 + tonumber(n))
end
`

// roomScripts are the scripts that publish on a room's channel: with
// PUBLISH on a single Redis, with SPUBLISH in a cluster.
type roomScripts struct{ publish, join, leave, renew, presence *redis.Script }

func newRoomScripts(publish string) *roomScripts {
	s := func(src string) *redis.Script {
		return redis.NewScript(strings.ReplaceAll(src, "'PUBLISH'", "'"+publish+"'"))
	}
	return &roomScripts{s(publishLua), s(joinLua), s(leaveLua), s(renewLua), s(presenceLua)}
}

var singleScripts, clusterScripts = newRoomScripts("PUBLISH"), newRoomScripts("SPUBLISH")

// sendScript publishes a payload on the channel of the node that holds a
// session. KEYS: the session's address. ARGV: node channel prefix, payload.
// Returns how many connections got it: 0 when no node holds the session, or
// the node that does is not connected (it died, and its lease has not
// lapsed yet).
var sendScript = redis.NewScript(luaAddr + `
local node = addr_node(redis.call('GET', KEYS[1]))
if not node then return 0 end
return redis.call('PUBLISH', ARGV[1] .. node, ARGV[2])
`)

// What postScript returns.
const (
	postDelivered = 0 // published to a connected node
	postHeld      = 1 // added to the mailbox
	postFull      = 2 // refused: the mailbox holds max already
	postMoved     = 3 // holdScript: the address changed meanwhile
)

// postScript publishes a payload as sendScript does or, when that reaches
// no connection, adds its data to the session's mailbox and sets the
// mailbox to expire ttl later.
//
// KEYS: the session's address, its mailbox. ARGV: node channel prefix, the
// payload without its data (encodeSend), the data, max, ttl ms. Returns
// postDelivered, postHeld or postFull.
var postScript = redis.NewScript(luaAddr + `
local node = addr_node(redis.call('GET', KEYS[1]))
if node and redis.call('PUBLISH', ARGV[1] .. node, ARGV[2] .. ARGV[3]) > 0 then return 0 end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[4]) then return 2 end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
`)

// luaTake is the start of the scripts that take a session's address for a
// registration, whoever held it: the newest Register or Claim wins. take
// sets the address and tells a registration of another node that it
// replaces, on that node's channel (the payload is the given prefix then
// the replaced address), so that the node stops delivering locally. It
// returns how many connections got word of the replacement: 0 when none
// was due, or the node it was due to is not connected.
//
// KEYS[1]: the session's address. ARGV: the registration's address, lease
// ms, this node's id, node channel prefix, payload prefix.
const luaTake = luaAddr + `
local function take()
	local prev = redis.call('GET', KEYS[1])
	redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
	if prev and prev ~= ARGV[1] then
		local node = addr_node(prev)
		if node and node ~= ARGV[3] then
			return redis.call('PUBLISH', ARGV[4] .. node, ARGV[5] .. prev)
		end
	end
	return 0
end
`

// registerScript takes a session's address (luaTake). KEYS and ARGV are
// take's; it returns take's count.
var registerScript = redis.NewScript(luaTake + `
return take()
`)

// claimScript takes a session's address (luaTake) and empties its mailbox,
// in one step: a Post runs before it, and its data is held and returned
// here, or after it, and goes to the registration.
//
// KEYS: the session's address, its mailbox. ARGV: take's. Returns {take's
// count, then the data the mailbox held, oldest first}.
var claimScript = redis.NewScript(luaTake + luaClaim)

// luaClaim is the end of the claim scripts: take's answer, then what the
// mailbox held.
const luaClaim = `
local out = {take()}
local held = redis.call('LRANGE', KEYS[2], 0, -1)
if #held > 0 then redis.call('DEL', KEYS[2]) end
for i = 1, #held do out[#out + 1] = held[i] end
return out
`

// In a cluster, a node's channel is in another slot than the session's
// address, which one script cannot both touch: the take scripts there
// return the address they replaced (when another node's), whose node the
// bus then tells, and Post holds data with holdScript when the publication
// it made after reading the address reached nobody.
//
// luaTakeCluster is luaTake without the word to the replaced node: take
// returns the replaced address, or "" when none is due word.
const luaTakeCluster = luaAddr + `
local function take()
	local prev = redis.call('GET', KEYS[1])
	redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
	if prev and prev ~= ARGV[1] then
		local node = addr_node(prev)
		if node and node ~= ARGV[3] then return prev end
	end
	return ''
end
`

// registerClusterScript and claimClusterScript are registerScript and
// claimScript with luaTakeCluster's take.
var (
	registerClusterScript = redis.NewScript(luaTakeCluster + `
return take()
`)
	claimClusterScript = redis.NewScript(luaTakeCluster + luaClaim)
)

// holdScript adds data to a session's mailbox, as postScript does when its
// publication reaches nobody, provided that the session's address is still
// the one the publication went to (postMoved otherwise).
//
// KEYS: the session's address, its mailbox. ARGV: the address ("" for
// none), the data, max, ttl ms. Returns postHeld, postFull or postMoved.
var holdScript = redis.NewScript(`
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 3 end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[3]) then return 2 end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
`)

// renewAddrScript renews a registration's address while the registration
// holds it, and sets it again when Redis lost it (a restart, or a lease that
// lapsed while this node was cut off). An address that another registration
// holds, or that was released, stays so.
//
// KEYS: the session's address. ARGV: the registration's address, lease ms.
// Returns 1, or 0 when the registration no longer holds the address.
var renewAddrScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`)

// releaseScript releases a session's address if a registration of this node
// holds it, leaving "" for the lease's time.
//
// KEYS: the session's address. ARGV: node id, lease ms.
var releaseScript = redis.NewScript(luaAddr + `
if addr_node(redis.call('GET', KEYS[1])) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], '', 'PX', ARGV[2])
return 1
`)

// appendField appends s length-prefixed: <len>:<s>.
func appendField(b []byte, s string) []byte {
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, ':')
	return append(b, s...)
}

// cutField reads a field that appendField wrote from the start of s.
func cutField(s string) (field, rest string, ok bool) {
	i := strings.IndexByte(s, ':')
	if i <= 0 {
		return "", "", false
	}
	n, err := strconv.Atoi(s[:i])
	if err != nil || n < 0 || n > len(s)-i-1 {
		return "", "", false
	}
	return s[i+1 : i+1+n], s[i+1+n:], true
}

// cutUint reads a decimal number ended by ':'.
func cutUint(s string) (uint64, string, bool) {
	i := strings.IndexByte(s, ':')
	if i <= 0 {
		return 0, "", false
	}
	n, err := strconv.ParseUint(s[:i], 10, 64)
	return n, s[i+1:], err == nil
}

// encodeMember is a member as presence keeps it: user, session and node,
// each length-prefixed.
func encodeMember(m Member) string {
	b := make([]byte, 0, len(m.User)+len(m.Session)+len(m.Node)+12)
	b = appendField(b, m.User)
	b = appendField(b, m.Session)
	return string(appendField(b, m.Node))
}

func decodeMember(s string) (Member, bool) {
	var m Member
	var ok bool
	if m.User, s, ok = cutField(s); !ok {
		return Member{}, false
	}
	if m.Session, s, ok = cutField(s); !ok {
		return Member{}, false
	}
	if m.Node, s, ok = cutField(s); !ok || s != "" {
		return Member{}, false
	}
	return m, true
}

// decodeMessage decodes a message payload (see publishLua), without its
// leading 'm'.
func decodeMessage(room, s string) (*Message, bool) {
	i := strings.IndexByte(s, ':')
	if i <= 0 {
		return nil, false
	}
	m := &Message{Room: room, Epoch: s[:i]}
	s = s[i+1:]
	var t uint64
	var ok bool
	if m.Offset, s, ok = cutUint(s); !ok {
		return nil, false
	}
	if t, s, ok = cutUint(s); !ok {
		return nil, false
	}
	m.Time = int64(t)
	if m.From, s, ok = cutField(s); !ok {
		return nil, false
	}
	m.Data = []byte(s)
	return m, true
}

// What a node's channel carries: a payload that Send addressed to a session
// there; word that a registration there was replaced (registerScript); and
// the answer to that word, that the node has let go of the session.
const (
	nodeSend     = 's'
	nodeReplaced = 'x'
	nodeLetGo    = 'k'
)

// encodeSend is what Send publishes on a node's channel: nodeSend, the
// session, length-prefixed, then the data.
func encodeSend(session string, data []byte) []byte {
	b := make([]byte, 0, len(session)+len(data)+9)
	b = append(b, nodeSend)
	return append(appendField(b, session), data...)
}

func decodeSend(s string) (session string, data []byte, ok bool) {
	if s == "" || s[0] != nodeSend {
		return "", nil, false
	}
	session, rest, ok := cutField(s[1:])
	if !ok {
		return "", nil, false
	}
	return session, []byte(rest), true
}

// replacedPrefix starts what registerScript publishes when the registration
// of session at addr replaces another node's: nodeReplaced, the session and
// addr, length-prefixed, then (added by the script) the replaced address.
func replacedPrefix(session, addr string) string {
	b := make([]byte, 0, len(session)+len(addr)+16)
	b = append(b, nodeReplaced)
	return string(appendField(appendField(b, session), addr))
}

func decodeReplaced(s string) (session, addr, replaced string, ok bool) {
	if s == "" || s[0] != nodeReplaced {
		return "", "", "", false
	}
	if session, s, ok = cutField(s[1:]); !ok {
		return "", "", "", false
	}
	if addr, replaced, ok = cutField(s); !ok {
		return "", "", "", false
	}
	return session, addr, replaced, true
}

// sessionAddr is the address of a registration: the node id, length-prefixed
// so that the scripts can read it back, then token.
func sessionAddr(node, token string) string {
	return string(appendField(make([]byte, 0, len(node)+len(token)+4), node)) + token
}

// addrNode returns the node of a sessionAddr.
func addrNode(addr string) (string, bool) {
	node, _, ok := cutField(addr)
	return node, ok
}
