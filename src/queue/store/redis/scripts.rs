//! The Lua scripts of the Redis store, each atomic against apalis-redis' own scripts. They
//! use apalis' keys (`{queue}:active`, `:scheduled`, `:dead`, `:inflight:{worker}`,
//! `:meta:{id}`, …; pinned by the store contract test) and one of ours, `{queue}:leasepool_settling`:
//! the attempts whose acknowledgement a worker still has to set right, one member each
//! (`<id>|<attempt>|g` for a give-back, `<id>|<attempt>|r<seconds>` for a retry time), scored
//! by when it was written.

/// Sets (`ARGV[2]` = 1) or deletes (0) owed marks of a task, only while the task is in the
/// calling worker's in-flight set: once it left (re-enqueued as an orphan, handed back), its
/// acknowledgement cannot land and another worker may already run it, so the worker's view of
/// the marks is out of date and it changes nothing.
pub(super) const MARKS: &str = r"
-- KEYS: the worker's in-flight set, the task's meta hash; ARGV: task id, 1 set / 0 delete,
-- the mark fields
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  return 0
end
for i = 3, #ARGV do
  if ARGV[2] == '1' then
    redis.call('HSET', KEYS[2], ARGV[i], 1)
  else
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
return 1
";

/// A run starts: its attempt is counted now, as apalis' acknowledgement will count it. apalis
/// re-runs a dead worker's tasks without counting an attempt, so a job that kills its process
/// would otherwise run for ever. Only while the task is in the worker's in-flight set.
pub(super) const STARTED: &str = r"
-- KEYS: the worker's in-flight set, the task's meta hash; ARGV: task id, the attempt
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[2], 'attempts', ARGV[2])
return 1
";

/// Before apalis acknowledges an attempt the worker will set right afterwards: records the
/// intent in the settling set (so that any worker sets it right if this one dies first) and,
/// for a give-back, marks the attempt owed in the task (see `judge::OWED`). Only while the
/// task is in the worker's in-flight set.
pub(super) const PREPARE: &str = r"
-- KEYS: the worker's in-flight set, the task's meta hash, the settling set
-- ARGV: task id, settling member, now (seconds), owed mark field or ''
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  return 0
end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[4], 1)
end
redis.call('ZADD', KEYS[3], tonumber(ARGV[3]), ARGV[2])
return 1
";

/// Every count in one script, so that a task moving between two of apalis' keys (its own
/// moves are scripts too) is counted once. A task in the dead set that a worker is about to
/// revive (apalis-redis kills any task at 25 attempts; the settling set says it is to be
/// retried) counts as pending.
pub(super) const COUNTS: &str = r"
-- KEYS: active list, scheduled set, done set, dead set, workers set, settling set
-- ARGV: in-flight set prefix, meta hash prefix
local claimed = 0
for _, w in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do
  claimed = claimed + redis.call('SCARD', ARGV[1] .. ':' .. w)
end
local reviving = 0
local seen = {}
for _, m in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do
  local id = string.match(m, '^(.*)|%d+|')
  if id and not seen[id] and redis.call('SISMEMBER', KEYS[4], id) == 1
      and redis.call('HGET', ARGV[2] .. ':' .. id, 'status') ~= 'Killed' then
    seen[id] = true
    reviving = reviving + 1
  end
end
return {redis.call('LLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2]) + reviving, claimed,
  redis.call('SCARD', KEYS[3]), redis.call('SCARD', KEYS[4]) - reviving}
";

/// A task's meta data, the worker holding it, its scheduled time and whether it is being
/// revived, read in one script (for the same reason as [`COUNTS`]).
pub(super) const TASK: &str = r"
-- KEYS: the task's meta hash, workers set, scheduled set, dead set, settling set
-- ARGV: in-flight set prefix, task id
local meta = redis.call('HGETALL', KEYS[1])
if #meta == 0 then
  return nil
end
local holder = {}
for _, w in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if redis.call('SISMEMBER', ARGV[1] .. ':' .. w, ARGV[2]) == 1 then
    holder = {w}
    break
  end
end
local at = redis.call('ZSCORE', KEYS[3], ARGV[2]) or ''
local reviving = 0
if redis.call('SISMEMBER', KEYS[4], ARGV[2]) == 1 then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do
    if string.sub(m, 1, #ARGV[2] + 1) == ARGV[2] .. '|' then
      reviving = 1
      break
    end
  end
end
return {meta, holder, tostring(at), reviving}
";

/// apalis-redis 1.0 puts every new task in its schedule (due at once) and its fetch script moves
/// all due tasks to the active list with one Lua `unpack`, which fails beyond about 8 000: one
/// large push would stop every worker of the queue for good. Our pushes move their own tasks
/// to the active list straight away, one by one.
pub(super) const PROMOTE: &str = r"
-- KEYS: scheduled set, active list, signal list; ARGV: task ids
local moved = 0
for i = 1, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[i])
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('DEL', KEYS[3])
  redis.call('LPUSH', KEYS[3], 1)
end
return moved
";

/// The same limit bites when more than ~8 000 scheduled tasks come due at once (retries of a
/// burst of failures, a large push by a producer that does not go through `Queue`): before
/// fetching, a worker moves due tasks to the active list in chunks, so the backlog apalis'
/// fetch sees stays small.
pub(super) const PROMOTE_DUE: &str = r"
-- KEYS: scheduled set, active list, signal list; ARGV: now (seconds), limit
local due = redis.call('ZRANGEBYSCORE', KEYS[1], 0, ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #due do
  redis.call('ZREM', KEYS[1], due[i])
  redis.call('RPUSH', KEYS[2], due[i])
end
if #due > 0 then
  redis.call('DEL', KEYS[3])
  redis.call('LPUSH', KEYS[3], 1)
end
return #due
";

/// apalis-redis acknowledges a deferred task by scheduling it a second or more ahead (or, at
/// 25 attempts, killing it), attempt counted: take it back out, restore the count (and what
/// `PREPARE` marked owed) and put it first in line. Only our own deferral: status `Pending` at
/// the attempt we deferred. Returns 1 done, 0 not acknowledged yet (still in the worker's
/// in-flight set), 2 moved on (another worker took it first, it ran, …: the attempt stays
/// owed in the task).
pub(super) const SETTLE_GIVE_BACK: &str = r"
-- KEYS: scheduled set, active list, the task's meta hash, signal list, dead set, settling set,
-- the worker's in-flight set
-- ARGV: task id, the attempt its deferral was acknowledged at, its owed mark, settling member
local attempts = tonumber(redis.call('HGET', KEYS[3], 'attempts') or '')
if redis.call('HGET', KEYS[3], 'status') == 'Pending' and attempts == tonumber(ARGV[2]) then
  local from = redis.call('ZREM', KEYS[1], ARGV[1])
  if from == 0 then
    from = redis.call('SREM', KEYS[5], ARGV[1])
  end
  if from == 1 then
    if attempts > 0 then
      redis.call('HSET', KEYS[3], 'attempts', attempts - 1)
    end
    redis.call('HDEL', KEYS[3], ARGV[3])
    redis.call('LPUSH', KEYS[2], ARGV[1])
    redis.call('DEL', KEYS[4])
    redis.call('LPUSH', KEYS[4], 1)
    redis.call('ZREM', KEYS[6], ARGV[4])
    return 1
  end
end
if redis.call('SISMEMBER', KEYS[7], ARGV[1]) == 1 then
  return 0
end
redis.call('ZREM', KEYS[6], ARGV[4])
return 2
";

/// apalis-redis schedules a failed attempt `attempt` seconds ahead (or kills the task at 25
/// attempts): move it to the retry time our policy chose. Same answers as
/// [`SETTLE_GIVE_BACK`].
pub(super) const SETTLE_RETRY: &str = r"
-- KEYS: scheduled set, the task's meta hash, dead set, settling set, the worker's in-flight set
-- ARGV: task id, the failed attempt, the retry time (seconds), settling member
local attempts = tonumber(redis.call('HGET', KEYS[2], 'attempts') or '')
if redis.call('HGET', KEYS[2], 'status') == 'Failed' and attempts == tonumber(ARGV[2]) then
  local from = redis.call('ZREM', KEYS[1], ARGV[1])
  if from == 0 then
    from = redis.call('SREM', KEYS[3], ARGV[1])
  end
  if from == 1 then
    redis.call('ZADD', KEYS[1], tonumber(ARGV[3]), ARGV[1])
    redis.call('ZREM', KEYS[4], ARGV[4])
    return 1
  end
end
if redis.call('SISMEMBER', KEYS[5], ARGV[1]) == 1 then
  return 0
end
redis.call('ZREM', KEYS[4], ARGV[4])
return 2
";

/// What workers that died left unsettled: settling members older than `ARGV[1]`. A retry
/// acknowledged but not moved goes to its retry time (out of the dead set if apalis killed it
/// at 25 attempts); a give-back that apalis killed goes back first in line with its attempt;
/// one not acknowledged yet (`Running`) waits, up to `ARGV[5]`; everything else is dropped.
pub(super) const SWEEP_SETTLING: &str = r"
-- KEYS: settling set, scheduled set, active list, dead set, signal list
-- ARGV: older than (seconds), now (seconds), meta hash prefix, limit, forget before (seconds)
local members = redis.call('ZRANGEBYSCORE', KEYS[1], 0, ARGV[1], 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[4]))
local fixed = 0
for i = 1, #members, 2 do
  local m, score = members[i], tonumber(members[i + 1])
  local id, attempt, kind, at = string.match(m, '^(.*)|(%d+)|([rg])(%d*)$')
  local keep = false
  if id then
    local meta = ARGV[3] .. ':' .. id
    local status = redis.call('HGET', meta, 'status')
    local attempts = tonumber(redis.call('HGET', meta, 'attempts') or '')
    if attempts == tonumber(attempt) and kind == 'r' and status == 'Failed' then
      local from = redis.call('ZREM', KEYS[2], id)
      if from == 0 then
        from = redis.call('SREM', KEYS[4], id)
      end
      if from == 1 then
        redis.call('ZADD', KEYS[2], math.max(tonumber(at) or 0, tonumber(ARGV[2])), id)
        fixed = fixed + 1
      end
    elseif attempts == tonumber(attempt) and kind == 'g' and status == 'Pending' then
      if redis.call('SREM', KEYS[4], id) == 1 then
        if attempts > 0 then
          redis.call('HSET', meta, 'attempts', attempts - 1)
        end
        redis.call('HDEL', meta, 'leasepool_owed:' .. attempt)
        redis.call('LPUSH', KEYS[3], id)
        redis.call('DEL', KEYS[5])
        redis.call('LPUSH', KEYS[5], 1)
        fixed = fixed + 1
      end
    elseif status == 'Running' then
      keep = score >= tonumber(ARGV[5])
    end
  end
  if not keep then
    redis.call('ZREM', KEYS[1], m)
  end
end
return fixed
";

/// A stopped worker's claimed tasks go first in line again, waiting (`Pending`, no holder);
/// the worker leaves the registry.
pub(super) const RELEASE_WORKER: &str = r"
-- KEYS: the worker's inflight set, active list, workers set, signal list
-- ARGV: worker name, the meta hash prefix
local tasks = redis.call('SMEMBERS', KEYS[1])
if #tasks > 0 then
  for i = 1, #tasks do
    local meta = ARGV[2] .. ':' .. tasks[i]
    -- (A meta key that is not a hash is left for the next fetch to fail that task alone.)
    if redis.call('TYPE', meta)['ok'] == 'hash' then
      redis.call('HSET', meta, 'status', 'Pending')
      redis.call('HDEL', meta, 'locked_at', 'locked_by')
    end
  end
  redis.call('LPUSH', KEYS[2], unpack(tasks))
  redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[4])
  redis.call('LPUSH', KEYS[4], 1)
end
redis.call('ZREM', KEYS[3], ARGV[1])
return #tasks
";

/// Fails a claimed task for good: out of the worker's in-flight set into the dead set, with
/// the reason as its result (a meta key that is not a hash is garbage in the queue's
/// namespace: replaced).
pub(super) const KILL: &str = r"
-- KEYS: the worker's in-flight set, dead set, the task's meta hash
-- ARGV: task id, result (JSON), now (seconds)
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('SADD', KEYS[2], ARGV[1])
local kind = redis.call('TYPE', KEYS[3])['ok']
if kind ~= 'hash' and kind ~= 'none' then
  redis.call('DEL', KEYS[3])
end
redis.call('HSET', KEYS[3], 'status', 'Killed', 'result', ARGV[2], 'done_at', ARGV[3])
return 1
";

/// The tasks in a worker's in-flight set as stored: id, the type of its meta key, its meta
/// fields (when a hash), whether a payload exists. After a fetch that failed, to find the task
/// that broke it (apalis' fetch script moves tasks in before it reads them).
pub(super) const CLAIMED: &str = r"
-- KEYS: the worker's in-flight set, data hash; ARGV: meta hash prefix
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local meta = ARGV[1] .. ':' .. id
  local kind = redis.call('TYPE', meta)['ok']
  local fields = {}
  if kind == 'hash' then
    fields = redis.call('HGETALL', meta)
  end
  table.insert(out, {id, kind, fields, redis.call('HEXISTS', KEYS[2], id)})
end
return out
";
