"""`msgq caption`: bulk image captioning through the queue, windowed and resumable."""

from msgq.extras import require

require("caption", "msgq caption", "PIL", "rich")
