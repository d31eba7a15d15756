"""Code that two or more Plexus services use: settings, errors, db, bus, contract models."""
