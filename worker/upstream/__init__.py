"""The Anthropic API as the worker calls it: the Messages client (aiohttp), the
classification of answers into msgq's errors, the SSE decoder and stream assembly, and the
Models API read. Knows nothing of Redis: what it returns is stored by its callers."""
