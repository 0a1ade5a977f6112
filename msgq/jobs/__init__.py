"""A job's record: its pure transitions (records), where it is kept (store, store_scripts), the
indexes that list it, and waiting for it to end (endings)."""
