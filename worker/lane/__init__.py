"""The batch lane: jobs pooled into Message Batches at half price. The lane's pool, poller,
adoption of batches after a crash, its budget and records, and the Batches API transport."""
