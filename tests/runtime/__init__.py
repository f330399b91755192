"""Tests of the runtime: the hub and its parts, on asyncio and trio."""
