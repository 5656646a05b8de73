"""Stand-ins for the field: simulated fleets and firmware in the loop."""
