"""`msgq caption`: bulk image captioning through the queue, windowed and resumable."""

from worker.extras import require

require("caption", "msgq caption", "PIL", "rich")
