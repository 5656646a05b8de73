"""What every Nakhon component agrees on.

The telemetry contract (topics, payloads, the metric catalogue), the city
registry, the storage schema and its line-protocol encoding, and the one
validated settings object. This package imports none of the components.
"""
