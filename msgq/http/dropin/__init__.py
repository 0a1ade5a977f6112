"""The drop-in: the Anthropic API's own routes served by msgq, so an official SDK pointed at
msgq works unchanged. `POST /v1/messages` as a job (routes; the stored Message as the answer,
answer; the worker's events relayed as SSE, stream; msgq's endings in the API's error shape,
errors) and the calls that need no job forwarded as they are (passthrough: count_tokens, models).
"""
