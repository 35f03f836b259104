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

/// Redis's clock in milliseconds, for leases every node reads the same way.
const NOW: &str = "local t = redis.call('TIME')\n\
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// Claims a batch of deliveries. KEYS: the job hash of each job.
/// ARGV: consumer, lease ms, max deliveries.
/// Answers five values per job: verdict, deliveries, spec, record, last error. The verdict
/// is `run`, `missing` (the job hash is gone), `finished` (a result is stored: never run
/// twice), `locked` (another worker holds an unexpired lease on it) or `exhausted` (past the
/// delivery limit). A `run` takes the job's lease (`owner`, `leaseUntil`) and counts the
/// delivery and the run, in one write.
pub static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{}",
        r#"
local out = {}
local function answer(...)
  for _, v in ipairs({...}) do out[#out + 1] = v end
end
for i = 1, #KEYS do
  local job = KEYS[i]
  local h = redis.call('HMGET', job, 'spec', 'finished', 'record', 'lastError', 'deliveries',
    'runs', 'owner', 'leaseUntil')
  if not h[1] then
    answer('missing', '0', '', '', '')
  elseif h[2] then
    answer('finished', '0', '', '', '')
  elseif h[7] and h[7] ~= '' and h[7] ~= ARGV[1] and tonumber(h[8] or '0') > now then
    answer('locked', '0', '', '', h[7])
  else
    local deliveries = tonumber(h[5] or '0') + 1
    if deliveries > tonumber(ARGV[3]) then
      redis.call('HSET', job, 'deliveries', deliveries)
      answer('exhausted', tostring(deliveries), h[1], h[3] or '', h[4] or '')
    else
      redis.call('HSET', job, 'deliveries', deliveries, 'runs', tonumber(h[6] or '0') + 1,
        'status', 'processing', 'owner', ARGV[1], 'leaseUntil', now + tonumber(ARGV[2]))
      answer('run', tostring(deliveries), h[1], h[3] or '', h[4] or '')
    end
  end
end
return out
"#
    ))
});

/// Settles a batch of finished jobs. KEYS: stream, dead-letter stream, then the job hash of
/// each job. ARGV: group, retention ms, events channel, dead-letter length, then seven per
/// job: entry id ('' for none), record JSON, status, final event JSON, dead-letter reason
/// ('' for none), deliveries, job id.
/// For each job, the first finisher stores the record (releasing the lease, starting the
/// retention) and, when asked, dead-letters it; every entry is acknowledged and deleted.
/// The final events of the jobs this call finished go out in one message, after their
/// records are stored. Answers 1 per job this call finished, 0 per job already finished.
pub static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local events, firsts, entries = {}, {}, {}
for i = 1, #KEYS - 2 do
  local job = KEYS[2 + i]
  local a = 4 + (i - 1) * 7
  local first = 0
  local h = redis.call('HMGET', job, 'spec', 'finished')
  if h[1] and not h[2] then
    first = 1
    redis.call('HSET', job, 'finished', '1', 'record', ARGV[a + 2], 'status', ARGV[a + 3],
      'owner', '', 'leaseUntil', 0)
    redis.call('PEXPIRE', job, ARGV[2])
    if ARGV[a + 5] ~= '' then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'id', ARGV[a + 7],
        'reason', ARGV[a + 5], 'deliveries', ARGV[a + 6])
    end
    events[#events + 1] = ARGV[a + 4]
  end
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

/// KEYS: job hash, stream, delayed set.
/// ARGV: entry id, group, delay ms, job id, error text, count the delivery (1/0).
/// Moves a job from the stream to the delayed set in one step, so it is never in neither,
/// and releases its lease.
pub static RETRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{}",
        r#"
local h = redis.call('HMGET', KEYS[1], 'spec', 'finished', 'deliveries')
if h[1] and not h[2] then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[4])
  local deliveries = tonumber(h[3] or '0')
  if ARGV[6] == '0' then deliveries = math.max(deliveries - 1, 0) end
  redis.call('HSET', KEYS[1], 'status', 'pending', 'lastError', ARGV[5],
    'deliveries', deliveries, 'owner', '', 'leaseUntil', 0)
end
redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
redis.call('XDEL', KEYS[2], ARGV[1])
return 1
"#
    ))
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

/// Extends the leases of a worker's running jobs. KEYS: their job hashes.
/// ARGV: consumer, lease ms. A job whose lease another worker holds now is left alone.
pub static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{}",
        r#"
local extended = 0
for i = 1, #KEYS do
  if redis.call('HGET', KEYS[i], 'owner') == ARGV[1] then
    redis.call('HSET', KEYS[i], 'leaseUntil', now + tonumber(ARGV[2]))
    extended = extended + 1
  end
end
return extended
"#
    ))
});
