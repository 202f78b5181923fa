"""Helpers shared by the tests and the benchmarks: real processes (our twistd, coturn, test nodes), raw STUN
clients, the relay core's in-memory fakes, hypothesis strategies and the RFC 5769 vectors."""
