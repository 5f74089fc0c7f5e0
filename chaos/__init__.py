"""Fault drills (`make chaos`) and the soak run (`make soak`) on the production topology."""
