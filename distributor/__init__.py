"""Distribution servers: consume a source's (or another route's) stream and feed routes."""
