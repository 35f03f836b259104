//! The Lua scripts of the job queue.
//!
//! Each one is a step that must not be seen half done by another node: an enqueue must not
//! leave a stream entry without its job hash, a claim must not count a delivery without
//! taking the run lock, a finish must not acknowledge an entry whose result was not stored.
//! Redis runs a script as one command, so these hold across any number of nodes. Times come
//! from Redis's own clock (`TIME`), the one clock every node shares.

use std::sync::LazyLock;

use redis::Script;

/// KEYS: idempotency key (or any key when unused), sample, job hash, stream.
/// ARGV: use idempotency ("1"/"0"), job id, retention ms, sample ttl ms, spec JSON,
/// record JSON, sample bytes.
/// Answers `{created (1/0), job id}`: with an idempotency key already used, the job it made.
pub static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if ARGV[1] == '1' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return {0, existing} end
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
if not redis.call('SET', KEYS[2], ARGV[7], 'NX', 'PX', ARGV[4]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
redis.call('HSET', KEYS[3], 'spec', ARGV[5], 'record', ARGV[6], 'status', 'pending',
  'deliveries', 0, 'runs', 0)
redis.call('XADD', KEYS[4], '*', 'id', ARGV[2])
return {1, ARGV[2]}
"#,
    )
});

/// KEYS: job hash, run lock. ARGV: consumer, lease ms, max deliveries.
/// Answers `{verdict, deliveries, spec, record, last error}` where verdict is `run`,
/// `missing` (the job hash is gone), `finished` (a result is stored: never run twice),
/// `locked` (another live worker runs it) or `exhausted` (past the delivery limit).
pub static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local spec = redis.call('HGET', KEYS[1], 'spec')
if not spec then return {'missing', '0', '', '', ''} end
if redis.call('HEXISTS', KEYS[1], 'finished') == 1 then
  return {'finished', '0', '', '', ''}
end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {'locked', '0', '', '', holder} end
local deliveries = redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
local record = redis.call('HGET', KEYS[1], 'record') or ''
local last = redis.call('HGET', KEYS[1], 'lastError') or ''
if deliveries > tonumber(ARGV[3]) then
  return {'exhausted', tostring(deliveries), spec, record, last}
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'runs', 1)
redis.call('HSET', KEYS[1], 'status', 'processing', 'worker', ARGV[1])
return {'run', tostring(deliveries), spec, record, last}
"#,
    )
});

/// KEYS: job hash, run lock, stream, dead-letter stream.
/// ARGV: entry id, group, record JSON, status, retention ms, events channel, event JSON,
/// consumer, dead-letter reason ('' for none), deliveries, dead-letter length, job id.
/// Stores the final record (first finisher only), publishes the final event with it,
/// dead-letters when asked, releases the lock, acknowledges and deletes the entry.
/// Answers 1 when this call finished the job, 0 when it was already finished.
pub static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local first = 0
if redis.call('HEXISTS', KEYS[1], 'spec') == 1 then
  first = redis.call('HSETNX', KEYS[1], 'finished', '1')
  if first == 1 then
    redis.call('HSET', KEYS[1], 'record', ARGV[3], 'status', ARGV[4])
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
    if ARGV[9] ~= '' then
      redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[11], '*', 'id', ARGV[12],
        'reason', ARGV[9], 'deliveries', ARGV[10])
    end
    redis.call('PUBLISH', ARGV[6], ARGV[7])
  end
end
if redis.call('GET', KEYS[2]) == ARGV[8] then redis.call('DEL', KEYS[2]) end
if ARGV[1] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[2], ARGV[1])
  redis.call('XDEL', KEYS[3], ARGV[1])
end
return first
"#,
    )
});

/// KEYS: job hash, run lock, stream, delayed set.
/// ARGV: entry id, group, delay ms, job id, consumer, error text, count the delivery (1/0).
/// Moves a job from the stream to the delayed set in one step, so it is never in neither.
pub static RETRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HEXISTS', KEYS[1], 'finished') == 0 and
   redis.call('HEXISTS', KEYS[1], 'spec') == 1 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[3]), ARGV[4])
  redis.call('HSET', KEYS[1], 'status', 'pending', 'lastError', ARGV[6])
  if ARGV[7] == '0' then redis.call('HINCRBY', KEYS[1], 'deliveries', -1) end
end
if redis.call('GET', KEYS[2]) == ARGV[5] then redis.call('DEL', KEYS[2]) end
redis.call('XACK', KEYS[3], ARGV[2], ARGV[1])
redis.call('XDEL', KEYS[3], ARGV[1])
return 1
"#,
    )
});

/// KEYS: delayed set, stream. ARGV: most jobs to move.
/// Moves jobs whose retry is due back onto the stream; answers how many.
pub static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'id', id)
  redis.call('ZREM', KEYS[1], id)
end
return #due
"#,
    )
});

/// KEYS: run lock. ARGV: consumer, lease ms. Extends the lock only while this consumer holds it.
pub static EXTEND_LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#,
    )
});
