//! The Lua scripts of the job queue.
//!
//! Claims and finishes work on batches: one call settles every job a worker has ready, so
//! Redis pays one script call per batch rather than per job.
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

/// Claims a batch of deliveries. KEYS: job hash and run lock of each job, in pairs.
/// ARGV: consumer, lease ms, max deliveries.
/// Answers five values per job: verdict, deliveries, spec, record, last error. The verdict
/// is `run`, `missing` (the job hash is gone), `finished` (a result is stored: never run
/// twice), `locked` (another live worker runs it) or `exhausted` (past the delivery limit).
pub static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
local function answer(...)
  for _, v in ipairs({...}) do out[#out + 1] = v end
end
for i = 1, #KEYS / 2 do
  local job, lock = KEYS[2 * i - 1], KEYS[2 * i]
  local h = redis.call('HMGET', job, 'spec', 'finished', 'record', 'lastError')
  local spec = h[1]
  if not spec then
    answer('missing', '0', '', '', '')
  elseif h[2] then
    answer('finished', '0', '', '', '')
  else
    local holder = redis.call('GET', lock)
    if holder and holder ~= ARGV[1] then
      answer('locked', '0', '', '', holder)
    else
      local deliveries = redis.call('HINCRBY', job, 'deliveries', 1)
      local record = h[3] or ''
      local last = h[4] or ''
      if deliveries > tonumber(ARGV[3]) then
        answer('exhausted', tostring(deliveries), spec, record, last)
      else
        redis.call('SET', lock, ARGV[1], 'PX', ARGV[2])
        redis.call('HINCRBY', job, 'runs', 1)
        redis.call('HSET', job, 'status', 'processing', 'worker', ARGV[1])
        answer('run', tostring(deliveries), spec, record, last)
      end
    end
  end
end
return out
"#,
    )
});

/// Settles a batch of finished jobs. KEYS: stream, dead-letter stream, then the job hash and
/// run lock of each job, in pairs. ARGV: group, retention ms, events channel, consumer,
/// dead-letter length, then seven per job: entry id ('' for none), record JSON, status, final
/// event JSON, dead-letter reason ('' for none), deliveries, job id.
/// For each job, the first finisher stores the record (with its retention) and, when asked,
/// dead-letters it; every call releases the job's lock and acknowledges and deletes its
/// entry. The final events of the jobs this call finished go out in one message, after their
/// records are stored. Answers 1 per job this call finished, 0 per job already finished.
pub static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local events, firsts, entries = {}, {}, {}
for i = 1, (#KEYS - 2) / 2 do
  local job, lock = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local a = 5 + (i - 1) * 7
  local first = 0
  if redis.call('HEXISTS', job, 'spec') == 1 then
    first = redis.call('HSETNX', job, 'finished', '1')
    if first == 1 then
      redis.call('HSET', job, 'record', ARGV[a + 2], 'status', ARGV[a + 3])
      redis.call('PEXPIRE', job, ARGV[2])
      if ARGV[a + 5] ~= '' then
        redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'id', ARGV[a + 7],
          'reason', ARGV[a + 5], 'deliveries', ARGV[a + 6])
      end
      events[#events + 1] = ARGV[a + 4]
    end
  end
  if redis.call('GET', lock) == ARGV[4] then redis.call('DEL', lock) end
  if ARGV[a + 1] ~= '' then entries[#entries + 1] = ARGV[a + 1] end
  firsts[i] = first
end
if #entries > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(entries))
  redis.call('XDEL', KEYS[1], unpack(entries))
end
if #events > 0 then
  redis.call('PUBLISH', ARGV[3], '[' .. table.concat(events, ',') .. ']')
end
return firsts
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
