//! The Lua scripts: every step that must be atomic in Redis (an append, a new epoch, age
//! retention, a stream record, a producer's heartbeat, a cancel request, an API key, its
//! charges and spends), and the handles the store invokes them through.

use redis::Script;

use super::keys::Keys;

/// The append script. KEYS: updates, ids, seq, last-ms, epoch. ARGV: id, the update as JSON,
/// now in ms, the most updates to keep (0: no bound), the epoch the node follows, the last seq
/// the node saw given in it. Returns {seq, published_ms}, 0 when the id is taken, or -1 under
/// another epoch or when the seq went back (a reset the node has not noticed yet: it must not
/// give a seq again). Trimming by count happens here, so the history never holds more than
/// the bound.
const APPEND: &str = r"
if redis.call('GET', KEYS[5]) ~= ARGV[5] then return -1 end
if tonumber(redis.call('GET', KEYS[3]) or '0') < tonumber(ARGV[6]) then return -1 end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
local seq = redis.call('INCR', KEYS[3])
local ms = tonumber(ARGV[3])
local last = tonumber(redis.call('GET', KEYS[4]) or '0')
if ms < last then ms = last end
redis.call('SET', KEYS[4], ms)
redis.call('XADD', KEYS[1], seq .. '-0', 'u', ARGV[2], 'ms', ms)
redis.call('HSET', KEYS[2], ARGV[1], seq)
local keep = tonumber(ARGV[4])
if keep > 0 then
  local excess = redis.call('XLEN', KEYS[1]) - keep
  if excess > 0 then
    local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', excess)
    for _, entry in ipairs(old) do
      local fields = entry[2]
      for i = 1, #fields, 2 do
        if fields[i] == 'u' then redis.call('HDEL', KEYS[2], cjson.decode(fields[i + 1]).id) end
      end
      redis.call('XDEL', KEYS[1], entry[1])
    end
  end
end
return {seq, ms}
";

/// A new epoch, when the history was reset. KEYS: epoch. ARGV: the epoch the node followed
/// (empty: none yet), a new random one. Sets the new one if there is none or it is still the
/// one the node followed (its seq went back); returns the epoch in force, which another node
/// may have set first.
const NEW_EPOCH: &str = r"
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return ARGV[2]
end
return current
";

/// Retention by age. KEYS: updates, ids, streams, streams:age, streams:latest. ARGV: the oldest `ms` to keep,
/// the most entries to delete. Returns how many updates it deleted. Stream records older than
/// the oldest kept update (and than ARGV[3]) go too.
pub(super) const EXPIRE: &str = r"
local deleted = 0
local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[2]))
for _, entry in ipairs(old) do
  local fields, ms, id = entry[2], nil, nil
  for i = 1, #fields, 2 do
    if fields[i] == 'ms' then ms = tonumber(fields[i + 1]) end
    if fields[i] == 'u' then id = cjson.decode(fields[i + 1]).id end
  end
  if ms == nil or ms >= tonumber(ARGV[1]) then break end
  redis.call('HDEL', KEYS[2], id)
  redis.call('XDEL', KEYS[1], entry[1])
  deleted = deleted + 1
end
local records = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[3], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(records) do
  local record = redis.call('HGET', KEYS[3], id)
  local key = record and cjson.decode(record).key
  if type(key) == 'string' and redis.call('HGET', KEYS[5], key) == id then
    redis.call('HDEL', KEYS[5], key)
  end
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
end
return deleted
";

/// A stream record, once. KEYS: streams, streams:age, streams:latest. ARGV: id, JSON,
/// created ms, and the record's key (empty: none), whose newest stream it becomes.
const PUT_STREAM: &str = r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], ARGV[4], ARGV[1]) end
return 1
";

/// A node's heartbeat. KEYS: leases, cancels, readers. ARGV: now ms, lease ms, readers ms,
/// the number of owned ids, the owned ids, then the ids read here. Renews the owned leases,
/// records the readers, and returns {ids with a cancel request, owned ids read elsewhere}.
const HEARTBEAT: &str = r"
local now, lease, window, owned = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cancelled, read = {}, {}
for i = 5, 4 + owned do
  local id = ARGV[i]
  redis.call('ZADD', KEYS[1], now + lease, id)
  if redis.call('HEXISTS', KEYS[2], id) == 1 then table.insert(cancelled, id) end
  local seen = tonumber(redis.call('HGET', KEYS[3], id) or '0')
  if seen + window > now then table.insert(read, id) end
end
for i = 5 + owned, #ARGV do
  redis.call('HSET', KEYS[3], ARGV[i], now)
end
return {cancelled, read}
";

/// A cancel request, if a live lease holds the stream. KEYS: leases, cancels. ARGV: id, now.
const REQUEST_CANCEL: &str = r"
local expires = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
if expires < tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], 1)
return 1
";

/// A new API key. KEYS: apikeys, apikeys:names. ARGV: id, name, the record as JSON. Returns
/// 0 when the id is taken or a key not revoked has the name.
const PUT_KEY: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 or redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return 1
";

/// Revokes an API key. KEYS: apikeys, apikeys:names, apikeys:revoked. ARGV: id, now ms.
/// Returns 0 when no key not revoked has the id; frees its name.
const REVOKE_KEY: &str = r"
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record or redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local name = cjson.decode(record).name
if redis.call('HGET', KEYS[2], name) == ARGV[1] then redis.call('HDEL', KEYS[2], name) end
return 1
";

/// Moves a key's window and period forward (never back), in its fields `{id}:{counter}` of
/// the usage hash (KEYS[1]); ARGV[1] is the id, ARGV[2] the minute, ARGV[3] the period.
/// Returns the counters of the current window and period: requests, tokens, period tokens.
const ADVANCE: &str = r"
local function field(name) return ARGV[1] .. ':' .. name end
local now = redis.call('HMGET', KEYS[1], field('minute'), field('minute_requests'),
  field('minute_tokens'), field('period'), field('period_tokens'))
local requests, tokens, spent = tonumber(now[2] or '0'), tonumber(now[3] or '0'), tonumber(now[5] or '0')
if tonumber(ARGV[2]) > tonumber(now[1] or '0') then
  requests, tokens = 0, 0
  redis.call('HSET', KEYS[1], field('minute'), ARGV[2], field('minute_requests'), 0, field('minute_tokens'), 0)
end
if tonumber(ARGV[3]) > tonumber(now[4] or '0') then
  spent = 0
  redis.call('HSET', KEYS[1], field('period'), ARGV[3], field('period_tokens'), 0)
end
";

/// A charge (see `Ledger::charge`). KEYS: usage, apikeys:revoked. ARGV: id, minute, period,
/// requests per minute, tokens per minute, token budget (each -1 for none), whether the key is
/// revocable (1 or 0). Returns 0 (counted), 1, 2 or 3 (at the requests, tokens or budget
/// limit) or -1 (revoked).
const CHARGE: &str = r"
if ARGV[7] == '1' and redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return -1 end
ADVANCE
local function at(limit, used) return limit >= 0 and used >= limit end
if at(tonumber(ARGV[4]), requests) then return 1 end
if at(tonumber(ARGV[5]), tokens) then return 2 end
if at(tonumber(ARGV[6]), spent) then return 3 end
redis.call('HINCRBY', KEYS[1], field('requests'), 1)
redis.call('HINCRBY', KEYS[1], field('minute_requests'), 1)
return 0
";

/// A spend (see `Ledger::spend`). KEYS: usage. ARGV: id, minute, period, prompt tokens,
/// completion tokens, whether the answer was cancelled (1 or 0).
const SPEND: &str = r"
ADVANCE
local prompt, completion = tonumber(ARGV[4]), tonumber(ARGV[5])
local tokens = prompt + completion
redis.call('HINCRBY', KEYS[1], field('prompt_tokens'), prompt)
redis.call('HINCRBY', KEYS[1], field('completion_tokens'), completion)
redis.call('HINCRBY', KEYS[1], field('minute_tokens'), tokens)
redis.call('HINCRBY', KEYS[1], field('period_tokens'), tokens)
if ARGV[6] == '1' then
  redis.call('HINCRBY', KEYS[1], field('cancelled'), 1)
  redis.call('HINCRBY', KEYS[1], field('cancelled_tokens'), tokens)
end
return 1
";

/// The scripts a store runs, each hashed once (Redis caches them by hash).
pub(super) struct Scripts {
    pub(super) append: Script,
    pub(super) put_stream: Script,
    pub(super) heartbeat: Script,
    pub(super) request_cancel: Script,
    pub(super) put_key: Script,
    pub(super) revoke_key: Script,
    pub(super) charge: Script,
    pub(super) spend: Script,
}

impl Scripts {
    /// The store's scripts.
    pub(super) fn new() -> Scripts {
        Scripts {
            append: Script::new(APPEND),
            put_stream: Script::new(PUT_STREAM),
            heartbeat: Script::new(HEARTBEAT),
            request_cancel: Script::new(REQUEST_CANCEL),
            put_key: Script::new(PUT_KEY),
            revoke_key: Script::new(REVOKE_KEY),
            charge: Script::new(&CHARGE.replace("ADVANCE", ADVANCE)),
            spend: Script::new(&SPEND.replace("ADVANCE", ADVANCE)),
        }
    }
}

/// Sets a new random epoch if the one `known` (empty: none) is still in force or none is, and
/// returns the epoch in force (see [`NEW_EPOCH`]).
pub(super) async fn new_epoch(
    connection: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    known: &str,
) -> redis::RedisResult<String> {
    let candidate = uuid::Uuid::new_v4().simple().to_string();
    Script::new(NEW_EPOCH).key(&keys.epoch).arg(known).arg(candidate).invoke_async(connection).await
}
