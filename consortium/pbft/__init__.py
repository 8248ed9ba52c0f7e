"""Sans-I/O PBFT (Castro & Liskov 1999, TOCS 2002).

`Replica.step(event) -> list[Action]` is the whole interface: no sockets, clocks, sleeps or global
randomness. A driver (the validator process, or the simulator) delivers events and carries out the
actions in order; `Persist*` and `Execute` actions must be durable before any later `Send` goes out.
"""
