"""A local stand-in for the Messages API: deterministic answers, real headers, faults on demand.

It imports `schemas` (the shared contract) and nothing else of msgq, so it behaves as an outside
server would.
"""
