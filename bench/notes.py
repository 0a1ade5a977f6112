"""The reading notes `make bench` writes under its tables in BENCHMARKS.md: what each table
measures and against what, so a figure is never read without its method."""

NOTES = """### How to read these: the user's world

- **One worker at 3 s a call** runs 3,000 jobs at 512 (or 256 streamed) calls in flight against
  a bare aiohttp loop at the same concurrency on the same simulator, which answers with
  top-tier `anthropic-ratelimit-*` headers, as the API always does; msgq's limits are learned
  from them, nothing is configured. "Warm": the fleet has heard the headers (a running fleet);
  "cold start": it has not, and pays the slow start (32 calls in flight, doubling each round
  trip) for a few round trips. The clock starts when the pause is lifted (`msgq resume`, which
  wakes the dispatcher). Worker CPU is the worker process's user+system time over the drain,
  divided by the jobs; peak RSS is its VmHWM divided by the calls in flight. What decides the
  ratio is how fast freed slots are refilled when hundreds of calls end together: the
  dispatcher admits up to 64 jobs in one Lua step and wakes the idle workers, so 512 slots fill
  in about half a second.
- **Upstream transport** is the same load with no queue at all, each client alone: one aiohttp
  session, one httpx client, and httpx spread over 256 small clients as msgq's worker did
  before it moved to aiohttp. The per-call CPU is why the worker calls the API through aiohttp.
- **A fleet against learned limits** pre-fills 5,000 jobs, lifts a pause and times the drain:
  utilisation is the ideal (the minute's bucket at once, then the rate) over the wall time.
- **Fair share with learned limits** sends an interactive job every 0.5 s while 5,000 bulk
  jobs saturate 600 RPM; the wait is submission to start. With a window of 64 and bulk jobs
  holding worker slots in the limiter, the same shape once measured 8.6-44.6 s.
- **Drop-in added latency** is a drop-in call's time minus the same call made straight to the
  simulator, alternating, on an idle fleet: submit, the dispatcher's admission (woken by the
  submission), the worker's pick-up (woken by the admission), the call, the record, the answer.
  A traced call before this wave's work (11 ms end to end): 3 ms in the API before its first
  Redis command (HTTP parsing with h11, a task group per request for a metrics middleware, a
  thread-pool hop per dependency), 1.2 ms to the dispatcher's wake, 1.4 ms of the dispatcher's
  sequential reads, 0.9 ms to the worker's claim, 1 ms to the record's `in_progress`, the call,
  and 1.3 ms to answer. httptools, a plain ASGI middleware and coroutine dependencies took most
  of the API's share away.
- **Worker CPU per job**, this wave's levers (design/round-trips in the docs): every script
  call a job makes in the worker (record compare-and-sets, ledger steps, bucket corrections,
  spend) goes through one group commit, so the calls of jobs ending together share a pipeline;
  a pooled connection used within a second skips redis-py's socket-read check on checkout (a
  coroutine, a timeout and a syscall each time); a streaming job's `progress` goes in and out
  of its record by compare-and-set instead of WATCH transactions. The same run's peers table
  puts msgq's worker CPU per job beside BullMQ's and arq's.

### How to read these

- **Utilisation** compares the wall time with the best any client could do against the same
  token bucket: spend the full bucket (a minute's worth) at once, then exactly the refill rate.
  `wall/(N/limit)` is below 1 for everyone because the bucket starts full. The SDK baseline
  looks "faster" only because it gives up: after its two default retries it drops the request
  (`lost`), and more than half of its calls were answered 429.
- **Ceiling**: two measurements, each in 3 interleaved rounds (raw loop, then msgq) with
  medians, because a single run on this shared 2-core machine swings by ±15%. "Ceiling end to
  end" submits and awaits 2,000 jobs in one wave, so the producer's own CPU shares the cores
  with the worker, Redis and the simulator. "Ceiling" (the issue's method) pre-enqueues 3,000
  jobs and times the records from the first `started_at` to the last `finished_at`, against a
  bare httpx loop at concurrency 16. History on this machine, same method: **0.51** (asyncio) /
  0.60 (uvloop) at the start of the work, with 46.9 Redis commands, 12.8 socket reads (≈ round
  trips) and 450 µs of Redis CPU per job; 0.73 / 0.77 after the first levers (one
  compare-and-set script per record transition, one pipelined pick-up read, arq's pick-up as one
  script, fewer index writes, the dispatcher moving many jobs per script, short calls not
  streamed), at 7.0 round trips and ~310 µs. The rest of the way: (1) arq's per-job path
  replaced in `MsgqWorker` (one script claims every free slot's job and reads the payload, the
  try counter, the abort flag and msgq's record, ticket and pause flags with it; the terminal
  record's write also ends the job in arq's queue; one heartbeat per worker; one round trip
  per poll), 2.6 round trips a job; (2) redis-py 5.3's pool-wide lock around every connection
  checkout bypassed (redis-py #3692, fixed upstream after the 5.x line arq pins): it queued
  the worker's jobs behind each other; (3) the API calls spread over 8 small httpx clients
  (since replaced by one aiohttp session: see "Upstream transport"):
  httpcore's pool walks every connection and waiting request on each call and each release, so
  one client at 16 calls in flight costs ~1.6 ms of CPU a call and runs ~600 calls/s, where 8
  clients run ~1,550/s. That last lever is why msgq now runs *faster* than the issue's raw
  loop; the second raw row splits the raw loop the same way, as the honest upper bound of a
  zero-latency client on this machine: against it msgq's own work (3 record/queue round trips,
  validation, the record's JSON) shows.
- **Latency** is the dispatcher's admission (a pub/sub wake from the submission) and the
  worker's pick-up (a pub/sub wake from the admission), a few Redis round trips each; the
  poll (`MSGQ_POLL_DELAY_S`, 1 s) is only for jobs nobody announces (raw producers writing
  straight to arq's queue). A quiet dispatcher ticks at a wake at once; in a burst it ticks
  every 5 ms at most, and producers send it one wake until a tick takes it.
- **Memory**: the caption payload is a 1568 px JPEG of random noise, the worst case; a real photo
  at that size is typically 200-400 KB. Records keep the Message, not the request or image.
- **Streaming**: the table forces streaming on and off (msgq streams from `max_tokens`
  1,024 by default). At zero latency the cost is per event (parsing SSE in
  Python): short replies cost the ceiling little; 500-token replies at full speed show the
  per-event CPU. The real API paces events (tens per second per stream), far below what one
  worker parses. Redis: a long job adds its progress writes (about one a second), a few
  PUBLISHes and limiter settlements; a job under a second adds nothing but the call.
- **Scale-out**: the limiter, not the workers, sets the pace: the bucket's minute goes at
  once, then the refill rate, whatever the number of workers. Eight worker processes on these
  two cores (with Redis and the simulator) lose a little to CPU contention, and a single run
  swings by a few hundredths: judge the trend, not one row.
- **Batch lane**: the same images and prompt give the same captions in both lanes, and the
  batch total is exactly half (every price halved, cache writes and reads included). The 2,000
  jobs went out in 2 upstream batches (the pool flushed 5 s after its first job, while the
  caption run was still submitting) and reached `/v1/messages` zero times. Reading results is
  flat: 10,000 and 100,000 lines peak at the same RSS (the 10 MiB above an idle process is the
  event loop, the HTTP client and its buffers), where reading the body whole grows with it.

### How to read these: the peers

- **Where they come from**: each peer is installed by `make bench` itself into its own
  environment under `~/.cache/msgq-bench/<peer>` (a venv from PyPI; BullMQ and ioredis from npm
  for Debian's node), created on first use and reused, never into msgq's venv; the table shows
  the versions. A peer that cannot be installed, or whose run fails, is a row with the reason.
- **Queue peers** are what a user writes with each tool: a task that POSTs the Messages request
  (one aiohttp session; one `requests` session or one httpx client under Celery's gevent pool,
  each sized for 512 connections; Node's `fetch`) and returns the reply for the tool to store.
  Each has one worker process at 512 in flight, a Redis of its own and the same simulator (3 s
  a call, top-tier limits). The worker starts and idles first; its own producer then enqueues
  every job and waits for every result; the rate is the jobs over the span from the first
  job's start to the last one's end, as the tasks recorded them, and CPU is the worker's
  process tree over the run (/proc). msgq's rows run from the lifted pause to the last job's
  end (its method in the user's-world table), which if anything counts more time against msgq.
- **Reading them on 2 shared cores**: absolute rates move with whatever else runs (the load
  average at each row's start says how much), so read each row as its ratio to the aiohttp
  loop on the same simulator in the same run: the loop runs before and after the peers, and
  the ratios use the mean of the two. CPU ms per job is steadier than the rate, but it too
  grows when the cores are contended.
- **LiteLLM's proxy** serves `/v1/messages` with the simulator as its Anthropic base (no
  database, one master key, one process). Latency is measured as msgq's drop-in is: the same
  create and streamed first text delta straight to the simulator, through msgq's drop-in and
  through LiteLLM, interleaved call by call, nothing else queued; throughput is 1,000 creates at
  256 in flight against the 3 s simulator, with the proxy's CPU (msgq: its api and its worker).

### How to read these: Redis Cluster

- **The same jobs on one node and on a 3-master cluster** from the same `valkey-server`, every
  node with an AOF (fsync every second), in three interleaved rounds: the figures are medians,
  and each ratio to one node is shown round by round, since one drain's Redis CPU per job
  swings by a fifth on 2 shared cores. Redis CPU is each server's user+system time (INFO) over
  the drain; round trips are the replies and pub/sub messages the servers wrote.
- **The whole path** adds the producer's side: 64 submissions at a time through one `Client`
  whose connections are open before the clock, to a paused fleet (so the drain is timed alone),
  then each result read by ID. It counts the drain's listener too (one ending message a job,
  as a waiting caller gets).
- **16 partitions** spread the jobs' keys over the masters (`MSGQ_PARTITIONS`); the fleet-wide
  slot (admission, buckets, the scheduler) stays on one master, which is why that one is the
  busiest.
- **The fleet-wide slot's Lua steps** are the two scripts every job runs there, timed by Redis
  itself on a fresh node (`python -m bench.lua_steps`): a run of 64 admissions, and 32 endings'
  bucket corrections merged into one call as a worker's group commit sends them. Their
  µs a job is the floor of the busiest master's share that partitions cannot spread.
"""
