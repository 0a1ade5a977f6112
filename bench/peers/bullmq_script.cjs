// BullMQ as a user writes it: a Worker at concurrency 512 whose processor POSTs the Messages
// request with Node's fetch and returns the reply (BullMQ stores it on the job).
// CommonJS so NODE_PATH finds bullmq and ioredis in the peer's cache directory.
//   node bullmq_script.cjs worker      the worker
//   node bullmq_script.cjs produce N   adds N jobs, waits for all, prints
//                                      {"ok", "first_start", "last_end"} as JSON
"use strict";
const { Queue, Worker } = require("bullmq");
const IORedis = require("ioredis");

const connection = new IORedis(process.env.REDIS_URL, { maxRetriesPerRequest: null });
const headers = {
  "x-api-key": process.env.ANTHROPIC_API_KEY,
  "anthropic-version": "2023-06-01",
  "content-type": "application/json",
};
const url = `${process.env.SIM_URL}/v1/messages`;

async function call(job) {
  const t0 = Date.now() / 1000;
  const response = await fetch(url, { method: "POST", headers, body: JSON.stringify(job.data) });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  const message = await response.json();
  return { t0, t1: Date.now() / 1000, message };
}

async function produce(n) {
  const template = JSON.parse(process.env.PEER_BODY);
  const queue = new Queue("calls", { connection });
  for (let chunk = 0; chunk < n; chunk += 500) {
    const jobs = [];
    for (let i = chunk; i < Math.min(n, chunk + 500); i++) {
      jobs.push({
        name: "call",
        data: { ...template, messages: [{ role: "user", content: `call ${i}` }] },
      });
    }
    await queue.addBulk(jobs);
  }
  const deadline = Date.now() + 900000;
  for (;;) {
    const counts = await queue.getJobCounts("completed", "failed");
    if (counts.completed + counts.failed >= n || Date.now() > deadline) break;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  const done = await queue.getCompleted(0, n);
  const values = done.map((job) => job.returnvalue).filter((v) => v && v.t0);
  const result = {
    ok: values.length,
    first_start: Math.min(...values.map((v) => v.t0)),
    last_end: Math.max(...values.map((v) => v.t1)),
  };
  console.log(JSON.stringify(result));
  await queue.close();
  await connection.quit();
}

if (process.argv[2] === "worker") {
  const worker = new Worker("calls", call, { connection, concurrency: 512 });
  const stop = async () => {
    await worker.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
} else {
  produce(Number(process.argv[3])).catch((error) => {
    console.error(error);
    process.exit(1);
  });
}
