"""The turnutils-style client harness: rpturn-stunclient, rpturn-uclient (load generator), rpturn-peer (echo peer),
and the Twisted TURN driver they share. Test and benchmark tooling, not part of the running appliance."""
