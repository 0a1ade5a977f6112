"""The rate limiter's Lua scripts (`worker.ratelimit`): each change to a model class's buckets is
one of them, so concurrent workers and dispatchers never over-admit."""

from __future__ import annotations

# The effective capacity of one bucket: the configured limit is a cap; a limit learned from the
# API's headers may only lower it, and counts only while fresh (headers keep refreshing it).
CAPS = """
local function caps_of(h, now, conf, learned_ttl)
  local caps, fresh = {}, (tonumber(h.L) or -1e18) + learned_ttl > now
  for n, f in ipairs({'R', 'I', 'O'}) do
    local c, l = tonumber(conf[n]) or 0, fresh and tonumber(h[f]) or nil
    if c > 0 and l then caps[n] = math.min(c, l) else caps[n] = (c > 0 and c) or l or 0 end
  end
  return caps
end
local function load(key)
  local flat, h = redis.call('HGETALL', key), {}
  for k = 1, #flat, 2 do h[flat[k]] = flat[k + 1] end
  return h
end
"""

# `acquire(bucket, cooldown, pause, a, o)`: a[o + 1..11] = now_ms, cost r/i/o, configured caps
# r/i/o (0 = none), holder (the job asking), learned_ttl_ms, hold_slack_ms, large_fraction (a run
# passes its ARGV and the step's offset: no table a step). Returns
# {0, '', n} when admitted (n: the bucket's count of admissions, this one's included; see
# ADJUST), {wait_ms, why} otherwise; nothing is taken unless all three fit.
# A large request (a need of at least large_fraction of a bucket) that must wait holds a
# reservation: until it is served (or its hold lapses), others may take only what leaves its
# need in the bucket, so small requests cannot keep the level below it forever. A function, so
# the dispatcher's batched admission (worker.dispatch.admit) runs exactly this step per job.
# The bucket is read once a script and its fields changed in memory, then written back once by
# `save_bucket()` (which the script must call before it returns): a run of 64 admissions read
# and wrote the whole hash 64 times, the largest share of the fleet-wide master's CPU a job.
# The pause and the cool-down are read once too (no step of a script changes them), and so are
# the caps while a run's steps share their inputs. Fields changed are kept as numbers and turned
# to strings once, when saved. Together: a run of 64 steps takes 0.33 ms of Redis time, 0.55
# before (`python -m bench.lua_steps`).
ACQUIRE_STEP = (
    CAPS
    + """
local gated, held_bucket = nil, nil
local function gate(cooldown, pause)
  if redis.call('EXISTS', pause) == 1 then
    local ttl = redis.call('PTTL', pause)
    return {ttl > 0 and ttl or 60000, 'paused'}
  end
  local cool = redis.call('PTTL', cooldown)
  if cool > 0 then return {cool, 'cooldown'} end
  return false
end
local function put(b, field, value)  -- false: the field is deleted
  b.h[field] = value
  b.dirty[field] = true
end
local names, held_f = {'r', 'i', 'o'}, {'hr', 'hi', 'ho'}
local memo = {}  -- the caps of the last step: a run's steps share them (take never changes them)
local function caps_for(h, a, o, now)
  local c1, c5, c6, c7, c9 = a[o + 1], a[o + 5], a[o + 6], a[o + 7], a[o + 9]
  if memo.caps and memo[1] == c1 and memo[5] == c5 and memo[6] == c6 and memo[7] == c7
      and memo[9] == c9 then
    return memo.caps
  end
  memo = {c1, nil, nil, nil, c5, c6, c7, nil, c9}
  memo.caps = caps_of(h, now, {c5, c6, c7}, tonumber(c9))
  return memo.caps
end
local function take(b, a, o)
local h = b.h
local now, holder = tonumber(a[o + 1]), a[o + 8]
local large = tonumber(a[o + 11])
local caps = caps_for(h, a, o, now)
local last = tonumber(h.t) or now
local holding = h.hold and h.hold ~= '' and now < (tonumber(h.hu) or 0)
local other = holding and h.hold ~= holder
local tokens, needs, wait, why, big = {}, {}, 0, '', false
for n = 1, 3 do
  local cap = caps[n]
  if cap > 0 then
    local t = math.min(cap, (tonumber(h[names[n]]) or cap) + (now - last) * cap / 60000)
    tokens[n] = t
    local need = math.min(tonumber(a[o + n + 1]), cap)
    needs[n] = need
    if n > 1 and need >= cap * large then big = true end
    local level = need
    if other then
      local held = tonumber(h[held_f[n]]) or 0
      level = need + held
      if level > cap then level = math.max(held, cap) + 1 end
    end
    if t < level then
      local w = math.ceil((level - t) * 60000 / cap)
      if other and level > cap then w = math.max(50, math.min(w, (tonumber(h.hu) or now) - now)) end
      if w > wait then wait, why = w, names[n] end
    end
  end
end
for n = 1, 3 do
  if caps[n] > 0 then
    if wait == 0 then tokens[n] = tokens[n] - needs[n] end
    put(b, names[n], tokens[n])
  end
end
put(b, 't', now)
if wait == 0 then
  if holding and h.hold == holder then
    for _, field in ipairs({'hold', 'hr', 'hi', 'ho', 'hu'}) do put(b, field, false) end
  end
  local count = (tonumber(h.n) or 0) + 1
  put(b, 'n', count)
  return {0, '', count}
end
if big and (not holding or h.hold == holder) then
  put(b, 'hold', holder)
  put(b, 'hr', tostring(needs[1] or 0))
  put(b, 'hi', tostring(needs[2] or 0))
  put(b, 'ho', tostring(needs[3] or 0))
  put(b, 'hu', tostring(now + wait + tonumber(a[o + 10])))
end
return {wait, why}
end
local function acquire(bucket, cooldown, pause, a, o)
  if gated == nil then gated = gate(cooldown, pause) end
  if gated then return gated end
  if not held_bucket then held_bucket = {key = bucket, h = load(bucket), dirty = {}} end
  return take(held_bucket, a, o or 0)
end
local function save_bucket()
  if not held_bucket then return end
  local sets, dels = {}, {}
  for field in pairs(held_bucket.dirty) do
    local value = held_bucket.h[field]
    if value then
      sets[#sets + 1] = field
      sets[#sets + 1] = type(value) == 'number' and tostring(value) or value
    else
      dels[#dels + 1] = field
    end
  end
  if #sets > 0 then redis.call('HSET', held_bucket.key, unpack(sets)) end
  if #dels > 0 then redis.call('HDEL', held_bucket.key, unpack(dels)) end
end
"""
)

# KEYS: bucket hash, cooldown, pause. ARGV: as `acquire`'s a.
ACQUIRE = (
    ACQUIRE_STEP
    + """
local reply = acquire(KEYS[1], KEYS[2], KEYS[3], ARGV)
save_bucket()
return reply
"""
)

# KEYS: bucket hash. ARGV: one or more calls' arguments, 15 each: deltas r/i/o
# (positive refunds), then for each bucket the learned limit and remaining from headers ('' when
# absent), then configured caps r/i/o, now_ms, learned_ttl_ms, and the bucket's admission count
# when this call was admitted ('' unknown). Refunds never exceed the effective cap; `remaining`
# only ever lowers. The API counted `remaining` when the call arrived, seconds ago: the requests
# admitted here since then (the count's growth) are taken off it, or a fleet sending fast
# forgets them, runs ahead of the API's bucket and meets 429s where a learned limit runs out.
# Not where a configured limit binds (MSGQ_RATE_LIMITS at or below the learned one): the bucket
# paces to it exactly, and the correction, which does not count the refill the API gave since,
# set the level near 0 at every ending there: a fleet held to 1,200 RPM ran at 0.45 of it
# (bisected to the correction; `make bench`'s utilisation and scale-out tables).
# Every job's ending runs this on the fleet-wide slot, so the hash is read once and what changed
# written back in one HSET, however many calls one script applies (in order): a worker's group
# commit merges the endings it sends together into one call (`msgq.group_commit`). Its fields
# are kept as numbers until that HSET, and each call's arguments read in place: 32 calls take
# 0.12 ms of Redis time, 0.18 before (`python -m bench.lua_steps`).
ADJUST = (
    CAPS
    + """
local names, learned_f = {'r', 'i', 'o'}, {'R', 'I', 'O'}
if #ARGV == 0 or #ARGV % 15 ~= 0 then
  return redis.error_reply('ADJUST takes its arguments 15 a call, not ' .. #ARGV)
end
local h, changed = load(KEYS[1]), {}
local function put(field, value)
  h[field] = value
  changed[field] = true
end
for base = 0, #ARGV - 15, 15 do
  local now = tonumber(ARGV[base + 13])
  for n = 1, 3 do
    local limit = ARGV[base + 3 + 2 * n - 1]
    if limit ~= '' then
      put(learned_f[n], limit)
      put('L', now)
    end
  end
  local conf = {ARGV[base + 10], ARGV[base + 11], ARGV[base + 12]}
  local caps = caps_of(h, now, conf, tonumber(ARGV[base + 14]))
  local configured = (tonumber(ARGV[base + 10]) or 0) > 0 and tonumber(ARGV[base + 10]) <= caps[1]
  local started = h.t
  for n = 1, 3 do
    local t = tonumber(h[names[n]])
    local remaining = ARGV[base + 3 + 2 * n]
    if n == 1 and remaining ~= '' and ARGV[base + 15] ~= '' and not configured then
      local since = math.max(0, (tonumber(h.n) or 0) - tonumber(ARGV[base + 15]))
      remaining = tostring(math.max(0, tonumber(remaining) - since))
    end
    if not t and remaining ~= '' then
      -- First word from the API about this bucket: start from what it says is left, not
      -- from a full bucket (calls sent before the limit was known have already used some).
      t = tonumber(remaining)
      if not started then put('t', now) end
    elseif t then
      t = t + tonumber(ARGV[base + n])
      if caps[n] > 0 then t = math.min(t, caps[n]) end
      if remaining ~= '' then t = math.min(t, tonumber(remaining)) end
    end
    if t then put(names[n], t) end
  end
end
local out = {}
for field in pairs(changed) do
  out[#out + 1] = field
  out[#out + 1] = type(h[field]) == 'number' and tostring(h[field]) or h[field]
end
if #out > 0 then redis.call('HSET', KEYS[1], unpack(out)) end
return 1
"""
)

# KEYS: the class's cooldown, the fleet's "any class cooling" marker. ARGV: ms. Only ever
# lengthens either.
COOL_DOWN = """
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < tonumber(ARGV[1]) then
    redis.call('SET', key, '1', 'PX', ARGV[1])
  end
end
return 1
"""
