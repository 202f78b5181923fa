"""rpturn's STUN/TURN relay: a sans-I/O protocol core and a thin Twisted shell."""
