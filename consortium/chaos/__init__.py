"""Fault campaigns against real validator processes (issue 18, docs/reliability.md).

Each validator and its own PostgreSQL run in a network namespace of their own, joined by veth
pairs to a bridge in a hub namespace; validator-to-validator traffic crosses a seeded fault
proxy in the hub. `consortium chaos` builds that topology, injects a seeded schedule of faults
while clients submit through the SDK, then checks that nothing acknowledged was lost.
"""
