"""rpturn's HTTPS reverse proxy to the Conferencing Nodes."""
