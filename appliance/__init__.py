"""The appliance layer shared by the relay and the reverse proxy: config reading and errors, listening sockets,
the open-files limit, signals, the worker supervisor, the management listener, and the `rpturn` operator command.

`relay/` and `revproxy/` depend on this package; it depends on neither of them except where it assembles the
whole appliance (the `rpturn` twistd plugin and the operator commands)."""
