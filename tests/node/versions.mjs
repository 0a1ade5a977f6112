// The official TypeScript SDK against msgq's Message Batches endpoints under both API versions:
// its default version (2026-10-21) with temperature is refused; 2023-06-01 accepts it; betas
// given to the SDK reach the API. Prints one JSON line for tests/test_api_versions_node.py.
import Anthropic from "@anthropic-ai/sdk";

const request = JSON.parse(process.env.MSGQ_REQUEST);
const warm = { ...request, temperature: 0.5 };
const options = { baseURL: process.env.ANTHROPIC_BASE_URL, apiKey: process.env.ANTHROPIC_API_KEY, maxRetries: 0 };

const current = new Anthropic(options);
let refused = null;
try {
  await current.messages.batches.create({ requests: [{ custom_id: "a", params: warm }] });
} catch (err) {
  refused = { status: err.status, message: String(err.message), type: err.error?.error?.type };
}

const older = new Anthropic({ ...options, defaultHeaders: { "anthropic-version": "2023-06-01" } });
const accepted = await older.messages.batches.create({ requests: [{ custom_id: "b", params: warm }] });

const withBetas = await current.beta.messages.batches.create({
  requests: [{ custom_id: "c", params: request }],
  betas: ["context-1m-2025-08-07"],
});

console.log(JSON.stringify({
  sdkVersion: Anthropic.VERSION ?? null,
  refused,
  accepted: accepted.id,
  withBetas: withBetas.id,
}));
