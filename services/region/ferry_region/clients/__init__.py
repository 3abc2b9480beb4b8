"""Clients of the region's peers: host agents and the scheduler."""
