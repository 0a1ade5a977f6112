// The official TypeScript SDK, changed only by its base URL and key: one create, one stream.
// Prints one JSON line for tests/test_dropin_node.py to compare with msgq's records.
import Anthropic from "@anthropic-ai/sdk";

const client = new Anthropic({
  baseURL: process.env.ANTHROPIC_BASE_URL,
  apiKey: process.env.ANTHROPIC_API_KEY,
  maxRetries: 0,
});
const request = JSON.parse(process.env.MSGQ_REQUEST);

const { data: created, response } = await client.messages.create(request).withResponse();
const stream = client.messages.stream(request);
let text = "";
stream.on("text", (delta) => { text += delta; });
const streamed = await stream.finalMessage();
const { response: streamResponse } = await stream.withResponse();

console.log(JSON.stringify({
  created,
  createdJob: response.headers.get("msgq-job-id"),
  requestId: created._request_id ?? response.headers.get("request-id"),
  streamed,
  streamedText: text,
  streamedJob: streamResponse.headers.get("msgq-job-id"),
}));
