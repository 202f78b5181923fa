"""The log-line token bucket now lives in the shared layer (the proxy's PIN guard uses it too); kept importable
from here for the relay's modules."""

from appliance.ratelimit import LogLimiter

__all__ = ["LogLimiter"]
